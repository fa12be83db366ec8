#pragma once

#include "CLI/CLI.hpp"
#include "proxy/tcp/gateway_flags.h"

namespace keel::cmd {

// `keel gateway` and `keel gateway start`: flag wiring and the process
// lifecycle around proxy::tcp::Gateway (signals, exit codes). No logic of
// its own. Thread-compatible; lives in main().
class GatewayCommand {
 public:
  // Adds the subcommands to `root`. REQUIRES: `root` outlives this object.
  explicit GatewayCommand(CLI::App& root);

  // After a successful parse: whether `gateway` was named on the command line.
  bool Selected() const { return gateway_->parsed(); }

  // The most specific parsed command (for help and error output).
  const CLI::App& Current() const { return start_->parsed() ? *start_ : *gateway_; }

  // Runs the parsed command and returns the process exit code: `gateway`
  // alone prints its help (0); `gateway start` runs the gateway until
  // SIGTERM/SIGINT, drains and returns 0, or prints a start-up error as etcd
  // does (plain message on stderr) and returns 1. Unknown flags print
  // "Error: unknown flag: --x" and the usage, and return 1.
  int Run();

 private:
  CLI::App* gateway_;
  CLI::App* start_;
  proxy::tcp::GatewayFlags flags_;
};

}  // namespace keel::cmd
