#pragma once

// FakeBackend: an api::Backend for unit tests of the layers above a Backend
// (api/server, namespace/, cache/, coalesce/). It records every call and lets
// the test answer it later, in any order, from any thread.
//
// Unary calls:
//   keel::testutil::FakeBackend fake;
//   layer_over(fake).Range(ctx, req, done);
//   ASSERT_TRUE(fake.WaitForUnaryCalls(1, absl::Seconds(30)));
//   EXPECT_EQ(fake.Method(0), "Range");
//   auto seen = fake.Request<etcdserverpb::RangeRequest>(0);
//   fake.Reply(0, range_response);            // or fake.Fail(0, status)
//
// Streams (Watch, LeaseKeepAlive, Snapshot, Observe):
//   auto handle = layer_over(fake).Watch(ctx, &observer);
//   std::shared_ptr<FakeWatch> w = fake.watch(0);
//   handle->Write(create);   ->  w->Requests()
//   w->Push(watch_response); ->  observer.OnResponse once the caller has a ReadNext credit
//   w->Finish(status);       ->  observer.OnDone after the pushed responses are delivered
//
// Misuse (wrong index, wrong response type, replying twice) is reported as a
// GoogleTest failure (ADD_FAILURE), never a crash.

#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "gtest/gtest.h"

namespace keel::testutil {

// The test's side of one fake stream. For Watch and LeaseKeepAlive, Request is
// what the caller Write()s; for Snapshot and Observe, the request the stream
// was opened with is Requests()[0]. Thread-safe; observer callbacks run on the
// thread of the call that made them deliverable (Push, Finish, ReadNext,
// Cancel, handle destruction), never under the lock, never overlapping, in
// order, OnDone exactly once.
template <class Request, class Response>
class FakeStream : public std::enable_shared_from_this<FakeStream<Request, Response>> {
 public:
  // Created by FakeBackend; tests get it from FakeBackend::watch() and friends.
  FakeStream(api::CallContext ctx, api::StreamObserver<Response>* observer)
      : ctx_(std::move(ctx)), observer_(observer) {}

  // The CallContext the stream was opened with.
  const api::CallContext& ctx() const { return ctx_; }

  // Copies of the requests received so far, in order.
  std::vector<Request> Requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  // True once at least `n` requests were received; false after `timeout`.
  bool WaitForRequests(size_t n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto ready = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return requests_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }

  // Queues one response; the observer gets it when the caller has a ReadNext
  // credit. Dropped once the stream is finished, cancelled or done.
  void Push(Response response) {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_ || done_delivered_ || finish_.has_value()) return;
      queue_.push_back(std::move(response));
    }
    Pump();
  }
  // Ends the stream with `status` (OK = clean end): OnDone runs once every
  // response pushed before has been delivered. Later calls are ignored.
  void Finish(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_.has_value()) return;
      finish_ = std::move(status);
    }
    Pump();
  }

  // ReadNext credits the caller granted and no response has used yet.
  int credits() const {
    absl::MutexLock lock(&mu_);
    return credits_;
  }
  // The most ReadNext credits ever outstanding at once (granted and not yet
  // used by a response): lets a test bound how far ahead of its consumer a
  // caller reads, e.g. "never more than one response in flight" is
  // max_credits() <= 1.
  int max_credits() const {
    absl::MutexLock lock(&mu_);
    return max_credits_;
  }
  // True once the caller called ReadNext at least `n` times in total.
  bool WaitForReadNext(int n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto ready = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return read_next_calls_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  // Responses pushed but not yet delivered.
  size_t queued() const {
    absl::MutexLock lock(&mu_);
    return queue_.size();
  }
  // The caller half-closed (WritesDone).
  bool writes_done() const {
    absl::MutexLock lock(&mu_);
    return writes_done_;
  }
  // The caller cancelled (Cancel or destroying the handle before OnDone).
  bool cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  // The caller destroyed its handle.
  bool handle_released() const {
    absl::MutexLock lock(&mu_);
    return handle_released_;
  }
  // The observer's OnDone has returned.
  bool done() const {
    absl::MutexLock lock(&mu_);
    return done_returned_;
  }
  // True once the stream was cancelled by the caller; false after `timeout`.
  bool WaitForCancel(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&cancelled_), timeout);
  }
  // True once OnDone has returned; false after `timeout`.
  bool WaitForDone(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_returned_), timeout);
  }

  // Handle side (called by the handles FakeBackend returns).
  void HandleWrite(Request request) {
    absl::MutexLock lock(&mu_);
    requests_.push_back(std::move(request));
  }
  void HandleWritesDone() {
    absl::MutexLock lock(&mu_);
    writes_done_ = true;
  }
  void HandleReadNext() {
    {
      absl::MutexLock lock(&mu_);
      ++credits_;
      if (credits_ > max_credits_) max_credits_ = credits_;
      ++read_next_calls_;
    }
    Pump();
  }
  void HandleCancel() {
    {
      absl::MutexLock lock(&mu_);
      if (done_delivered_) return;
      cancelled_ = true;
    }
    Pump();
  }
  void HandleReleased() {
    {
      absl::MutexLock lock(&mu_);
      handle_released_ = true;
    }
    HandleCancel();
  }

 private:
  // Delivers whatever is deliverable. One thread delivers at a time; a call
  // made while another delivers (e.g. ReadNext from inside OnResponse) only
  // updates the state and the delivering thread picks it up.
  void Pump() {
    {
      absl::MutexLock lock(&mu_);
      if (delivering_) return;
      delivering_ = true;
    }
    while (true) {
      std::optional<Response> response;
      std::optional<absl::Status> status;
      {
        absl::MutexLock lock(&mu_);
        if (done_delivered_) {
          delivering_ = false;
          return;
        }
        if (cancelled_) {
          queue_.clear();
          status = finish_.value_or(absl::CancelledError("stream cancelled"));
        } else if (credits_ > 0 && !queue_.empty()) {
          response = std::move(queue_.front());
          queue_.pop_front();
          --credits_;
        } else if (queue_.empty() && finish_.has_value()) {
          status = *finish_;
        } else {
          delivering_ = false;
          return;
        }
        if (status.has_value()) {
          done_delivered_ = true;
          delivering_ = false;
        }
      }
      if (response.has_value()) {
        observer_->OnResponse(std::move(*response));
        continue;
      }
      // Keep this alive through OnDone even if the test drops its reference.
      auto self = this->shared_from_this();
      observer_->OnDone(std::move(*status));
      absl::MutexLock lock(&mu_);
      done_returned_ = true;
      return;
    }
  }

  const api::CallContext ctx_;
  api::StreamObserver<Response>* const observer_;
  mutable absl::Mutex mu_;
  std::vector<Request> requests_ ABSL_GUARDED_BY(mu_);
  std::deque<Response> queue_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> finish_ ABSL_GUARDED_BY(mu_);
  int credits_ ABSL_GUARDED_BY(mu_) = 0;
  int max_credits_ ABSL_GUARDED_BY(mu_) = 0;
  int read_next_calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool handle_released_ ABSL_GUARDED_BY(mu_) = false;
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  bool done_delivered_ ABSL_GUARDED_BY(mu_) = false;
  bool done_returned_ ABSL_GUARDED_BY(mu_) = false;
};

using FakeWatch = FakeStream<::etcdserverpb::WatchRequest, ::etcdserverpb::WatchResponse>;
using FakeKeepAlive =
    FakeStream<::etcdserverpb::LeaseKeepAliveRequest, ::etcdserverpb::LeaseKeepAliveResponse>;
using FakeSnapshot = FakeStream<::etcdserverpb::SnapshotRequest, ::etcdserverpb::SnapshotResponse>;
using FakeObserve = FakeStream<::v3electionpb::LeaderRequest, ::v3electionpb::LeaderResponse>;

namespace fake_backend_internal {

// The caller's handle on a fake server-streaming call.
template <class Request, class Response>
class ReadHandle final : public api::ReadStream {
 public:
  explicit ReadHandle(std::shared_ptr<FakeStream<Request, Response>> s) : s_(std::move(s)) {}
  ~ReadHandle() override { s_->HandleReleased(); }
  void ReadNext() override { s_->HandleReadNext(); }
  void Cancel() override { s_->HandleCancel(); }

 private:
  std::shared_ptr<FakeStream<Request, Response>> s_;
};

// The caller's handle on a fake bidirectional stream.
template <class Request, class Response>
class BidiHandle final : public api::BidiStream<Request> {
 public:
  explicit BidiHandle(std::shared_ptr<FakeStream<Request, Response>> s) : s_(std::move(s)) {}
  ~BidiHandle() override { s_->HandleReleased(); }
  void ReadNext() override { s_->HandleReadNext(); }
  void Cancel() override { s_->HandleCancel(); }
  void Write(Request request) override { s_->HandleWrite(std::move(request)); }
  void WritesDone() override { s_->HandleWritesDone(); }

 private:
  std::shared_ptr<FakeStream<Request, Response>> s_;
};

}  // namespace fake_backend_internal

// A recording api::Backend. Thread-safe: calls may arrive on any thread and
// the test may reply from any thread. Done callbacks and observer callbacks
// run on the thread of the test call that completes them (Reply, Fail,
// Push...), or inside the Backend call itself for auto-replies; never under
// the fake's lock. Calls still pending when the fake is destroyed are dropped
// (their Done is destroyed without running): complete them (FailAllPending)
// first if the caller needs its callback.
class FakeBackend final : public api::Backend {
 public:
  // One recorded unary call.
  struct UnaryCall {
    std::string method;  // the RPC name, e.g. "Range", "LeaseGrant", "Campaign"
    api::CallContext ctx;
    std::shared_ptr<const google::protobuf::Message> request;  // a copy of what was sent
    bool completed = false;                                    // Reply/Fail already ran
    std::thread::id thread;                                    // the thread that called
  };

  FakeBackend() = default;
  FakeBackend(const FakeBackend&) = delete;
  FakeBackend& operator=(const FakeBackend&) = delete;

  // ----- Unary calls -----

  // Number of unary calls received so far.
  size_t unary_count() const {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }
  // True once at least `n` unary calls were received; false after `timeout`.
  bool WaitForUnaryCalls(size_t n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto ready = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return calls_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  // A copy of call `i` (0-based, in arrival order); empty method if no such call.
  UnaryCall Call(size_t i) const {
    absl::MutexLock lock(&mu_);
    if (i >= calls_.size()) {
      ADD_FAILURE() << "FakeBackend: no unary call #" << i << " (have " << calls_.size() << ")";
      return UnaryCall{};
    }
    const Pending& p = calls_[i];
    return UnaryCall{p.method, p.ctx, p.request, !p.complete, p.thread};
  }
  // The method name of call `i` ("" if no such call).
  std::string Method(size_t i) const { return Call(i).method; }
  // Method names of every call so far, in order.
  std::vector<std::string> Methods() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const Pending& p : calls_) out.push_back(p.method);
    return out;
  }
  // Indices of the calls to `method`, in order.
  std::vector<size_t> CallsTo(std::string_view method) const {
    absl::MutexLock lock(&mu_);
    std::vector<size_t> out;
    for (size_t i = 0; i < calls_.size(); ++i) {
      if (calls_[i].method == method) out.push_back(i);
    }
    return out;
  }
  // The request of call `i` as its concrete type, e.g.
  // Request<etcdserverpb::RangeRequest>(0). A default message (and a test
  // failure) on a wrong index or type.
  template <class RequestT>
  RequestT Request(size_t i) const {
    UnaryCall call = Call(i);
    RequestT out;
    if (call.request == nullptr) return out;
    if (call.request->GetDescriptor() != RequestT::descriptor()) {
      ADD_FAILURE() << "FakeBackend: call #" << i << " (" << call.method << ") carries a "
                    << call.request->GetDescriptor()->full_name() << ", not a "
                    << RequestT::descriptor()->full_name();
      return out;
    }
    out.CopyFrom(*call.request);
    return out;
  }

  // Completes call `i` with `response`, which must be the method's response
  // type. Runs its Done on this thread.
  void Reply(size_t i, const google::protobuf::Message& response) {
    Completer completer = Take(i, response.GetDescriptor());
    if (completer) std::move(completer)(&response, absl::OkStatus());
  }
  // Completes call `i` with the error `status` (REQUIRES: !status.ok()).
  void Fail(size_t i, absl::Status status) {
    if (status.ok()) {
      ADD_FAILURE() << "FakeBackend: Fail with an OK status";
      return;
    }
    Completer completer = Take(i, nullptr);
    if (completer) std::move(completer)(nullptr, std::move(status));
  }
  // Fails every call not yet completed with `status`, in arrival order.
  void FailAllPending(absl::Status status) {
    std::vector<Completer> todo;
    {
      absl::MutexLock lock(&mu_);
      for (Pending& p : calls_) {
        if (p.complete) todo.push_back(std::move(p.complete));
        p.complete = nullptr;
      }
    }
    for (Completer& c : todo) std::move(c)(nullptr, status);
  }

  // From now on, calls to `method` are recorded and answered at once (inside
  // the Backend call) with a copy of `response`.
  void SetAutoReply(std::string method, const google::protobuf::Message& response) {
    std::shared_ptr<google::protobuf::Message> copy(response.New());
    copy->CopyFrom(response);
    absl::MutexLock lock(&mu_);
    auto_[std::move(method)] = AutoAnswer{std::move(copy), absl::OkStatus()};
  }
  // From now on, calls to `method` are recorded and failed at once with `status`.
  void SetAutoFail(std::string method, absl::Status status) {
    absl::MutexLock lock(&mu_);
    auto_[std::move(method)] = AutoAnswer{nullptr, std::move(status)};
  }
  // Calls to `method` wait for Reply/Fail again.
  void ClearAuto(std::string_view method) {
    absl::MutexLock lock(&mu_);
    if (auto it = auto_.find(method); it != auto_.end()) auto_.erase(it);
  }

  // ----- Streams -----

  // Streams opened so far, by kind, in order; stream `i` of a kind (nullptr
  // and a test failure if there is none).
  size_t watch_count() const { return Count(&FakeBackend::watches_); }
  size_t keepalive_count() const { return Count(&FakeBackend::keepalives_); }
  size_t snapshot_count() const { return Count(&FakeBackend::snapshots_); }
  size_t observe_count() const { return Count(&FakeBackend::observes_); }
  std::shared_ptr<FakeWatch> watch(size_t i) const { return At(&FakeBackend::watches_, i); }
  std::shared_ptr<FakeKeepAlive> keepalive(size_t i) const {
    return At(&FakeBackend::keepalives_, i);
  }
  std::shared_ptr<FakeSnapshot> snapshot(size_t i) const { return At(&FakeBackend::snapshots_, i); }
  std::shared_ptr<FakeObserve> observe(size_t i) const { return At(&FakeBackend::observes_, i); }
  // True once at least `n` streams of the kind were opened; false after `timeout`.
  bool WaitForWatches(size_t n, absl::Duration t) const {
    return WaitCount(&FakeBackend::watches_, n, t);
  }
  bool WaitForKeepAlives(size_t n, absl::Duration t) const {
    return WaitCount(&FakeBackend::keepalives_, n, t);
  }
  bool WaitForSnapshots(size_t n, absl::Duration t) const {
    return WaitCount(&FakeBackend::snapshots_, n, t);
  }
  bool WaitForObserves(size_t n, absl::Duration t) const {
    return WaitCount(&FakeBackend::observes_, n, t);
  }

  // Finish(status) on every stream opened so far (see FakeStream::Finish),
  // e.g. to let a server's reactors end before the test tears it down.
  void FinishAllStreams(const absl::Status& status) {
    std::vector<std::shared_ptr<FakeWatch>> watches;
    std::vector<std::shared_ptr<FakeKeepAlive>> keepalives;
    std::vector<std::shared_ptr<FakeSnapshot>> snapshots;
    std::vector<std::shared_ptr<FakeObserve>> observes;
    {
      absl::MutexLock lock(&mu_);
      watches = watches_;
      keepalives = keepalives_;
      snapshots = snapshots_;
      observes = observes_;
    }
    for (auto& s : watches) s->Finish(status);
    for (auto& s : keepalives) s->Finish(status);
    for (auto& s : snapshots) s->Finish(status);
    for (auto& s : observes) s->Finish(status);
  }

  // ----- api::Backend -----

#define KEEL_FAKE_BACKEND_UNARY(service, method, RequestType, ResponseType)                   \
  void method(const api::CallContext& ctx, RequestType request, api::Done<ResponseType> done) \
      override {                                                                              \
    Record(#method, ctx, std::make_shared<RequestType>(std::move(request)),                   \
           ResponseType::descriptor(), MakeCompleter<ResponseType>(std::move(done)));         \
  }
  KEEL_UNARY_METHODS(KEEL_FAKE_BACKEND_UNARY)
#undef KEEL_FAKE_BACKEND_UNARY

  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override {
    auto s = std::make_shared<FakeWatch>(ctx, observer);
    Add(&FakeBackend::watches_, s);
    return std::make_unique<fake_backend_internal::BidiHandle<::etcdserverpb::WatchRequest,
                                                              ::etcdserverpb::WatchResponse>>(s);
  }
  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override {
    auto s = std::make_shared<FakeKeepAlive>(ctx, observer);
    Add(&FakeBackend::keepalives_, s);
    return std::make_unique<fake_backend_internal::BidiHandle<
        ::etcdserverpb::LeaseKeepAliveRequest, ::etcdserverpb::LeaseKeepAliveResponse>>(s);
  }
  std::unique_ptr<api::ReadStream> Snapshot(
      const api::CallContext& ctx, ::etcdserverpb::SnapshotRequest request,
      api::StreamObserver<::etcdserverpb::SnapshotResponse>* observer) override {
    auto s = std::make_shared<FakeSnapshot>(ctx, observer);
    s->HandleWrite(std::move(request));
    Add(&FakeBackend::snapshots_, s);
    return std::make_unique<fake_backend_internal::ReadHandle<::etcdserverpb::SnapshotRequest,
                                                              ::etcdserverpb::SnapshotResponse>>(s);
  }
  std::unique_ptr<api::ReadStream> Observe(
      const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
      api::StreamObserver<::v3electionpb::LeaderResponse>* observer) override {
    auto s = std::make_shared<FakeObserve>(ctx, observer);
    s->HandleWrite(std::move(request));
    Add(&FakeBackend::observes_, s);
    return std::make_unique<fake_backend_internal::ReadHandle<::v3electionpb::LeaderRequest,
                                                              ::v3electionpb::LeaderResponse>>(s);
  }

 private:
  // Runs a stored Done with a response (non-null) or an error.
  using Completer =
      absl::AnyInvocable<void(const google::protobuf::Message* response, absl::Status error) &&>;

  struct Pending {
    std::string method;
    api::CallContext ctx;
    std::shared_ptr<const google::protobuf::Message> request;
    const google::protobuf::Descriptor* response_type = nullptr;
    Completer complete;  // empty once completed
    std::thread::id thread;
  };
  struct AutoAnswer {
    std::shared_ptr<const google::protobuf::Message> response;  // null: fail with `error`
    absl::Status error;
  };

  template <class ResponseT>
  static Completer MakeCompleter(api::Done<ResponseT> done) {
    return [done = std::move(done)](const google::protobuf::Message* response,
                                    absl::Status error) mutable {
      if (response == nullptr) {
        std::move(done)(std::move(error));
        return;
      }
      ResponseT typed;
      typed.CopyFrom(*response);
      std::move(done)(std::move(typed));
    };
  }

  void Record(std::string method, const api::CallContext& ctx,
              std::shared_ptr<const google::protobuf::Message> request,
              const google::protobuf::Descriptor* response_type, Completer complete) {
    std::optional<AutoAnswer> answer;
    {
      absl::MutexLock lock(&mu_);
      auto it = auto_.find(method);
      if (it != auto_.end()) answer = it->second;
      Pending p{std::move(method), ctx, std::move(request), response_type, nullptr,
                std::this_thread::get_id()};
      if (!answer.has_value()) p.complete = std::move(complete);
      calls_.push_back(std::move(p));
    }
    if (!answer.has_value()) return;
    if (answer->response != nullptr && answer->response->GetDescriptor() != response_type) {
      ADD_FAILURE() << "FakeBackend: auto reply of type "
                    << answer->response->GetDescriptor()->full_name() << " for a call answering "
                    << response_type->full_name();
      std::move(complete)(nullptr, absl::InternalError("FakeBackend: wrong auto reply type"));
      return;
    }
    std::move(complete)(answer->response.get(), answer->error);
  }

  // Takes call `i`'s completer after checking `response_type` (null: an error).
  Completer Take(size_t i, const google::protobuf::Descriptor* response_type) {
    absl::MutexLock lock(&mu_);
    if (i >= calls_.size()) {
      ADD_FAILURE() << "FakeBackend: no unary call #" << i << " (have " << calls_.size() << ")";
      return nullptr;
    }
    Pending& p = calls_[i];
    if (!p.complete) {
      ADD_FAILURE() << "FakeBackend: call #" << i << " (" << p.method << ") already completed";
      return nullptr;
    }
    if (response_type != nullptr && response_type != p.response_type) {
      ADD_FAILURE() << "FakeBackend: call #" << i << " (" << p.method << ") answers a "
                    << p.response_type->full_name() << ", not a " << response_type->full_name();
      return nullptr;
    }
    Completer c = std::move(p.complete);
    p.complete = nullptr;
    return c;
  }

  // The stream lists, named by member pointer so that they are only touched
  // under mu_.
  template <class S>
  using StreamList = std::vector<std::shared_ptr<S>> FakeBackend::*;

  template <class S>
  void Add(StreamList<S> list, std::shared_ptr<S> s) {
    absl::MutexLock lock(&mu_);
    (this->*list).push_back(std::move(s));
  }
  template <class S>
  size_t Count(StreamList<S> list) const {
    absl::MutexLock lock(&mu_);
    return (this->*list).size();
  }
  template <class S>
  std::shared_ptr<S> At(StreamList<S> list, size_t i) const {
    absl::MutexLock lock(&mu_);
    if (i >= (this->*list).size()) {
      ADD_FAILURE() << "FakeBackend: no stream #" << i << " (have " << (this->*list).size() << ")";
      return nullptr;
    }
    return (this->*list)[i];
  }
  template <class S>
  bool WaitCount(StreamList<S> list, size_t n, absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto ready = [this, list, n]()
                     ABSL_SHARED_LOCKS_REQUIRED(mu_) { return (this->*list).size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }

  mutable absl::Mutex mu_;
  std::deque<Pending> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AutoAnswer, std::less<>> auto_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeWatch>> watches_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeKeepAlive>> keepalives_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeSnapshot>> snapshots_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<FakeObserve>> observes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::testutil
