#pragma once

// Await: runs one unary api::Backend call and waits for its completion, for
// tests that drive a Backend directly.
//
//   absl::StatusOr<RangeResponse> r = testutil::Await<RangeResponse>(
//       [&](auto done) { backend.Range(ctx, request, std::move(done)); });

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace keel::testutil {

// `start` receives the Done callback to pass to the call. DeadlineExceeded
// if the call has not completed within `timeout` (generous by default: the
// box is a loaded 2-core VM).
template <class Response, class Start>
absl::StatusOr<Response> Await(Start start, absl::Duration timeout = absl::Seconds(60)) {
  struct Result {
    absl::Notification done;
    absl::StatusOr<Response> value = absl::UnknownError("unset");
  };
  auto result = std::make_shared<Result>();
  start([result](absl::StatusOr<Response> r) {
    result->value = std::move(r);
    result->done.Notify();
  });
  if (!result->done.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("test: call did not complete");
  }
  return result->value;
}

}  // namespace keel::testutil
