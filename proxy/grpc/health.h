#pragma once

// GET /health of the grpc-proxy (spec/proxy.md 2.13): is the backend behind
// the proxy answering?

#include <memory>

#include "api/backend.h"
#include "common/http_server.h"
#include "common/metrics.h"

namespace keel::proxy::grpcproxy {

// Answers /health by reading key "a" through the proxy's Backend chain (so
// the namespace applies, as in etcd). Thread-safe; `backend` and `metrics`
// must outlive this object.
class HealthChecker {
 public:
  // `metrics` optional: etcd_server_health_success / etcd_server_health_failures counters.
  HealthChecker(api::Backend& backend, common::MetricsRegistry* metrics);
  // Waits until every probe's Range has answered (a probe given up after its
  // deadline may still be in flight), so `backend` may be destroyed next.
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Blocking (runs on the HTTP server's thread): GET only (else 405 "Method Not Allowed");
  // a linearizable Range of key "a" with a 1 s deadline; OK or an auth error (permission denied,
  // user name empty, invalid auth token — anything proving the backend answered; also
  // the auth store revision is old) → 200
  // {"health":"true","reason":""}; otherwise 503 {"health":"false","reason":"GET ERROR:<msg>"}.
  // <msg> is what etcd's Go client prints for the error: etcd's message for
  // an etcd error, "context deadline exceeded" when the deadline passed, else
  // "rpc error: code = <Code> desc = <message>". Bodies as Go's net/http
  // writes them (a 503 or 405 body ends with a newline). Each GET counts one
  // success or one failure in the metrics.
  common::HttpResponse Handle(const common::HttpRequest& request);

 private:
  struct InFlight;

  api::Backend& backend_;
  std::shared_ptr<InFlight> in_flight_;   // shared with the Range callbacks
  common::Counter* successes_ = nullptr;  // null without metrics
  common::Counter* failures_ = nullptr;
};

}  // namespace keel::proxy::grpcproxy
