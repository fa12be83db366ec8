#include "cmd/keel/gateway_command.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <iostream>
#include <optional>
#include <string>

#include "common/flags.h"
#include "common/logging.h"
#include "common/systemd.h"
#include "proxy/tcp/gateway.h"

namespace keel::cmd {

GatewayCommand::GatewayCommand(CLI::App& root) {
  gateway_ = root.add_subcommand("gateway", "gateway related command");
  gateway_->allow_extras();
  start_ = gateway_->add_subcommand("start", "start the gateway");
  proxy::tcp::AddGatewayStartFlags(*start_, &flags_);
}

int GatewayCommand::Run() {
  const CLI::App& current = Current();
  if (std::optional<std::string> unknown = proxy::tcp::UnknownFlagError(current)) {
    return common::ReportParseError(current,
                                    CLI::ParseError(*unknown, CLI::ExitCodes::ExtrasError));
  }
  if (!start_->parsed()) {
    std::cout << gateway_->help() << std::flush;
    return 0;
  }
  absl::StatusOr<proxy::tcp::GatewayConfig> config = proxy::tcp::ToGatewayConfig(flags_);
  if (!config.ok()) {
    std::cerr << config.status().message() << std::endl;
    return 1;
  }
  common::SetupLogging(config->log);
  // One descriptor per client plus one per upstream: use the hard limit, as
  // Go (and so etcd's gateway) does at start-up.
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }

  // Every thread the gateway starts inherits this mask, so the signals are
  // only ever taken by sigwait below. SIGPIPE is never wanted: a peer that
  // went away is an error return, not a process kill.
  signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  proxy::tcp::Gateway gateway(std::move(config->gateway));
  if (absl::Status s = gateway.Start(); !s.ok()) {
    std::cerr << s.message() << std::endl;
    return 1;
  }
  // etcd tells systemd it is ready once it serves; units with Type=notify wait for it.
  if (absl::Status s = common::NotifySystemd("READY=1"); !s.ok()) {
    common::LogEvent(*common::Logger("gateway"), spdlog::level::warn,
                     "failed to notify systemd for readiness", {{"error", s.ToString()}});
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (void)common::NotifySystemd("STOPPING=1");  // best effort, as sd_notify callers do
  common::LogEvent(*common::Logger("gateway"), spdlog::level::info, "received signal; draining",
                   {{"signal", sig == SIGTERM ? "terminated" : "interrupt"}});
  gateway.Drain();
  return 0;
}

}  // namespace keel::cmd
