#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"

namespace keel::common {

// Adds a Go-duration flag ("--retry-delay=1m0s") to `app`, stored in
// `*target` (whose current value is the default, shown in --help as Go
// formats it). A bad value fails parsing with etcd's wording:
// `invalid argument "123" for "--retry-delay" flag: time: missing unit in duration "123"`.
CLI::Option* AddDurationFlag(CLI::App& app, const std::string& name, absl::Duration* target,
                             const std::string& description);

// Makes every long option of `app` (not its subcommands) readable from the
// environment as ETCD_<NAME>, NAME being the flag upper-cased with '-' → '_'
// (--listen-addr ↔ ETCD_LISTEN_ADDR), as etcd does for its flags. A flag on
// the command line wins over the variable. Call after adding all options.
void BindEtcdEnv(CLI::App& app);

}  // namespace keel::common
