#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "common/url.h"
#include "proxy/tcp/endpoint_config.h"
#include "spdlog/spdlog.h"

namespace keel::proxy::tcp {

class EventLoop;
class Monitor;
class Worker;

// Everything `keel gateway start` is configured with.
struct GatewayOptions {
  EndpointConfig endpoints;  // --listen-addr, --endpoints, --discovery-srv*, ...
  absl::Duration retry_delay = absl::Minutes(1);                // --retry-delay
  absl::Duration dial_timeout = absl::Seconds(1);               // --dial-timeout
  absl::Duration health_check_interval = absl::ZeroDuration();  // --health-check-interval
  absl::Duration drain_timeout = absl::Seconds(10);             // --drain-timeout
  std::optional<common::HostPort> metrics_addr;                 // --metrics-addr
  int loops = 0;                                                // --loops; 0 = one per core
};

// The L4 gateway: `loops` event loops, each with its own SO_REUSEPORT
// listener and its own connections (no locks on the data path), plus a
// monitor loop owning endpoint health (see Monitor) and, optionally, an HTTP
// server for /metrics and /health.
// Thread-safety: Start() then Drain(), from one thread; listen_port(),
// metrics_port() after a successful Start().
class Gateway {
 public:
  explicit Gateway(GatewayOptions options);
  ~Gateway();  // Drain()s with a zero timeout if still running
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Resolves the endpoints (etcd's start-up rules and messages, from
  // ResolveEndpoints), binds the listeners and the metrics server, starts
  // the threads and logs "ready to proxy client requests". On error nothing
  // keeps running; the status message is what etcd prints (e.g.
  // `error parsing endpoint "127.0.0.1"`) or `listen tcp <addr>: bind: ...`.
  absl::Status Start();

  // Graceful stop: closes the listeners, lets open connections finish for up
  // to drain_timeout, closes the rest and stops every thread. Returns how many
  // connections were closed by force. Idempotent.
  size_t Drain();

  // The bound listen port (useful with port 0).
  int listen_port() const { return listen_port_; }
  // The bound metrics port, 0 without --metrics-addr.
  int metrics_port() const;
  // The registry behind /metrics.
  common::MetricsRegistry& metrics() { return metrics_; }

 private:
  absl::Status Listen();
  void StopThreads();

  GatewayOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  common::MetricsRegistry metrics_;
  std::atomic<uint64_t> tickets_{0};
  int listen_port_ = 0;
  bool running_ = false;

  std::vector<std::unique_ptr<EventLoop>> loops_;  // one per worker
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<EventLoop> monitor_loop_;
  std::unique_ptr<Monitor> monitor_;
  std::unique_ptr<common::HttpServer> http_;

  absl::Mutex mu_;
  size_t idle_workers_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace keel::proxy::tcp
