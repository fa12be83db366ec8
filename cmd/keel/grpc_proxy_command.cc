#include "cmd/keel/grpc_proxy_command.h"

#include <iostream>
#include <optional>
#include <string>
#include <utility>

#include "cmd/keel/serve_lifecycle.h"
#include "common/flags.h"
#include "common/logging.h"
#include "proxy/grpc/proxy_server.h"
#include "proxy/tcp/gateway_flags.h"
#include "proxy/tcp/srv_discovery.h"

namespace keel::cmd {
namespace {

// etcd's proxy takes its endpoints from DNS SRV records when --discovery-srv
// is set (falling back to --endpoints if none passes the checks), with
// --cacert verifying the https targets.
absl::Status DiscoverEndpoints(proxy::grpcproxy::ProxyConfig& config) {
  if (config.discovery_srv.empty()) return absl::OkStatus();
  proxy::tcp::DiscoveryOptions options;
  options.domain = config.discovery_srv;
  options.service_name = config.discovery_srv_name;
  options.insecure = config.insecure_discovery;
  options.trusted_ca_file = config.cacert;
  absl::StatusOr<proxy::tcp::Discovered> found = proxy::tcp::DiscoverSrvEndpoints(options);
  if (!found.ok()) return found.status();
  if (found->endpoints.empty()) {
    if (config.endpoints.empty()) return absl::NotFoundError("no endpoints found");
    return absl::OkStatus();
  }
  config.endpoints.clear();
  for (const proxy::tcp::Endpoint& e : found->endpoints) {
    config.endpoints.push_back(e.addr.ToString());
    if (e.scheme == "https") config.endpoints_tls = true;
  }
  common::LogEvent(*common::Logger("grpc-proxy"), spdlog::level::info,
                   "discovered cluster from SRV", {{"endpoints", config.endpoints}});
  return absl::OkStatus();
}

}  // namespace

GrpcProxyCommand::GrpcProxyCommand(CLI::App& root) {
  grpc_proxy_ = root.add_subcommand("grpc-proxy", "grpc-proxy related command");
  grpc_proxy_->allow_extras();
  start_ = grpc_proxy_->add_subcommand("start", "start the grpc proxy");
  proxy::grpcproxy::AddGrpcProxyStartFlags(*start_, &flags_);
}

int GrpcProxyCommand::Run() {
  const CLI::App& current = Current();
  if (std::optional<std::string> unknown = proxy::tcp::UnknownFlagError(current)) {
    return common::ReportParseError(current,
                                    CLI::ParseError(*unknown, CLI::ExitCodes::ExtrasError));
  }
  if (!start_->parsed()) {
    std::cout << grpc_proxy_->help() << std::flush;
    return 0;
  }
  absl::StatusOr<proxy::grpcproxy::ProxyConfig> config = proxy::grpcproxy::ToProxyConfig(flags_);
  if (!config.ok()) {
    std::cerr << config.status().message() << std::endl;
    return 1;
  }
  common::SetupLogging(config->log);
  if (flags_.enable_pprof) {
    common::LogEvent(*common::Logger("grpc-proxy"), spdlog::level::warn,
                     "--enable-pprof is accepted but keel has no profiling endpoint");
  }
  if (absl::Status s = DiscoverEndpoints(*config); !s.ok()) {
    std::cerr << s.message() << std::endl;
    return 1;
  }
  const sigset_t stop_signals = PrepareToServe();
  proxy::grpcproxy::ProxyServer server(*std::move(config));
  if (absl::Status s = server.Start(); !s.ok()) {
    std::cerr << s.message() << std::endl;
    return 1;
  }
  WaitForStopSignal(stop_signals, "grpc-proxy", "received signal; shutting down");
  server.Stop();
  return 0;
}

}  // namespace keel::cmd
