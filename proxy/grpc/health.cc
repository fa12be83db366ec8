#include "proxy/grpc/health.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "api/errors.h"
#include "nlohmann/json.hpp"

namespace keel::proxy::grpcproxy {
namespace {

// etcd's proxy gives its health Get one second.
constexpr absl::Duration kCheckTimeout = absl::Seconds(1);
// How much longer than the deadline we wait for the backend to report it.
constexpr absl::Duration kGrace = absl::Milliseconds(500);

// Errors that prove the backend answered: the proxy's probe carries no
// identity, so with auth enabled etcd refuses it (spec/proxy.md 2.11, 3.5).
bool IsAuthError(const absl::Status& status) {
  std::optional<api::EtcdError> error = api::ParseEtcdError(status);
  if (!error.has_value()) return false;
  switch (*error) {
    case api::EtcdError::kPermissionDenied:
    case api::EtcdError::kUserEmpty:
    case api::EtcdError::kInvalidAuthToken:
    case api::EtcdError::kAuthOldRevision:
      return true;
    default:
      return false;
  }
}

// grpc-go's codes.Code.String().
const char* GoCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "Canceled";
    case absl::StatusCode::kUnknown:
      return "Unknown";
    case absl::StatusCode::kInvalidArgument:
      return "InvalidArgument";
    case absl::StatusCode::kDeadlineExceeded:
      return "DeadlineExceeded";
    case absl::StatusCode::kNotFound:
      return "NotFound";
    case absl::StatusCode::kAlreadyExists:
      return "AlreadyExists";
    case absl::StatusCode::kPermissionDenied:
      return "PermissionDenied";
    case absl::StatusCode::kResourceExhausted:
      return "ResourceExhausted";
    case absl::StatusCode::kFailedPrecondition:
      return "FailedPrecondition";
    case absl::StatusCode::kAborted:
      return "Aborted";
    case absl::StatusCode::kOutOfRange:
      return "OutOfRange";
    case absl::StatusCode::kUnimplemented:
      return "Unimplemented";
    case absl::StatusCode::kInternal:
      return "Internal";
    case absl::StatusCode::kUnavailable:
      return "Unavailable";
    case absl::StatusCode::kDataLoss:
      return "DataLoss";
    case absl::StatusCode::kUnauthenticated:
      return "Unauthenticated";
    default:
      return "Unknown";
  }
}

// The error as etcd's Go client prints it (clientv3's toErr, then Error()).
std::string GoClientError(const absl::Status& status) {
  if (api::ParseEtcdError(status).has_value()) return std::string(status.message());
  if (status.code() == absl::StatusCode::kDeadlineExceeded) return "context deadline exceeded";
  return absl::StrCat("rpc error: code = ", GoCodeName(status.code()),
                      " desc = ", status.message());
}

// {"health":...,"reason":...} as Go's encoding/json marshals it (HTML-safe
// escapes, invalid UTF-8 replaced).
std::string HealthJson(bool healthy, const std::string& reason) {
  nlohmann::ordered_json body;
  body["health"] = healthy ? "true" : "false";
  body["reason"] = reason;
  std::string text = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return absl::StrReplaceAll(text, {{"<", "\\u003c"},
                                    {">", "\\u003e"},
                                    {"&", "\\u0026"},
                                    {"\xe2\x80\xa8", "\\u2028"},
                                    {"\xe2\x80\xa9", "\\u2029"}});
}

// One probe's answer, shared with the Range callback, which may run after
// Handle() gave up waiting.
struct Probe {
  absl::Notification answered;
  absl::Status status;  // written before `answered` is notified
};

}  // namespace

// Counts the probes whose Range has not answered yet, so that the destructor
// can wait for them (the Backend must not be destroyed under a call).
struct HealthChecker::InFlight {
  absl::Mutex mu;
  int calls ABSL_GUARDED_BY(mu) = 0;
};

HealthChecker::HealthChecker(api::Backend& backend, common::MetricsRegistry* metrics)
    : backend_(backend), in_flight_(std::make_shared<InFlight>()) {
  if (metrics == nullptr) return;
  successes_ = metrics->GetCounter("etcd_server_health_success",
                                   "The total number of successful health checks");
  failures_ = metrics->GetCounter("etcd_server_health_failures",
                                  "The total number of failed health checks");
}

HealthChecker::~HealthChecker() {
  absl::MutexLock lock(&in_flight_->mu);
  auto idle = [this]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(in_flight_->mu) { return in_flight_->calls == 0; };
  in_flight_->mu.Await(absl::Condition(&idle));
}

common::HttpResponse HealthChecker::Handle(const common::HttpRequest& request) {
  common::HttpResponse response;
  if (request.method != "GET") {
    response.status = 405;
    response.body = "Method Not Allowed\n";
    return response;
  }

  api::CallContext ctx;
  ctx.deadline = absl::Now() + kCheckTimeout;
  etcdserverpb::RangeRequest range;
  range.set_key("a");
  auto probe = std::make_shared<Probe>();
  {
    absl::MutexLock lock(&in_flight_->mu);
    ++in_flight_->calls;
  }
  backend_.Range(
      ctx, std::move(range),
      [probe, in_flight = in_flight_](absl::StatusOr<etcdserverpb::RangeResponse> result) {
        probe->status = result.status();
        probe->answered.Notify();
        absl::MutexLock lock(&in_flight->mu);
        --in_flight->calls;
      });
  absl::Status status = absl::DeadlineExceededError("context deadline exceeded");
  if (probe->answered.WaitForNotificationWithDeadline(ctx.deadline + kGrace)) {
    status = probe->status;
  }

  if (status.ok() || IsAuthError(status)) {
    if (successes_ != nullptr) successes_->Increment();
    response.body = HealthJson(true, "");
    return response;
  }
  if (failures_ != nullptr) failures_->Increment();
  response.status = 503;
  response.body = HealthJson(false, absl::StrCat("GET ERROR:", GoClientError(status))) + "\n";
  return response;
}

}  // namespace keel::proxy::grpcproxy
