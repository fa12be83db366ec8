#pragma once

#include <iostream>
#include <ostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"

namespace keel::common {

// Adds a Go-duration flag ("--retry-delay=1m0s") to `app`, stored in
// `*target` (whose current value is the default, shown in --help as Go
// formats it). `name` is a CLI11 name ("--retry-delay" or "-r,--retry-delay").
// Repeating the flag keeps the last value, as pflag does.
//
// A bad value makes app.parse() throw CLI::ValidationError whose what() is
// exactly etcd's (cobra/pflag) wording, with no CLI11 prefix:
//   invalid argument "123" for "--retry-delay" flag: time: missing unit in duration "123"
// The same text is used when the value comes from the environment
// (BindEtcdEnv). Print it with ReportParseError() below. `*target` is only
// written by a successful parse. REQUIRES: `target` outlives `app`'s parse.
CLI::Option* AddDurationFlag(CLI::App& app, const std::string& name, absl::Duration* target,
                             const std::string& description);

// Makes every long option of `app` (not its subcommands) readable from the
// environment as ETCD_<NAME>, NAME being the flag upper-cased with '-' → '_'
// (--listen-addr ↔ ETCD_LISTEN_ADDR), as etcd does for its flags. A flag on
// the command line wins over the variable; an empty variable is ignored.
// Options in `app`'s option groups are included; --help/--help-all and
// --version are not. Call after adding all options, before parse().
void BindEtcdEnv(CLI::App& app);

// The text cobra/pflag print for the failure behind `e`, where CLI11's
// wording differs and the mapping is known:
//   unknown long flag   → "unknown flag: --foo"
//   unknown short flag  → "unknown shorthand flag: 'x' in -x"
//   flag without value  → "flag needs an argument: --listen-addr"
// AddDurationFlag's errors already carry pflag's text; anything else (e.g. a
// bad integer, an unexpected positional argument) keeps CLI11's e.what().
// Thread-safe (pure).
std::string CobraErrorText(const CLI::ParseError& e);

// Reports the exception of a failed app.parse() the way etcd's cobra commands
// do and returns the process exit code:
//  - CLI::CallForHelp / CallForAllHelp / CallForVersion / Success: CLI11's
//    normal output on `out`, returns 0;
//  - any other error (bad value, unknown flag, ...): with
//    msg = CobraErrorText(e), writes
//      "Error: <msg>\n<app.help()>\n<msg>\n"
//    to `err` (cobra prints the error, the usage, then the error again) and
//    returns 1, etcd's exit code.
// Typical use in a command:
//   try { app.parse(argc, argv); }
//   catch (const CLI::ParseError& e) { return keel::common::ReportParseError(app, e); }
// Thread-compatible (writes to the streams).
int ReportParseError(const CLI::App& app, const CLI::ParseError& e, std::ostream& out = std::cout,
                     std::ostream& err = std::cerr);

}  // namespace keel::common
