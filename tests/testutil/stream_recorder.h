#pragma once

// StreamRecorder: one bidirectional stream of an api::Backend that always
// asks for the next response (as the front and the coalescers do), recording
// the responses and the end, for tests that drive a Backend directly.
// EtcdGrpcMetric: a gRPC server metric of a real etcd, summed over a method.

#include <cstddef>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "common/http_server.h"
#include "gtest/gtest.h"

namespace keel::testutil {

template <class Request, class Response>
class StreamRecorder : public api::StreamObserver<Response> {
 public:
  // Generous: the box is a loaded 2-core VM.
  static constexpr absl::Duration kWait = absl::Seconds(60);

  // `open(this)` opens the stream (returns its handle).
  template <class Open>
  explicit StreamRecorder(Open open) {
    handle_ = open(this);
    handle_->ReadNext();
  }
  // Cancels the stream and waits for its OnDone.
  ~StreamRecorder() override {
    handle_->Cancel();
    EXPECT_TRUE(WaitDone().has_value()) << "OnDone did not come";
    handle_.reset();
  }

  api::BidiStream<Request>& stream() { return *handle_; }

  void OnResponse(Response response) override {
    {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(done_.has_value()) << "response after OnDone";
      responses_.push_back(std::move(response));
    }
    handle_->ReadNext();
  }
  void OnDone(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(done_.has_value()) << "OnDone ran twice";
    done_ = std::move(status);
  }

  // Response `i` (0-based), waiting for it; nullopt on timeout or if the
  // stream ended without it.
  std::optional<Response> Get(size_t i, absl::Duration wait = kWait) {
    absl::MutexLock lock(&mu_);
    auto ready = [this, i]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return responses_.size() > i || done_.has_value();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
    if (responses_.size() <= i) return std::nullopt;
    return responses_[i];
  }
  std::optional<absl::Status> WaitDone(absl::Duration wait = kWait) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
    return done_;
  }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return responses_.size();
  }

 private:
  std::unique_ptr<api::BidiStream<Request>> handle_;
  absl::Mutex mu_;
  std::vector<Response> responses_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
};

// The sum of etcd's `name{...grpc_method="<method>"...}` series at
// http://127.0.0.1:<port>/metrics; nullopt if it cannot be read.
inline std::optional<double> EtcdGrpcMetric(int port, const std::string& name,
                                            const std::string& method) {
  absl::StatusOr<common::HttpResponse> page =
      common::HttpGet(common::HostPort{"127.0.0.1", port}, "/metrics", absl::Seconds(10));
  if (!page.ok() || page->status != 200) return std::nullopt;
  std::istringstream lines(page->body);
  std::string line;
  double sum = 0;
  while (std::getline(lines, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    if (line.find("grpc_method=\"" + method + "\"") == std::string::npos) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

}  // namespace keel::testutil
