#pragma once

#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "proxy/tcp/gateway.h"

namespace keel::proxy::tcp {

// The raw values of `keel gateway start`'s flags, defaults as etcd's (plus
// keel's own flags).
struct GatewayFlags {
  std::string listen_addr = "127.0.0.1:23790";
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  std::string discovery_srv;
  std::string discovery_srv_name;
  bool insecure_discovery = false;
  std::string trusted_ca_file;
  absl::Duration retry_delay = absl::Minutes(1);
  // keel's additions.
  absl::Duration dial_timeout = absl::Seconds(1);
  absl::Duration health_check_interval = absl::ZeroDuration();
  absl::Duration drain_timeout = absl::Seconds(10);
  std::string metrics_addr;
  int loops = 0;
  std::string log_format = "json";
  std::string log_level = "info";
};

// Adds the flags of `gateway start` to `cmd`, bound to `*flags`, each also
// readable as ETCD_<FLAG> (common::BindEtcdEnv), and lets unknown flags
// through to cmd.remaining() so UnknownFlagError() can word them as etcd
// does. REQUIRES: `flags` outlives cmd's parse.
void AddGatewayStartFlags(CLI::App& cmd, GatewayFlags* flags);

// etcd's (pflag's) message for the first unknown flag left in
// app.remaining() after a parse: `unknown flag: --bogus`, or
// `unknown shorthand flag: 'x' in -x`; nullopt if there is none (positional
// leftovers are ignored, as etcd does).
std::optional<std::string> UnknownFlagError(const CLI::App& app);

// Rewrites "--flag=" (an explicitly empty value) as "--flag", "" so CLI11
// sees the empty value instead of taking the next argument as the value,
// as pflag does (`--endpoints= --listen-addr=x` sets an empty list). Stops
// at "--". Pure.
std::vector<std::string> SplitEmptyFlagValues(const std::vector<std::string>& args);

// What a parsed command line configures.
struct GatewayConfig {
  GatewayOptions gateway;
  common::LogOptions log;
};

// Checks and converts parsed flags. InvalidArgument with etcd's wording where
// etcd has one: `failed to validate listen address: <addr>`; otherwise
// `invalid value "<v>" for --<flag>: <why>`.
absl::StatusOr<GatewayConfig> ToGatewayConfig(const GatewayFlags& flags);

// Parses the arguments after `keel gateway start` into a config, as the
// command does. The error message is what the command prints after
// "Error: " (e.g. `unknown flag: --bogus`). --help is reported as Cancelled.
// For tests and tools; the keel main builds the full command tree itself.
absl::StatusOr<GatewayConfig> ParseGatewayStartArgs(const std::vector<std::string>& args);

}  // namespace keel::proxy::tcp
