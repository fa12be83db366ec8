#include "cmd/keel/gateway_command.h"

#include <iostream>
#include <optional>
#include <string>

#include "cmd/keel/serve_lifecycle.h"
#include "common/flags.h"
#include "common/logging.h"
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
  const sigset_t stop_signals = PrepareToServe();
  proxy::tcp::Gateway gateway(std::move(config->gateway));
  if (absl::Status s = gateway.Start(); !s.ok()) {
    std::cerr << s.message() << std::endl;
    return 1;
  }
  WaitForStopSignal(stop_signals, "gateway", "received signal; draining");
  gateway.Drain();
  return 0;
}

}  // namespace keel::cmd
