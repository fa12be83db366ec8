#include "cmd/keel/grpc_proxy_command.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <iostream>
#include <optional>
#include <string>
#include <utility>

#include "common/flags.h"
#include "common/logging.h"
#include "common/systemd.h"
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
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }

  // Every thread started from here on (gRPC's included) inherits this mask,
  // so the stop signals are only ever taken by sigwait below.
  signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  proxy::grpcproxy::ProxyServer server(*std::move(config));
  if (absl::Status s = server.Start(); !s.ok()) {
    std::cerr << s.message() << std::endl;
    return 1;
  }
  if (absl::Status s = common::NotifySystemd("READY=1"); !s.ok()) {
    common::LogEvent(*common::Logger("grpc-proxy"), spdlog::level::warn,
                     "failed to notify systemd for readiness", {{"error", s.ToString()}});
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (void)common::NotifySystemd("STOPPING=1");  // best effort, as sd_notify callers do
  common::LogEvent(*common::Logger("grpc-proxy"), spdlog::level::info,
                   "received signal; shutting down",
                   {{"signal", sig == SIGTERM ? "terminated" : "interrupt"}});
  server.Stop();
  return 0;
}

}  // namespace keel::cmd
