// keel: one binary, three roles (DESIGN.md). This file only builds the
// command tree and dispatches; each role's command lives next to it.

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "cmd/keel/gateway_command.h"
#include "cmd/keel/grpc_proxy_command.h"
#include "common/flags.h"
#include "proxy/tcp/gateway_flags.h"

namespace {

// CLI11's help, with the whole command path in the usage line
// ("Usage: keel gateway start [OPTIONS]"), as cobra prints it.
class FullPathFormatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App* app, std::string name) const override {
    std::string path = name;
    for (const CLI::App* parent = app->get_parent(); parent != nullptr;
         parent = parent->get_parent()) {
      path = parent->get_name() + " " + path;
    }
    return CLI::Formatter::make_usage(app, path);
  }
};

constexpr char kVersion[] =
    "keel Version: 0.1.0\n"
    "API Version: 3.4";

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil is built with Mutex deadlock detection on, which keeps a
  // lock graph on every Mutex (gRPC's included): 1.5-2 % of the grpc-proxy's
  // CPU in perf. The TSan preset and tests still catch lock-order bugs.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app("keel: an etcd-compatible gateway, gRPC proxy and member", "keel");
  app.formatter(std::make_shared<FullPathFormatter>());  // inherited by subcommands
  app.set_version_flag("--version", kVersion);
  app.allow_extras();
  app.require_subcommand(0, 1);
  keel::cmd::GatewayCommand gateway(app);
  keel::cmd::GrpcProxyCommand grpc_proxy(app);
  // CLI11 takes a reversed argument vector without the program name.
  std::vector<std::string> args = keel::proxy::tcp::SplitEmptyFlagValues(
      std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc));
  std::reverse(args.begin(), args.end());
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    const CLI::App& current = gateway.Selected()      ? gateway.Current()
                              : grpc_proxy.Selected() ? grpc_proxy.Current()
                                                      : app;
    return keel::common::ReportParseError(current, e);
  }
  if (gateway.Selected()) return gateway.Run();
  if (grpc_proxy.Selected()) return grpc_proxy.Run();
  if (std::optional<std::string> unknown = keel::proxy::tcp::UnknownFlagError(app)) {
    return keel::common::ReportParseError(app,
                                          CLI::ParseError(*unknown, CLI::ExitCodes::ExtrasError));
  }
  std::cout << app.help() << std::flush;
  return 0;
}
