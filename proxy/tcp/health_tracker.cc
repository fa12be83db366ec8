#include "proxy/tcp/health_tracker.h"

#include <algorithm>
#include <utility>

#include "absl/random/distributions.h"

namespace keel::proxy::tcp {
namespace {

// Same identity rule as SetEndpoints: an SRV refresh may change priority or
// weight without making the endpoint a new one.
bool SameEndpoint(const Endpoint& a, const Endpoint& b) {
  return a.addr == b.addr && a.scheme == b.scheme;
}

}  // namespace

HealthTracker::HealthTracker(std::vector<Endpoint> endpoints, Options options, uint64_t seed)
    : options_(options), rng_(seed) {
  // etcd's tcpproxy falls back to 5 minutes when no retry delay is given.
  if (options_.retry_delay <= absl::ZeroDuration()) options_.retry_delay = absl::Minutes(5);
  if (options_.initial_backoff <= absl::ZeroDuration()) {
    options_.initial_backoff = absl::Milliseconds(100);
  }
  options_.initial_backoff = std::min(options_.initial_backoff, options_.retry_delay);
  states_.reserve(endpoints.size());
  for (Endpoint& e : endpoints) {
    State s;
    s.endpoint = std::move(e);
    states_.push_back(std::move(s));
  }
  Publish();
}

void HealthTracker::SetEndpoints(std::vector<Endpoint> endpoints, absl::Time now) {
  (void)now;  // states carry absolute times; new endpoints start active
  std::vector<State> next;
  next.reserve(endpoints.size());
  for (Endpoint& e : endpoints) {
    auto it = std::find_if(states_.begin(), states_.end(),
                           [&](const State& s) { return SameEndpoint(s.endpoint, e); });
    State s = it != states_.end() ? *it : State{};
    s.endpoint = std::move(e);
    next.push_back(std::move(s));
  }
  const bool same =
      next.size() == states_.size() &&
      std::equal(next.begin(), next.end(), states_.begin(), [](const State& a, const State& b) {
        return a.endpoint == b.endpoint && a.active == b.active;
      });
  states_ = std::move(next);
  if (!same) Publish();
}

bool HealthTracker::ReportFailure(size_t index, absl::Time now) {
  State& s = states_[index];
  if (s.active) {
    s.active = false;
    s.probe_outstanding = false;
    s.backoff = options_.initial_backoff;
    Schedule(s, now);
    Publish();
    return true;
  }
  if (!s.probe_outstanding) return false;  // a data-path dial; the probe stays scheduled
  s.probe_outstanding = false;
  s.backoff = std::min(s.backoff * 2, options_.retry_delay);
  Schedule(s, now);
  return false;
}

bool HealthTracker::ReportSuccess(size_t index, absl::Time now) {
  (void)now;
  State& s = states_[index];
  if (s.active) return false;
  s.active = true;
  s.probe_outstanding = false;
  s.backoff = absl::ZeroDuration();
  s.interval = absl::ZeroDuration();
  s.next_probe = absl::InfiniteFuture();
  Publish();
  return true;
}

std::vector<size_t> HealthTracker::DueProbes(absl::Time now) {
  std::vector<size_t> due;
  for (size_t i = 0; i < states_.size(); ++i) {
    State& s = states_[i];
    if (!s.active && !s.probe_outstanding && s.next_probe <= now) {
      s.probe_outstanding = true;
      s.next_probe = absl::InfiniteFuture();
      due.push_back(i);
    }
  }
  return due;
}

absl::Time HealthTracker::NextProbe() const {
  absl::Time next = absl::InfiniteFuture();
  for (const State& s : states_) {
    if (!s.active && !s.probe_outstanding) next = std::min(next, s.next_probe);
  }
  return next;
}

std::optional<size_t> HealthTracker::IndexOf(const Endpoint& endpoint) const {
  for (size_t i = 0; i < states_.size(); ++i) {
    if (SameEndpoint(states_[i].endpoint, endpoint)) return i;
  }
  return std::nullopt;
}

void HealthTracker::Schedule(State& state, absl::Time now) {
  // Jitter of +-20 % keeps many gateways that lost the same member from
  // probing it in lock step; the result never exceeds retry_delay (etcd's
  // fixed interval, which we only ever shorten).
  const double factor = absl::Uniform(absl::IntervalClosed, rng_, 0.8, 1.2);
  state.interval = std::min(state.backoff * factor, options_.retry_delay);
  state.next_probe = now + state.interval;
}

void HealthTracker::Publish() {
  auto set = std::make_shared<EndpointSet>();
  set->endpoints.reserve(states_.size());
  set->active.reserve(states_.size());
  for (const State& s : states_) {
    set->endpoints.push_back(s.endpoint);
    set->active.push_back(s.active);
  }
  set->generation = ++generation_;
  snapshot_ = std::move(set);
}

}  // namespace keel::proxy::tcp
