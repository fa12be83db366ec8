#pragma once

// Internal to RemoteBackend: one logical stream (Watch, LeaseKeepAlive,
// Snapshot, Observe) over gRPC callback reactors, with the Backend stream
// contract of api/backend.h (queued writes, pull reads, cancel, one OnDone)
// and reopening on the next endpoint while nothing has been received.
//
// Lifetimes. RemoteStreamState is shared by the caller's handle and by the
// reactor of the current attempt (RemoteBidiAttempt / RemoteReadAttempt, one
// per endpoint tried, deleted in its gRPC OnDone). Each attempt holds a gRPC
// hold from StartCall until the state decides it will start no more
// operations on it, so a Start*/TryCancel made outside the lock can never
// race with the reactor's OnDone; `callouts_` counts such calls in progress
// and the hold is released by whoever finishes the last one.

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "api/backend.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/client_callback.h"
#include "grpcpp/support/status.h"
#include "proxy/grpc/remote_endpoints.h"

namespace keel::proxy::grpcproxy {

template <class Req, class Resp, bool kBidi>
class RemoteStreamState;

// One attempt of a bidirectional stream on one endpoint. Self-deleting.
template <class Req, class Resp>
class RemoteBidiAttempt final : public ::grpc::ClientBidiReactor<Req, Resp> {
 public:
  using State = RemoteStreamState<Req, Resp, true>;
  RemoteBidiAttempt(std::shared_ptr<State> state, size_t endpoint)
      : state_(std::move(state)), endpoint_(endpoint) {}

  void OnReadDone(bool ok) override { state_->OnReadDone(this, ok); }
  void OnWriteDone(bool ok) override { state_->OnWriteDone(ok); }
  void OnWritesDoneDone(bool ok) override { state_->OnWritesDoneDone(ok); }
  void OnDone(const ::grpc::Status& status) override {
    // gRPC is done with the reactor: free it (and the ClientContext's
    // channel reference) before the caller hears of the end, see
    // RemoteStreamState::OnAttemptDone.
    std::shared_ptr<State> state = std::move(state_);
    const ::grpc::Status final_status = status;
    const size_t endpoint = endpoint_;
    delete this;
    state->OnAttemptDone(endpoint, final_status);
  }

  size_t endpoint() const { return endpoint_; }
  ::grpc::ClientContext context;
  Resp response;  // target of the read in flight
  Req message;    // the write in flight (valid until OnWriteDone)

 private:
  std::shared_ptr<State> state_;
  const size_t endpoint_;
};

// One attempt of a server-streaming call on one endpoint. Self-deleting.
template <class Req, class Resp>
class RemoteReadAttempt final : public ::grpc::ClientReadReactor<Resp> {
 public:
  using State = RemoteStreamState<Req, Resp, false>;
  RemoteReadAttempt(std::shared_ptr<State> state, size_t endpoint)
      : state_(std::move(state)), endpoint_(endpoint) {}

  void OnReadDone(bool ok) override { state_->OnReadDone(this, ok); }
  void OnDone(const ::grpc::Status& status) override {
    // gRPC is done with the reactor: free it (and the ClientContext's
    // channel reference) before the caller hears of the end, see
    // RemoteStreamState::OnAttemptDone.
    std::shared_ptr<State> state = std::move(state_);
    const ::grpc::Status final_status = status;
    const size_t endpoint = endpoint_;
    delete this;
    state->OnAttemptDone(endpoint, final_status);
  }

  size_t endpoint() const { return endpoint_; }
  ::grpc::ClientContext context;
  Resp response;  // target of the read in flight
  Req message;    // the request (valid for the whole call)

 private:
  std::shared_ptr<State> state_;
  const size_t endpoint_;
};

// The state of one logical stream. Thread-safe; never calls out (gRPC or
// the observer) while holding mu_.
template <class Req, class Resp, bool kBidi>
class RemoteStreamState : public std::enable_shared_from_this<RemoteStreamState<Req, Resp, kBidi>> {
 public:
  using Attempt =
      std::conditional_t<kBidi, RemoteBidiAttempt<Req, Resp>, RemoteReadAttempt<Req, Resp>>;
  // Binds `attempt` to a new call of the stream's method on endpoint `i`.
  using Opener = void (*)(RemoteEndpoints& endpoints, size_t i, Attempt* attempt);

  // `endpoints` must outlive the stream; `observer` until its OnDone.
  // `request` is the request of a server-streaming call (unused for bidi).
  RemoteStreamState(RemoteEndpoints& endpoints, const api::CallContext& ctx,
                    api::StreamObserver<Resp>* observer, Opener open, Req request)
      : endpoints_(endpoints),
        ctx_(ctx),
        observer_(observer),
        open_(open),
        request_(std::move(request)) {}

  // Opens the first attempt on the preferred endpoint. Call once, after
  // construction (it needs shared_from_this).
  void Start() {
    size_t first;
    {
      absl::MutexLock lock(&mu_);
      first_ = endpoints_.preferred();
      tries_ = 1;
      first = first_;
    }
    StartAttempt(first);
  }

  // The caller's handle.
  void ReadNext() {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      if (done_) return;
      ++credits_;
      act = DecideLocked();
    }
    Run(act);
  }
  void Cancel() {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || cancelled_) return;
      cancelled_ = true;
      act = DecideLocked();
    }
    Run(act);
  }
  void Write(Req request) {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || cancelled_ || writes_done_requested_) return;
      // Kept for a replay on another endpoint until etcd has answered.
      if (!got_response_) history_.push_back(request);
      queue_.push_back(std::move(request));
      act = DecideLocked();
    }
    Run(act);
  }
  void WritesDone() {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || cancelled_ || writes_done_requested_) return;
      writes_done_requested_ = true;
      act = DecideLocked();
    }
    Run(act);
  }

  // Reactions of the current attempt.
  void OnReadDone(Attempt* attempt, bool ok) {
    Actions act;
    std::optional<Resp> response;
    bool first_response = false;
    {
      absl::MutexLock lock(&mu_);
      read_in_flight_ = false;
      if (!ok) {
        attempt_finished_ = true;
      } else if (!cancelled_) {
        --credits_;
        first_response = !got_response_;
        got_response_ = true;
        history_.clear();
        in_on_response_ = true;
        response.emplace(std::move(attempt->response));
      }
      if (!response.has_value()) act = DecideLocked();
    }
    if (response.has_value()) {
      if (first_response) endpoints_.MarkAnswered(attempt->endpoint());
      observer_->OnResponse(std::move(*response));
      absl::MutexLock lock(&mu_);
      in_on_response_ = false;
      act = DecideLocked();
    }
    Run(act);
  }
  void OnWriteDone(bool ok) {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (!ok) attempt_finished_ = true;
      act = DecideLocked();
    }
    Run(act);
  }
  void OnWritesDoneDone(bool ok) {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      if (!ok) attempt_finished_ = true;
      act = DecideLocked();
    }
    Run(act);
  }
  // The attempt on `endpoint` ended (its reactor is already deleted):
  // reopen elsewhere or end the stream. The reactor goes first because its
  // ClientContext holds a grpc::Channel reference: were it the last one
  // (the caller destroys the backend right after OnDone), the channel would
  // be destroyed on gRPC's callback thread, which gRPC 1.51 cannot do
  // (it joins that very thread).
  void OnAttemptDone(size_t endpoint, const ::grpc::Status& status) {
    const AttemptFailure failure = ClassifyAttempt(status);
    std::optional<size_t> next;
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      attempt_ = nullptr;
      cancelled = cancelled_;
      if (!got_response_ && !cancelled_ && failure != AttemptFailure::kNone &&
          tries_ < endpoints_.size()) {
        next = (first_ + tries_) % endpoints_.size();
        ++tries_;
      } else {
        done_ = true;
      }
    }
    if (next.has_value()) {
      StartAttempt(*next);
      return;
    }
    if (failure == AttemptFailure::kNone && !cancelled) {
      endpoints_.MarkAnswered(endpoint);
    }
    observer_->OnDone(ToAbslStatus(status));
  }

 private:
  // What to do on the current attempt once mu_ is released.
  struct Actions {
    Attempt* attempt = nullptr;
    bool cancel = false;
    bool read = false;
    bool write = false;
    bool writes_done = false;
    bool remove_hold = false;
  };

  void StartAttempt(size_t endpoint) {
    auto* attempt = new Attempt(this->shared_from_this(), endpoint);
    RemoteEndpoints::PrepareContext(ctx_, &attempt->context);
    if constexpr (!kBidi) attempt->message = request_;
    open_(endpoints_, endpoint, attempt);
    attempt->AddHold();
    attempt->StartCall();
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      attempt_ = attempt;
      attempt_finished_ = false;
      cancel_sent_ = false;
      hold_removed_ = false;
      callouts_ = 0;
      read_in_flight_ = false;
      write_in_flight_ = false;
      writes_done_started_ = false;
      queue_.assign(history_.begin(), history_.end());
      act = DecideLocked();
    }
    Run(act);
  }

  Actions DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions act;
    if (attempt_ == nullptr || hold_removed_) return act;
    if (cancelled_ && !cancel_sent_) {
      cancel_sent_ = true;
      attempt_finished_ = true;
      act.cancel = true;
    }
    if (!attempt_finished_) {
      if (credits_ > 0 && !read_in_flight_ && !in_on_response_) {
        read_in_flight_ = true;
        act.read = true;
      }
      if constexpr (kBidi) {
        if (!write_in_flight_ && !queue_.empty()) {
          write_in_flight_ = true;
          attempt_->message = std::move(queue_.front());
          queue_.pop_front();
          act.write = true;
        } else if (!write_in_flight_ && writes_done_requested_ && !writes_done_started_) {
          writes_done_started_ = true;
          act.writes_done = true;
        }
      }
    }
    if (act.cancel || act.read || act.write || act.writes_done) {
      ++callouts_;
      act.attempt = attempt_;
    } else if (attempt_finished_ && callouts_ == 0) {
      hold_removed_ = true;
      act.attempt = attempt_;
      act.remove_hold = true;
    }
    return act;
  }

  void Run(const Actions& act) {
    Attempt* attempt = act.attempt;
    if (attempt == nullptr) return;
    if (act.remove_hold) {
      attempt->RemoveHold();
      return;
    }
    if (act.cancel) attempt->context.TryCancel();
    if constexpr (kBidi) {
      if (act.write) attempt->StartWrite(&attempt->message);
      if (act.writes_done) attempt->StartWritesDone();
    }
    if (act.read) attempt->StartRead(&attempt->response);
    bool remove = false;
    {
      absl::MutexLock lock(&mu_);
      --callouts_;
      if (attempt_finished_ && callouts_ == 0 && !hold_removed_) {
        hold_removed_ = true;
        remove = true;
      }
    }
    if (remove) attempt->RemoveHold();
  }

  RemoteEndpoints& endpoints_;
  const api::CallContext ctx_;
  api::StreamObserver<Resp>* const observer_;
  const Opener open_;
  const Req request_;

  absl::Mutex mu_;
  size_t first_ ABSL_GUARDED_BY(mu_) = 0;               // endpoint of the first attempt
  size_t tries_ ABSL_GUARDED_BY(mu_) = 0;               // endpoints tried so far
  Attempt* attempt_ ABSL_GUARDED_BY(mu_) = nullptr;     // current attempt, held while non-null
  bool attempt_finished_ ABSL_GUARDED_BY(mu_) = false;  // no more operations on attempt_
  bool cancel_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_removed_ ABSL_GUARDED_BY(mu_) = false;
  int callouts_ ABSL_GUARDED_BY(mu_) = 0;          // Run() calls on attempt_ in progress
  std::vector<Req> history_ ABSL_GUARDED_BY(mu_);  // writes before the first response
  std::deque<Req> queue_ ABSL_GUARDED_BY(mu_);     // writes not yet started on attempt_
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_started_ ABSL_GUARDED_BY(mu_) = false;
  int credits_ ABSL_GUARDED_BY(mu_) = 0;  // ReadNext() calls not yet answered
  bool read_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool in_on_response_ ABSL_GUARDED_BY(mu_) = false;  // observer_->OnResponse running
  bool got_response_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;  // observer_->OnDone decided
};

// The caller's handle on a bidirectional remote stream; destroying it
// cancels the stream. Thread-safe.
template <class Req, class Resp>
class RemoteBidiStream final : public api::BidiStream<Req> {
 public:
  explicit RemoteBidiStream(std::shared_ptr<RemoteStreamState<Req, Resp, true>> state)
      : state_(std::move(state)) {}
  ~RemoteBidiStream() override { state_->Cancel(); }
  void ReadNext() override { state_->ReadNext(); }
  void Cancel() override { state_->Cancel(); }
  void Write(Req request) override { state_->Write(std::move(request)); }
  void WritesDone() override { state_->WritesDone(); }

 private:
  std::shared_ptr<RemoteStreamState<Req, Resp, true>> state_;
};

// The caller's handle on a server-streaming remote call; destroying it
// cancels the stream. Thread-safe.
template <class Req, class Resp>
class RemoteReadStream final : public api::ReadStream {
 public:
  explicit RemoteReadStream(std::shared_ptr<RemoteStreamState<Req, Resp, false>> state)
      : state_(std::move(state)) {}
  ~RemoteReadStream() override { state_->Cancel(); }
  void ReadNext() override { state_->ReadNext(); }
  void Cancel() override { state_->Cancel(); }

 private:
  std::shared_ptr<RemoteStreamState<Req, Resp, false>> state_;
};

}  // namespace keel::proxy::grpcproxy
