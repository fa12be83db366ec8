#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "proxy/tcp/endpoint.h"
#include "proxy/tcp/endpoint_config.h"
#include "proxy/tcp/event_loop.h"
#include "proxy/tcp/handles.h"
#include "proxy/tcp/health_tracker.h"
#include "proxy/tcp/host_resolver.h"
#include "proxy/tcp/probe.h"
#include "proxy/tcp/routes.h"
#include "spdlog/spdlog.h"

namespace keel::proxy::tcp {

// Monitor settings.
struct MonitorOptions {
  absl::Duration retry_delay = absl::Minutes(1);  // longest re-probe interval
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration dial_timeout = absl::Seconds(1);               // per probe connect
  absl::Duration health_check_interval = absl::ZeroDuration();  // 0: no /health checks
  // Re-run SRV discovery (config.discovery) every max(TTL, srv_min_refresh).
  bool refresh_srv = false;
  absl::Duration srv_ttl = absl::ZeroDuration();
  absl::Duration srv_min_refresh = absl::Seconds(1);
  EndpointConfig config;  // for SRV refresh and its loop guard
  uint64_t seed = 1;
  // Looks up endpoint host names (on the resolver thread, and in
  // InitialRoutes()); tests inject a slow one.
  HostResolver::ResolveFn resolve = ResolveHostPort;
};

// The gateway's control plane, on its own event loop: owns the HealthTracker,
// takes dial outcomes from the loops (DialObserver), re-probes inactive
// endpoints when due (TCP connect, or GET /health with health checks on),
// health-checks active endpoints every health_check_interval (two failed
// checks in a row deactivate one; a failed data-path dial at once), refreshes SRV
// endpoints on their TTL (on a helper thread, since discovery blocks), and
// publishes a Routes snapshot after every change through `publish`.
// Host names are re-resolved on every re-probe and for new SRV targets on a
// HostResolver thread, never on the loop: a dead DNS server must not stall
// dial reports, probes or route publishing. IP literals are converted inline.
// Logs etcd's words: "deactivated endpoint", "activated", "failed to activate
// endpoint (stay inactive for another interval)".
// Thread-safety: DialObserver methods and AnyActive() are thread-safe; the
// rest is called by the Gateway as documented.
class Monitor : public DialObserver {
 public:
  using Publish = std::function<void(std::shared_ptr<const Routes>)>;

  // REQUIRES: `loop`, `metrics` and `logger` outlive the monitor; `loop` is
  // not started yet. `publish` runs on the monitor loop.
  Monitor(EventLoop& loop, common::MetricsRegistry& metrics, std::shared_ptr<spdlog::logger> logger,
          MonitorOptions options, std::vector<Endpoint> endpoints, Publish publish);
  ~Monitor() override;  // Stop()s
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // The first snapshot (resolves the endpoint hosts on the calling thread;
  // blocking). Call before Start(); the caller hands it to the loops itself.
  std::shared_ptr<const Routes> InitialRoutes();

  // Starts timers (on the loop) and the SRV refresher. REQUIRES: loop started.
  void Start();
  // Stops the resolver (without waiting for a lookup in flight; its answer is
  // dropped) and the SRV refresher. The loop's owner stops the loop
  // afterwards; the monitor must be destroyed after the loop has stopped.
  void Stop();

  // True when at least one endpoint is active. Thread-safe.
  bool AnyActive() const { return active_count_.load(std::memory_order_relaxed) > 0; }

  void OnDialFailure(const Endpoint& endpoint, absl::Status error) override;
  void OnDialSuccess(const Endpoint& endpoint) override;

 private:
  // Loop-confined from here on.
  std::shared_ptr<const Routes> BuildRoutes();
  void PublishRoutes();
  void HandleFailure(const Endpoint& endpoint, const absl::Status& error);
  void HandleSuccess(const Endpoint& endpoint);
  void ScheduleProbes();
  void RunDueProbes();
  void RunHealthChecks();
  void StartProbe(size_t index, bool due_probe);
  void LaunchProbe(uint64_t id, const Endpoint& endpoint);
  void OnProbeDone(uint64_t id, Endpoint endpoint, absl::Status status);
  void AdoptSrvEndpoints(std::vector<Endpoint> endpoints);
  void SetSrvEndpoints(std::vector<Endpoint> endpoints);
  // The cached addresses of `hp`; an IP literal is converted on first use, a
  // name not resolved yet has none.
  const std::vector<SockAddr>& Addresses(const common::HostPort& hp);
  // Caches a lookup's answer; a failure keeps the last good one.
  void StoreAddresses(const common::HostPort& hp, absl::StatusOr<std::vector<SockAddr>> addrs);
  void RefreshLoop();

  static void ProbeTimerCallback(evutil_socket_t, short, void* arg);
  static void HealthTimerCallback(evutil_socket_t, short, void* arg);

  EventLoop& loop_;
  common::MetricsRegistry& metrics_;
  std::shared_ptr<spdlog::logger> logger_;
  const MonitorOptions options_;
  const Publish publish_;
  HealthTracker tracker_;
  std::atomic<int> active_count_{0};

  std::map<std::string, std::vector<SockAddr>> resolved_;  // by "host:port"
  std::map<std::string, common::Gauge*> up_gauges_;        // by "host:port"
  std::map<uint64_t, std::unique_ptr<Probe>> probes_;      // in flight, by id
  std::map<std::string, uint64_t> probing_;                // "host:port" -> probe id
  std::map<std::string, int> check_failures_;  // consecutive failed health checks, by "host:port"
  uint64_t next_probe_id_ = 1;
  uint64_t srv_lists_ = 0;  // SRV lists received; only the latest is adopted
  EventPtr probe_timer_;
  EventPtr health_timer_;

  HostResolver resolver_;
  absl::Notification stop_refresh_;
  std::thread refresher_;
};

}  // namespace keel::proxy::tcp
