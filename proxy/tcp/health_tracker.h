#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "absl/time/time.h"
#include "proxy/tcp/endpoint.h"
#include "proxy/tcp/endpoint_picker.h"

namespace keel::proxy::tcp {

// Tracks up/down per endpoint and schedules re-probes of down endpoints with
// exponential backoff (initial_backoff, x2 per failed probe) plus jitter from a
// seeded generator, never longer than retry_delay. Pure: time comes in as
// `now`, nothing is dialled here. Thread-compatible: owned by the gateway's
// monitor thread, which publishes Snapshot() to the data path.
//
// A down endpoint's life: ReportFailure (active -> inactive, probe scheduled)
// -> DueProbes returns it once -> the caller probes and reports
// ReportSuccess (-> active, backoff reset) or ReportFailure (backoff doubles,
// next probe scheduled). Indices are positions in the current endpoint list.
class HealthTracker {
 public:
  struct Options {
    // Upper bound of the re-probe interval (--retry-delay). A value <= 0 means
    // 5 minutes, like etcd's tcpproxy library default.
    absl::Duration retry_delay = absl::Minutes(1);
    // First re-probe interval after an endpoint goes down.
    absl::Duration initial_backoff = absl::Milliseconds(100);
  };

  // All `endpoints` start active. `seed` drives the jitter.
  HealthTracker(std::vector<Endpoint> endpoints, Options options, uint64_t seed);

  // Replaces the endpoint list (SRV refresh). Endpoints still present (same
  // addr and scheme; priority/weight may change) keep their state; new ones
  // start active. Bumps the generation if anything changed.
  void SetEndpoints(std::vector<Endpoint> endpoints, absl::Time now);

  // A dial from the data path failed, or a probe failed. An active endpoint
  // becomes inactive (probe scheduled after initial_backoff with jitter); for
  // an endpoint whose probe was handed out by DueProbes the backoff doubles
  // (capped at retry_delay) and the next probe is scheduled; a failure of an
  // already inactive endpoint with no probe outstanding changes nothing.
  // Returns true if the active set changed (then publish Snapshot()).
  // REQUIRES: index < size().
  bool ReportFailure(size_t index, absl::Time now);

  // A dial or probe succeeded: the endpoint becomes active and its backoff is
  // reset. Returns true if the active set changed. REQUIRES: index < size().
  bool ReportSuccess(size_t index, absl::Time now);

  // Endpoints whose re-probe is due at `now`; each is returned once until it is
  // reported again.
  std::vector<size_t> DueProbes(absl::Time now);

  // When the next probe is due (InfiniteFuture if none is scheduled).
  absl::Time NextProbe() const;

  // The current list and activity, shared with readers; a new object after
  // every change, so readers never see it mutate.
  std::shared_ptr<const EndpointSet> Snapshot() const { return snapshot_; }

  // Number of endpoints in the current list.
  size_t size() const { return states_.size(); }
  // REQUIRES: index < size().
  const Endpoint& endpoint(size_t index) const { return states_[index].endpoint; }
  bool IsActive(size_t index) const { return states_[index].active; }
  // The interval that was used for the endpoint's last scheduled probe
  // (ZeroDuration for an active endpoint); for the caller's log lines.
  absl::Duration ProbeInterval(size_t index) const { return states_[index].interval; }
  // Position of the endpoint with the same addr and scheme, if present. Lets
  // callers holding an older snapshot map their index to the current list.
  std::optional<size_t> IndexOf(const Endpoint& endpoint) const;

 private:
  struct State {
    Endpoint endpoint;
    bool active = true;
    bool probe_outstanding = false;                  // handed out by DueProbes, not reported yet
    absl::Duration backoff = absl::ZeroDuration();   // un-jittered base of the next interval
    absl::Duration interval = absl::ZeroDuration();  // jittered interval last scheduled
    absl::Time next_probe = absl::InfiniteFuture();
  };

  // Schedules the next probe of `state` at now + jitter(state.backoff).
  void Schedule(State& state, absl::Time now);
  // Rebuilds snapshot_ with a new generation.
  void Publish();

  Options options_;
  std::mt19937_64 rng_;
  std::vector<State> states_;
  uint64_t generation_ = 0;
  std::shared_ptr<const EndpointSet> snapshot_;
};

}  // namespace keel::proxy::tcp
