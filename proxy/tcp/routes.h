#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/metrics.h"
#include "proxy/tcp/endpoint.h"
#include "proxy/tcp/endpoint_picker.h"
#include "proxy/tcp/sockets.h"

namespace keel::proxy::tcp {

// What the data path needs to dial one endpoint, resolved off the data path
// by the monitor. The counters belong to the gateway's MetricsRegistry and
// outlive every Routes.
struct RouteTarget {
  std::string name;             // "host:port", the metrics label and log address
  std::vector<SockAddr> addrs;  // tried in order; empty if the host did not resolve
  common::Counter* bytes_to_endpoint = nullptr;
  common::Counter* bytes_to_client = nullptr;
  common::Counter* dial_failures = nullptr;
};

// One immutable routing snapshot, published by the monitor to every loop as
// shared_ptr<const Routes>. Safe to read from any thread once published.
struct Routes {
  std::shared_ptr<const EndpointSet> set;  // never null
  std::vector<RouteTarget> targets;        // parallel to set->endpoints
};

// Receives dial outcomes from the data path. Thread-safe: called from every
// loop thread; implementations only enqueue (never block).
class DialObserver {
 public:
  virtual ~DialObserver() = default;
  // A data-path dial of `endpoint` failed with `error` (all its addresses).
  virtual void OnDialFailure(const Endpoint& endpoint, absl::Status error) = 0;
  // A data-path dial of `endpoint`, marked inactive in the caller's
  // snapshot, succeeded. Not called for endpoints already active.
  virtual void OnDialSuccess(const Endpoint& endpoint) = 0;
};

}  // namespace keel::proxy::tcp
