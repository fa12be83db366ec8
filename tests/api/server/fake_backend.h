#pragma once

// A scriptable Backend for the front's tests: records every call, answers
// unary calls through a test-set function (at once or when the test says),
// and gives the test each stream's state to drive responses and inspect what
// the front did (requests, WritesDone, ReadNext count, Cancel).

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "api/backend.h"
#include "google/protobuf/message.h"

namespace keel::api::server {

// The backend side of one fake stream. Responses pushed by the test are
// delivered one per ReadNext() credit, in order, then the final status.
// Thread-safe; the test keeps it through a shared_ptr, so it outlives the
// front's handle.
template <class Request, class Response>
class FakeStream : public std::enable_shared_from_this<FakeStream<Request, Response>> {
 public:
  FakeStream(CallContext ctx, StreamObserver<Response>* observer)
      : ctx_(std::move(ctx)), observer_(observer) {}

  // --- test side ---
  // Queues a response for the client.
  void Push(Response response) {
    {
      absl::MutexLock lock(&mu_);
      queue_.push_back(std::move(response));
    }
    Pump();
  }
  // Ends the stream with `status` once the queued responses are delivered.
  void Finish(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (!final_status_.has_value()) final_status_ = std::move(status);
    }
    Pump();
  }
  const CallContext& ctx() const { return ctx_; }
  std::vector<Request> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  int read_next_calls() {
    absl::MutexLock lock(&mu_);
    return read_next_calls_;
  }
  int delivered() {
    absl::MutexLock lock(&mu_);
    return delivered_;
  }
  bool writes_done() {
    absl::MutexLock lock(&mu_);
    return writes_done_;
  }
  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  // The front destroyed its handle (its reactor is gone).
  bool handle_destroyed() {
    absl::MutexLock lock(&mu_);
    return handle_destroyed_;
  }
  // The most responses ever asked for but not yet delivered at one time.
  int max_credit() {
    absl::MutexLock lock(&mu_);
    return max_credit_;
  }

  // --- handle side (called by the front through the handle) ---
  void Write(Request request) {
    absl::MutexLock lock(&mu_);
    requests_.push_back(std::move(request));
  }
  void WritesDone() {
    absl::MutexLock lock(&mu_);
    writes_done_ = true;
  }
  void ReadNext() {
    {
      absl::MutexLock lock(&mu_);
      ++read_next_calls_;
      ++credit_;
      if (credit_ > max_credit_) max_credit_ = credit_;
    }
    Pump();
  }
  void Cancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      queue_.clear();
      if (!final_status_.has_value()) final_status_ = absl::CancelledError("context canceled");
    }
    Pump();
  }
  void HandleDestroyed() {
    bool cancel;
    {
      absl::MutexLock lock(&mu_);
      handle_destroyed_ = true;
      cancel = !done_delivered_;
    }
    if (cancel) Cancel();
  }

 private:
  // Delivers what may be delivered. One thread delivers at a time, so
  // observer calls never overlap; OnDone is the very last thing it does.
  void Pump() {
    auto self = this->shared_from_this();
    mu_.Lock();
    if (pumping_ || done_delivered_) {
      mu_.Unlock();
      return;
    }
    pumping_ = true;
    while (true) {
      if (credit_ > 0 && !queue_.empty()) {
        Response response = std::move(queue_.front());
        queue_.pop_front();
        --credit_;
        ++delivered_;
        mu_.Unlock();
        observer_->OnResponse(std::move(response));
        mu_.Lock();
        continue;
      }
      if (queue_.empty() && final_status_.has_value()) {
        done_delivered_ = true;
        absl::Status status = *final_status_;
        mu_.Unlock();
        observer_->OnDone(std::move(status));
        return;
      }
      pumping_ = false;
      mu_.Unlock();
      return;
    }
  }

  const CallContext ctx_;
  StreamObserver<Response>* const observer_;
  absl::Mutex mu_;
  std::deque<Response> queue_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> final_status_ ABSL_GUARDED_BY(mu_);
  std::vector<Request> requests_ ABSL_GUARDED_BY(mu_);
  int credit_ ABSL_GUARDED_BY(mu_) = 0;
  int max_credit_ ABSL_GUARDED_BY(mu_) = 0;
  int read_next_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int delivered_ ABSL_GUARDED_BY(mu_) = 0;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool handle_destroyed_ ABSL_GUARDED_BY(mu_) = false;
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  bool done_delivered_ ABSL_GUARDED_BY(mu_) = false;
};

// The front's handle on a FakeStream, as a bidi stream.
template <class Request, class Response>
class FakeBidiHandle : public BidiStream<Request> {
 public:
  explicit FakeBidiHandle(std::shared_ptr<FakeStream<Request, Response>> stream)
      : stream_(std::move(stream)) {}
  ~FakeBidiHandle() override { stream_->HandleDestroyed(); }
  void ReadNext() override { stream_->ReadNext(); }
  void Cancel() override { stream_->Cancel(); }
  void Write(Request request) override { stream_->Write(std::move(request)); }
  void WritesDone() override { stream_->WritesDone(); }

 private:
  std::shared_ptr<FakeStream<Request, Response>> stream_;
};

// The front's handle on a FakeStream, as a server stream.
template <class Request, class Response>
class FakeReadHandle : public ReadStream {
 public:
  explicit FakeReadHandle(std::shared_ptr<FakeStream<Request, Response>> stream)
      : stream_(std::move(stream)) {}
  ~FakeReadHandle() override { stream_->HandleDestroyed(); }
  void ReadNext() override { stream_->ReadNext(); }
  void Cancel() override { stream_->Cancel(); }

 private:
  std::shared_ptr<FakeStream<Request, Response>> stream_;
};

using FakeWatch = FakeStream<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;
using FakeKeepAlive =
    FakeStream<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>;
using FakeSnapshot = FakeStream<etcdserverpb::SnapshotRequest, etcdserverpb::SnapshotResponse>;
using FakeObserve = FakeStream<v3electionpb::LeaderRequest, v3electionpb::LeaderResponse>;

// One unary call the fake received.
struct FakeUnaryCall {
  std::string method;
  CallContext ctx;
  std::shared_ptr<google::protobuf::Message> request;
};

// A Backend whose calls the test scripts and inspects. Thread-safe.
class FakeBackend : public Backend {
 public:
  // Answers a unary call: fills `response` and returns OK, or returns the
  // error the client should get.
  using Reply = std::function<absl::Status(const std::string& method,
                                           const google::protobuf::Message& request,
                                           google::protobuf::Message* response)>;

  // Replaces how unary calls are answered (default: OK, empty response).
  void SetReply(Reply reply) {
    absl::MutexLock lock(&mu_);
    reply_ = std::move(reply);
  }
  // When held, unary answers wait for CompleteHeld().
  void SetHold(bool hold) {
    absl::MutexLock lock(&mu_);
    hold_ = hold;
  }
  // Answers every held unary call now; returns how many.
  int CompleteHeld() {
    std::vector<absl::AnyInvocable<void() &&>> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& complete : held) std::move(complete)();
    return static_cast<int>(held.size());
  }
  std::vector<FakeUnaryCall> unary_calls() {
    absl::MutexLock lock(&mu_);
    return unary_calls_;
  }
  std::vector<std::shared_ptr<FakeWatch>> watches() {
    absl::MutexLock lock(&mu_);
    return watches_;
  }
  std::vector<std::shared_ptr<FakeKeepAlive>> keep_alives() {
    absl::MutexLock lock(&mu_);
    return keep_alives_;
  }
  std::vector<std::shared_ptr<FakeSnapshot>> snapshots() {
    absl::MutexLock lock(&mu_);
    return snapshots_;
  }
  std::vector<std::shared_ptr<FakeObserve>> observes() {
    absl::MutexLock lock(&mu_);
    return observes_;
  }

#define KEEL_FAKE_UNARY(service, method, Request, Response)                            \
  void method(const CallContext& ctx, Request request, Done<Response> done) override { \
    Unary<Request, Response>(#method, ctx, std::move(request), std::move(done));       \
  }
  KEEL_UNARY_METHODS(KEEL_FAKE_UNARY)
#undef KEEL_FAKE_UNARY

  std::unique_ptr<WatchStream> Watch(
      const CallContext& ctx, StreamObserver<etcdserverpb::WatchResponse>* observer) override {
    auto stream = std::make_shared<FakeWatch>(ctx, observer);
    {
      absl::MutexLock lock(&mu_);
      watches_.push_back(stream);
    }
    return std::make_unique<
        FakeBidiHandle<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>>(stream);
  }
  std::unique_ptr<LeaseKeepAliveStream> LeaseKeepAlive(
      const CallContext& ctx,
      StreamObserver<etcdserverpb::LeaseKeepAliveResponse>* observer) override {
    auto stream = std::make_shared<FakeKeepAlive>(ctx, observer);
    {
      absl::MutexLock lock(&mu_);
      keep_alives_.push_back(stream);
    }
    return std::make_unique<
        FakeBidiHandle<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>>(
        stream);
  }
  std::unique_ptr<ReadStream> Snapshot(
      const CallContext& ctx, etcdserverpb::SnapshotRequest request,
      StreamObserver<etcdserverpb::SnapshotResponse>* observer) override {
    auto stream = std::make_shared<FakeSnapshot>(ctx, observer);
    stream->Write(std::move(request));
    {
      absl::MutexLock lock(&mu_);
      snapshots_.push_back(stream);
    }
    return std::make_unique<
        FakeReadHandle<etcdserverpb::SnapshotRequest, etcdserverpb::SnapshotResponse>>(stream);
  }
  std::unique_ptr<ReadStream> Observe(
      const CallContext& ctx, v3electionpb::LeaderRequest request,
      StreamObserver<v3electionpb::LeaderResponse>* observer) override {
    auto stream = std::make_shared<FakeObserve>(ctx, observer);
    stream->Write(std::move(request));
    {
      absl::MutexLock lock(&mu_);
      observes_.push_back(stream);
    }
    return std::make_unique<
        FakeReadHandle<v3electionpb::LeaderRequest, v3electionpb::LeaderResponse>>(stream);
  }

 private:
  template <class Request, class Response>
  void Unary(const char* method, const CallContext& ctx, Request request, Done<Response> done) {
    auto shared = std::make_shared<Request>(std::move(request));
    Reply reply;
    bool hold;
    {
      absl::MutexLock lock(&mu_);
      unary_calls_.push_back({method, ctx, shared});
      reply = reply_;
      hold = hold_;
    }
    absl::AnyInvocable<void()&&> complete = [reply = std::move(reply), name = std::string(method),
                                             shared, done = std::move(done)]() mutable {
      Response response;
      absl::Status status = reply ? reply(name, *shared, &response) : absl::OkStatus();
      if (status.ok()) {
        std::move(done)(std::move(response));
      } else {
        std::move(done)(std::move(status));
      }
    };
    if (!hold) {
      std::move(complete)();
      return;
    }
    absl::MutexLock lock(&mu_);
    held_.push_back(std::move(complete));
  }

  absl::Mutex mu_;
  Reply reply_ ABSL_GUARDED_BY(mu_);
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<absl::AnyInvocable<void() &&>> held_ ABSL_GUARDED_BY(mu_);
  std::vector<FakeUnaryCall> unary_calls_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeWatch>> watches_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeKeepAlive>> keep_alives_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeSnapshot>> snapshots_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeObserve>> observes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::api::server
