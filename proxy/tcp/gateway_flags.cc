#include "proxy/tcp/gateway_flags.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/url.h"

namespace keel::proxy::tcp {
namespace {

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(const std::string& text) {
  if (text == "debug") return spdlog::level::debug;
  if (text == "info") return spdlog::level::info;
  if (text == "warn") return spdlog::level::warn;
  if (text == "error") return spdlog::level::err;
  if (text == "dpanic" || text == "panic" || text == "fatal") return spdlog::level::critical;
  return absl::InvalidArgumentError(
      absl::StrCat("invalid value \"", text,
                   "\" for --log-level: want debug, info, warn, error, panic or fatal"));
}

}  // namespace

void AddGatewayStartFlags(CLI::App& cmd, GatewayFlags* flags) {
  cmd.allow_extras();
  cmd.add_option("--listen-addr", flags->listen_addr, "listen address")
      ->type_name("string")
      ->capture_default_str();
  cmd.add_option("--endpoints", flags->endpoints, "comma separated etcd cluster endpoints")
      ->type_name("strings")
      ->delimiter(',')
      ->allow_extra_args(false)  // like pflag: one value per occurrence
      ->default_str("[127.0.0.1:2379]");
  cmd.add_option("--discovery-srv", flags->discovery_srv,
                 "DNS domain used to bootstrap initial cluster")
      ->type_name("string");
  cmd.add_option("--discovery-srv-name", flags->discovery_srv_name,
                 "service name to query when using DNS discovery")
      ->type_name("string");
  cmd.add_flag("--insecure-discovery", flags->insecure_discovery, "accept insecure SRV records");
  cmd.add_option("--trusted-ca-file", flags->trusted_ca_file,
                 "path to the client server TLS CA file for verifying the discovered endpoints "
                 "when discovery-srv is provided.")
      ->type_name("string");
  common::AddDurationFlag(cmd, "--retry-delay", &flags->retry_delay,
                          "duration of delay before retrying failed endpoints");
  common::AddDurationFlag(cmd, "--dial-timeout", &flags->dial_timeout,
                          "keel: how long a dial to an endpoint may take before the next "
                          "endpoint is tried for the same client");
  common::AddDurationFlag(cmd, "--health-check-interval", &flags->health_check_interval,
                          "keel: how often active endpoints are checked with GET /health "
                          "(0s = off: only TCP connect failures count)");
  common::AddDurationFlag(cmd, "--drain-timeout", &flags->drain_timeout,
                          "keel: on SIGTERM/SIGINT, how long open connections may finish "
                          "before they are closed");
  cmd.add_option("--metrics-addr", flags->metrics_addr,
                 "keel: URL (http://host:port) serving /metrics and /health; empty = off")
      ->type_name("string");
  cmd.add_option("--loops", flags->loops, "keel: event loops (threads); 0 = one per core")
      ->type_name("int")
      ->capture_default_str();
  cmd.add_option("--log-format", flags->log_format, "keel: log format, json or text")
      ->type_name("string")
      ->capture_default_str();
  cmd.add_option("--log-level", flags->log_level,
                 "keel: log level: debug, info, warn, error, panic or fatal")
      ->type_name("string")
      ->capture_default_str();
  common::BindEtcdEnv(cmd);
}

std::optional<std::string> UnknownFlagError(const CLI::App& app) {
  for (const std::string& arg : app.remaining()) {
    if (arg.size() < 2 || arg[0] != '-') continue;
    if (arg == "--") return std::nullopt;  // pflag: the rest is positional
    if (arg[1] == '-') {
      const size_t eq = arg.find('=');
      return absl::StrCat("unknown flag: ", arg.substr(0, eq));
    }
    return absl::StrCat("unknown shorthand flag: '", arg.substr(1, 1), "' in ", arg);
  }
  return std::nullopt;
}

std::vector<std::string> SplitEmptyFlagValues(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  bool flags_done = false;
  for (const std::string& arg : args) {
    flags_done |= arg == "--";
    if (!flags_done && arg.size() > 3 && arg.starts_with("--") && arg.back() == '=' &&
        arg.find('=') == arg.size() - 1) {
      out.push_back(arg.substr(0, arg.size() - 1));
      out.emplace_back();
    } else {
      out.push_back(arg);
    }
  }
  return out;
}

absl::StatusOr<GatewayConfig> ToGatewayConfig(const GatewayFlags& flags) {
  GatewayConfig config;
  GatewayOptions& g = config.gateway;
  absl::StatusOr<common::HostPort> listen = common::ParseHostPort(flags.listen_addr);
  if (!listen.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("failed to validate listen address: ", flags.listen_addr));
  }
  g.endpoints.listen = *listen;
  for (const std::string& item : flags.endpoints) {
    for (std::string& e : common::SplitCommaList(item)) {
      g.endpoints.static_endpoints.push_back(std::move(e));
    }
  }
  g.endpoints.discovery.domain = flags.discovery_srv;
  g.endpoints.discovery.service_name = flags.discovery_srv_name;
  g.endpoints.discovery.insecure = flags.insecure_discovery;
  g.endpoints.discovery.trusted_ca_file = flags.trusted_ca_file;
  g.retry_delay = flags.retry_delay;
  if (flags.dial_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("invalid value for --dial-timeout: must be greater than 0s");
  }
  g.dial_timeout = flags.dial_timeout;
  if (flags.health_check_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "invalid value for --health-check-interval: must not be negative");
  }
  g.health_check_interval = flags.health_check_interval;
  if (flags.drain_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("invalid value for --drain-timeout: must not be negative");
  }
  g.drain_timeout = flags.drain_timeout;
  if (!flags.metrics_addr.empty()) {
    absl::StatusOr<common::Url> url = common::ParseUrl(flags.metrics_addr);
    if (!url.ok() || url->scheme != "http") {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid value \"", flags.metrics_addr, "\" for --metrics-addr: want http://host:port"));
    }
    g.metrics_addr = url->host_port;
  }
  if (flags.loops < 0 || flags.loops > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid value \"", flags.loops, "\" for --loops: want 0..1024"));
  }
  g.loops = flags.loops;
  absl::StatusOr<common::LogFormat> format = common::ParseLogFormat(flags.log_format);
  if (!format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value \"", flags.log_format,
                                                   "\" for --log-format: want json or text"));
  }
  config.log.format = *format;
  absl::StatusOr<spdlog::level::level_enum> level = ParseLogLevel(flags.log_level);
  if (!level.ok()) return level.status();
  config.log.level = *level;
  return config;
}

absl::StatusOr<GatewayConfig> ParseGatewayStartArgs(const std::vector<std::string>& args) {
  CLI::App cmd("start the gateway", "start");
  GatewayFlags flags;
  AddGatewayStartFlags(cmd, &flags);
  // CLI11 parses a reversed vector (last argument first).
  std::vector<std::string> split = SplitEmptyFlagValues(args);
  std::vector<std::string> reversed(split.rbegin(), split.rend());
  try {
    cmd.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    return absl::CancelledError("help requested");
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  if (std::optional<std::string> unknown = UnknownFlagError(cmd)) {
    return absl::InvalidArgumentError(*unknown);
  }
  return ToGatewayConfig(flags);
}

}  // namespace keel::proxy::tcp
