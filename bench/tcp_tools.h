#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/url.h"

namespace keel::bench {

// Options of `keel-bench tcp-echo-server`.
struct EchoServerOptions {
  common::HostPort listen;
  int threads = 0;  // 0: one per core
};

// Serves TCP echo on `listen` until the process is signalled: one epoll loop
// per thread, each with its own SO_REUSEPORT listener, non-blocking sockets,
// everything readable echoed back at once. Prints "listening on host:port"
// (the bound port when `listen.port` is 0) on stdout once ready.
// Returns an error only if it cannot listen.
absl::Status RunTcpEchoServer(const EchoServerOptions& options);

// Options of `keel-bench tcp-rtt`.
struct TcpRttOptions {
  common::HostPort target;
  int conns = 1;
  int size = 64;
  absl::Duration duration = absl::Seconds(5);
  int threads = 1;
  bool json = false;
};

// Opens `conns` connections to `target`; each sends `size` bytes, waits for
// them to come back and repeats, for `duration`. Prints round trips/s and the
// latency distribution (text or JSON). Unavailable if a connection cannot be
// made; Internal if a connection breaks during the run.
absl::Status RunTcpRtt(const TcpRttOptions& options);

}  // namespace keel::bench
