#pragma once

#include "CLI/CLI.hpp"
#include "proxy/grpc/proxy_flags.h"

namespace keel::cmd {

// `keel grpc-proxy` and `keel grpc-proxy start`: flag wiring and the process
// lifecycle around proxy::grpcproxy::ProxyServer (SRV discovery, logging,
// signals, exit codes). No logic of its own. Thread-compatible; lives in
// main().
class GrpcProxyCommand {
 public:
  // Adds the subcommands to `root`. REQUIRES: `root` outlives this object.
  explicit GrpcProxyCommand(CLI::App& root);

  // After a successful parse: whether `grpc-proxy` was named on the command line.
  bool Selected() const { return grpc_proxy_->parsed(); }

  // The most specific parsed command (for help and error output).
  const CLI::App& Current() const { return start_->parsed() ? *start_ : *grpc_proxy_; }

  // Runs the parsed command and returns the process exit code: `grpc-proxy`
  // alone prints its help (0); `grpc-proxy start` serves until SIGTERM/SIGINT,
  // shuts down cleanly and returns 0, or prints a start-up error as etcd does
  // (plain message on stderr, e.g. `invalid resolver-ttl 0`) and returns 1.
  // Unknown flags print "Error: unknown flag: --x" and the usage, and return 1.
  int Run();

 private:
  CLI::App* grpc_proxy_;
  CLI::App* start_;
  proxy::grpcproxy::ProxyFlags flags_;
};

}  // namespace keel::cmd
