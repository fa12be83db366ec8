#include "proxy/tcp/monitor.h"

#include <algorithm>
#include <utility>

#include "common/duration.h"
#include "common/logging.h"

namespace keel::proxy::tcp {
namespace {

constexpr char kBytesHelp[] = "Bytes relayed by the gateway, by endpoint and direction.";
constexpr char kDialFailuresHelp[] = "Failed dials of an endpoint from the data path.";
// Consecutive failed health checks that deactivate an active endpoint.
constexpr int kHealthCheckFailures = 2;
constexpr char kUpHelp[] = "1 if the gateway considers the endpoint active, else 0.";

nlohmann::json EndpointNames(const std::vector<Endpoint>& endpoints) {
  nlohmann::json names = nlohmann::json::array();
  for (const Endpoint& e : endpoints) names.push_back(e.addr.ToString());
  return names;
}

}  // namespace

Monitor::Monitor(EventLoop& loop, common::MetricsRegistry& metrics,
                 std::shared_ptr<spdlog::logger> logger, MonitorOptions options,
                 std::vector<Endpoint> endpoints, Publish publish)
    : loop_(loop),
      metrics_(metrics),
      logger_(std::move(logger)),
      options_(std::move(options)),
      publish_(std::move(publish)),
      tracker_(std::move(endpoints),
               HealthTracker::Options{.retry_delay = options_.retry_delay,
                                      .initial_backoff = options_.initial_backoff},
               options_.seed),
      resolver_(loop_, options_.resolve) {}

Monitor::~Monitor() {
  Stop();
  probe_timer_.reset();
  health_timer_.reset();
  probes_.clear();
}

std::shared_ptr<const Routes> Monitor::InitialRoutes() {
  // Not on the loop yet: the gateway cannot serve before it knows addresses.
  for (const Endpoint& e : tracker_.Snapshot()->endpoints) {
    StoreAddresses(e.addr, options_.resolve(e.addr));
  }
  std::shared_ptr<const Routes> routes = BuildRoutes();
  int active = 0;
  for (bool a : routes->set->active) active += a ? 1 : 0;
  active_count_.store(active);
  return routes;
}

void Monitor::Start() {
  loop_.Post([this]() {
    probe_timer_.reset(event_new(loop_.base(), -1, 0, &Monitor::ProbeTimerCallback, this));
    if (options_.health_check_interval > absl::ZeroDuration()) {
      health_timer_.reset(
          event_new(loop_.base(), -1, EV_PERSIST, &Monitor::HealthTimerCallback, this));
      const timeval tv = absl::ToTimeval(options_.health_check_interval);
      event_add(health_timer_.get(), &tv);
      RunHealthChecks();  // right away, so an unhealthy member is skipped from the start
    }
    ScheduleProbes();
  });
  if (options_.refresh_srv) refresher_ = std::thread([this] { RefreshLoop(); });
}

void Monitor::Stop() {
  resolver_.Stop();
  if (!stop_refresh_.HasBeenNotified()) stop_refresh_.Notify();
  if (refresher_.joinable()) refresher_.join();
}

void Monitor::OnDialFailure(const Endpoint& endpoint, absl::Status error) {
  loop_.Post([this, endpoint, error = std::move(error)]() { HandleFailure(endpoint, error); });
}

void Monitor::OnDialSuccess(const Endpoint& endpoint) {
  loop_.Post([this, endpoint]() { HandleSuccess(endpoint); });
}

const std::vector<SockAddr>& Monitor::Addresses(const common::HostPort& hp) {
  auto it = resolved_.find(hp.ToString());
  if (it != resolved_.end()) return it->second;
  // A literal never reaches DNS; a name is resolved before its endpoint gets
  // here (InitialRoutes, AdoptSrvEndpoints), unless that failed.
  if (IsIpLiteral(hp.host)) StoreAddresses(hp, ResolveHostPort(hp));
  return resolved_[hp.ToString()];
}

void Monitor::StoreAddresses(const common::HostPort& hp,
                             absl::StatusOr<std::vector<SockAddr>> addrs) {
  const std::string key = hp.ToString();
  if (!addrs.ok()) {
    common::LogEvent(*logger_, spdlog::level::warn, "failed to resolve endpoint host",
                     {{"address", key}, {"error", std::string(addrs.status().message())}});
    // Keep the last good answer, if any: a DNS hiccup must not take an
    // endpoint's addresses away.
    resolved_.try_emplace(key);
    return;
  }
  resolved_[key] = *std::move(addrs);
}

std::shared_ptr<const Routes> Monitor::BuildRoutes() {
  auto routes = std::make_shared<Routes>();
  routes->set = tracker_.Snapshot();
  for (size_t i = 0; i < routes->set->endpoints.size(); ++i) {
    const Endpoint& e = routes->set->endpoints[i];
    RouteTarget t;
    t.name = e.addr.ToString();
    t.addrs = Addresses(e.addr);
    t.bytes_to_endpoint = metrics_.GetCounter("keel_gateway_bytes_total", kBytesHelp,
                                              {{"endpoint", t.name}, {"direction", "to_endpoint"}});
    t.bytes_to_client = metrics_.GetCounter("keel_gateway_bytes_total", kBytesHelp,
                                            {{"endpoint", t.name}, {"direction", "to_client"}});
    t.dial_failures = metrics_.GetCounter("keel_gateway_dial_failures_total", kDialFailuresHelp,
                                          {{"endpoint", t.name}});
    common::Gauge*& up = up_gauges_[t.name];
    if (up == nullptr) {
      up = metrics_.GetGauge("keel_gateway_endpoint_up", kUpHelp, {{"endpoint", t.name}});
    }
    routes->targets.push_back(std::move(t));
  }
  // Endpoints dropped by an SRV refresh read as down.
  for (auto& [name, gauge] : up_gauges_) gauge->Set(0);
  for (size_t i = 0; i < routes->set->endpoints.size(); ++i) {
    up_gauges_[routes->targets[i].name]->Set(routes->set->active[i] ? 1 : 0);
  }
  return routes;
}

void Monitor::PublishRoutes() {
  std::shared_ptr<const Routes> routes = BuildRoutes();
  int active = 0;
  for (bool a : routes->set->active) active += a ? 1 : 0;
  active_count_.store(active, std::memory_order_relaxed);
  publish_(std::move(routes));
}

void Monitor::HandleFailure(const Endpoint& endpoint, const absl::Status& error) {
  std::optional<size_t> index = tracker_.IndexOf(endpoint);
  // Failures of endpoints already down change nothing: their re-probe
  // schedule is the monitor's business.
  if (!index.has_value() || !tracker_.IsActive(*index)) return;
  if (!tracker_.ReportFailure(*index, absl::Now())) return;
  // A failed health check before the deactivation must not count against the
  // endpoint once it is back.
  check_failures_.erase(endpoint.addr.ToString());
  common::LogEvent(*logger_, spdlog::level::warn, "deactivated endpoint",
                   {{"address", endpoint.addr.ToString()},
                    {"interval", common::FormatGoDuration(tracker_.ProbeInterval(*index))},
                    {"error", std::string(error.message())}});
  PublishRoutes();
  ScheduleProbes();
}

void Monitor::HandleSuccess(const Endpoint& endpoint) {
  // With health checks a TCP connect proves little (the member may have no
  // leader): only a passing check reactivates the endpoint.
  if (options_.health_check_interval > absl::ZeroDuration()) return;
  std::optional<size_t> index = tracker_.IndexOf(endpoint);
  if (!index.has_value() || tracker_.IsActive(*index)) return;
  if (!tracker_.ReportSuccess(*index, absl::Now())) return;
  common::LogEvent(*logger_, spdlog::level::info, "activated",
                   {{"address", endpoint.addr.ToString()}});
  PublishRoutes();
  ScheduleProbes();
}

void Monitor::ScheduleProbes() {
  if (probe_timer_ == nullptr) return;
  const absl::Time next = tracker_.NextProbe();
  if (next == absl::InfiniteFuture()) {
    event_del(probe_timer_.get());
    return;
  }
  const timeval tv = absl::ToTimeval(std::max(next - absl::Now(), absl::ZeroDuration()));
  event_add(probe_timer_.get(), &tv);
}

void Monitor::ProbeTimerCallback(evutil_socket_t, short, void* arg) {
  static_cast<Monitor*>(arg)->RunDueProbes();
}

void Monitor::HealthTimerCallback(evutil_socket_t, short, void* arg) {
  static_cast<Monitor*>(arg)->RunHealthChecks();
}

void Monitor::RunDueProbes() {
  for (size_t index : tracker_.DueProbes(absl::Now())) StartProbe(index, /*due_probe=*/true);
  ScheduleProbes();
}

void Monitor::RunHealthChecks() {
  for (size_t i = 0; i < tracker_.size(); ++i) {
    if (tracker_.IsActive(i)) StartProbe(i, /*due_probe=*/false);
  }
}

void Monitor::StartProbe(size_t index, bool due_probe) {
  const Endpoint endpoint = tracker_.endpoint(index);
  const std::string name = endpoint.addr.ToString();
  if (probing_.contains(name)) {
    // A check is already in flight; a due re-probe still needs an answer
    // for the tracker, which the running probe will give.
    return;
  }
  const uint64_t id = next_probe_id_++;
  probing_[name] = id;
  if (!due_probe || IsIpLiteral(endpoint.addr.host)) {
    LaunchProbe(id, endpoint);
    return;
  }
  // Re-resolve names on every re-probe (an endpoint may come back
  // elsewhere), off the loop; the probe starts when the answer is back.
  resolver_.Resolve({endpoint.addr}, [this, id, endpoint](HostResolver::Results results) {
    StoreAddresses(endpoint.addr, std::move(results.front()));
    if (!tracker_.IndexOf(endpoint).has_value()) {
      probing_.erase(endpoint.addr.ToString());  // dropped by an SRV refresh meanwhile
      return;
    }
    LaunchProbe(id, endpoint);
  });
}

// Starts probe `id` of `endpoint` at its cached addresses.
void Monitor::LaunchProbe(uint64_t id, const Endpoint& endpoint) {
  const std::string name = endpoint.addr.ToString();
  const bool http =
      options_.health_check_interval > absl::ZeroDuration() && endpoint.scheme != "https";
  std::vector<SockAddr> addrs = Addresses(endpoint.addr);
  const absl::Duration timeout =
      http ? std::max(options_.dial_timeout, absl::Seconds(3)) : options_.dial_timeout;
  probes_[id] = std::make_unique<Probe>(
      loop_.base(), std::move(addrs), name,
      http ? Probe::Kind::kHttpHealth : Probe::Kind::kTcpConnect, timeout,
      [this, id, endpoint](absl::Status status) { OnProbeDone(id, endpoint, std::move(status)); });
}

void Monitor::OnProbeDone(uint64_t id, Endpoint endpoint, absl::Status status) {
  const std::string name = endpoint.addr.ToString();
  probes_.erase(id);  // the probe is done with itself: it touches nothing after `done`
  probing_.erase(name);
  std::optional<size_t> index = tracker_.IndexOf(endpoint);
  if (!index.has_value()) return;  // dropped by an SRV refresh meanwhile
  const bool was_active = tracker_.IsActive(*index);
  if (status.ok()) {
    check_failures_.erase(name);
    if (!was_active && tracker_.ReportSuccess(*index, absl::Now())) {
      common::LogEvent(*logger_, spdlog::level::info, "activated", {{"address", name}});
      PublishRoutes();
    }
  } else if (was_active && status.code() == absl::StatusCode::kResourceExhausted) {
    // Out of descriptors here says nothing about the endpoint.
  } else if (was_active) {
    // A periodic health check failed. One slow answer is not enough (etcd's
    // own /health gives up after 1 s on a busy member): it takes
    // kHealthCheckFailures in a row.
    if (++check_failures_[name] < kHealthCheckFailures) {
      ScheduleProbes();
      return;
    }
    check_failures_.erase(name);
    if (tracker_.ReportFailure(*index, absl::Now())) {
      common::LogEvent(*logger_, spdlog::level::warn, "deactivated endpoint",
                       {{"address", name},
                        {"interval", common::FormatGoDuration(tracker_.ProbeInterval(*index))},
                        {"error", std::string(status.message())}});
      PublishRoutes();
    }
  } else {
    tracker_.ReportFailure(*index, absl::Now());
    common::LogEvent(*logger_, spdlog::level::warn,
                     "failed to activate endpoint (stay inactive for another interval)",
                     {{"address", name},
                      {"interval", common::FormatGoDuration(tracker_.ProbeInterval(*index))},
                      {"error", std::string(status.message())}});
  }
  ScheduleProbes();
}

void Monitor::AdoptSrvEndpoints(std::vector<Endpoint> endpoints) {
  const uint64_t list = ++srv_lists_;
  std::vector<common::HostPort> names;  // new targets given by name
  for (const Endpoint& e : endpoints) {
    if (!resolved_.contains(e.addr.ToString()) && !IsIpLiteral(e.addr.host)) {
      names.push_back(e.addr);
    }
  }
  if (names.empty()) {
    SetSrvEndpoints(std::move(endpoints));
    return;
  }
  // Routes must carry the new targets' addresses: look them up off the loop
  // first, then adopt the list.
  resolver_.Resolve(names, [this, list, names, endpoints = std::move(endpoints)](
                               HostResolver::Results results) mutable {
    for (size_t i = 0; i < names.size(); ++i) StoreAddresses(names[i], std::move(results[i]));
    if (list != srv_lists_) return;  // a newer list arrived meanwhile; it wins
    SetSrvEndpoints(std::move(endpoints));
  });
}

void Monitor::SetSrvEndpoints(std::vector<Endpoint> endpoints) {
  const uint64_t before = tracker_.Snapshot()->generation;
  const nlohmann::json names = EndpointNames(endpoints);
  tracker_.SetEndpoints(std::move(endpoints), absl::Now());
  if (tracker_.Snapshot()->generation == before) return;
  common::LogEvent(*logger_, spdlog::level::info, "refreshed endpoints from SRV",
                   {{"endpoints", names}});
  PublishRoutes();
  ScheduleProbes();
}

void Monitor::RefreshLoop() {
  absl::Duration wait = std::max(options_.srv_ttl, options_.srv_min_refresh);
  while (!stop_refresh_.WaitForNotificationWithTimeout(wait)) {
    absl::StatusOr<Discovered> found = DiscoverSrvEndpoints(options_.config.discovery);
    absl::Status status = found.status();
    if (found.ok()) {
      wait = std::max(found->ttl, options_.srv_min_refresh);
      if (found->endpoints.empty()) {
        // As at start-up nothing validated; keep what we have rather than
        // falling back to the static list on a transient failure.
        status = absl::UnavailableError("no SRV target validated");
      } else {
        status = ValidateEndpoints(options_.config.listen, found->endpoints);
      }
    }
    if (!status.ok()) {
      common::LogEvent(*logger_, spdlog::level::warn,
                       "failed to refresh SRV endpoints (keeping the current list)",
                       {{"error", std::string(status.message())}});
      continue;
    }
    loop_.Post([this, endpoints = std::move(found->endpoints)]() mutable {
      AdoptSrvEndpoints(std::move(endpoints));
    });
  }
}

}  // namespace keel::proxy::tcp
