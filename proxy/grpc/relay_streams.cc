#include "proxy/grpc/relay_streams.h"

#include <deque>
#include <optional>
#include <string>
#include <utility>

#include "proxy/grpc/grpc_services.h"
#include "proxy/grpc/remote_endpoints.h"

namespace keel::proxy::grpcproxy {
namespace {

// One stream's responses between the relay's loop and the Backend observer:
// decoded on the loop, delivered one per ReadNext() credit, never
// overlapping, then OnDone once (after what was queued, unless cancelled).
template <class Response>
class RelayBidiState final : public EtcdStreamObserver {
 public:
  explicit RelayBidiState(api::StreamObserver<Response>* observer) : observer_(observer) {}

  // The relay's handle, to reset the stream when etcd's message cannot be
  // decoded. (Weak: the relay keeps this state until the stream's end.)
  void SetEtcdStream(std::weak_ptr<EtcdStream> etcd) {
    absl::MutexLock lock(&mu_);
    etcd_ = std::move(etcd);
  }

  void OnMessage(std::string_view message) override {
    // Decoded before the lock: ReadNext and Cancel come from other threads.
    Response response;
    const bool decoded = response.ParseFromArray(message.data(), static_cast<int>(message.size()));
    std::shared_ptr<EtcdStream> reset;
    {
      absl::MutexLock lock(&mu_);
      if (end_.has_value() || cancelled_) return;
      if (!decoded) {
        end_ = absl::InternalError("keel: etcd's response message could not be decoded");
        queue_.clear();
        reset = etcd_.lock();
      } else {
        queue_.push_back(std::move(response));
      }
    }
    if (reset != nullptr) reset->Cancel();
    Pump();
  }

  void OnEnd(absl::Status status) override {
    {
      absl::MutexLock lock(&mu_);
      if (!end_.has_value()) end_ = std::move(status);
    }
    Pump();
  }

  void ReadNext() {
    {
      absl::MutexLock lock(&mu_);
      ++credits_;
    }
    Pump();
  }

  // Drops what is queued; OnDone comes with the stream's end (CANCELLED
  // from the relay, or the end it had reached).
  void Cancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      queue_.clear();
    }
    Pump();
  }

 private:
  void Pump() {
    mu_.Lock();
    if (delivering_) {  // the thread delivering takes what was added
      mu_.Unlock();
      return;
    }
    delivering_ = true;
    while (true) {
      if (!queue_.empty() && credits_ > 0) {
        Response response = std::move(queue_.front());
        queue_.pop_front();
        --credits_;
        mu_.Unlock();
        observer_->OnResponse(std::move(response));
        mu_.Lock();
        continue;
      }
      if (end_.has_value() && queue_.empty() && !done_) {
        done_ = true;  // delivering_ stays set: nothing follows OnDone
        const absl::Status status = *end_;
        mu_.Unlock();
        observer_->OnDone(status);
        return;
      }
      break;
    }
    delivering_ = false;
    mu_.Unlock();
  }

  api::StreamObserver<Response>* const observer_;
  absl::Mutex mu_;
  std::weak_ptr<EtcdStream> etcd_ ABSL_GUARDED_BY(mu_);
  std::deque<Response> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t credits_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

template <class Request, class Response>
class RelayBidiStream final : public api::BidiStream<Request> {
 public:
  RelayBidiStream(std::shared_ptr<RelayBidiState<Response>> state, std::shared_ptr<EtcdStream> etcd)
      : state_(std::move(state)), etcd_(std::move(etcd)) {}
  // Before OnDone this cancels (OnDone still comes); after it, the reset
  // reaches a stream that has ended and does nothing.
  ~RelayBidiStream() override { Cancel(); }

  void Write(Request request) override { etcd_->Write(request); }
  void WritesDone() override { etcd_->WritesDone(); }
  // The state is held by a copy: a response (or OnDone) delivered inline
  // may destroy this handle.
  void ReadNext() override {
    const std::shared_ptr<RelayBidiState<Response>> state = state_;
    state->ReadNext();
  }
  void Cancel() override {
    etcd_->Cancel();
    const std::shared_ptr<RelayBidiState<Response>> state = state_;
    state->Cancel();
  }

 private:
  const std::shared_ptr<RelayBidiState<Response>> state_;
  const std::shared_ptr<EtcdStream> etcd_;
};

// A unary call on a relay stream: etcd's one response, then the stream's end
// (called by the relay, never overlapping). A call the relay could not
// deliver (an UNAVAILABLE of its own) is handed to `fallback` with its
// request when the gRPC client's own rule allows it (MaySendAgain: a read
// always, a write only when etcd never saw it, NeverSentToEtcd); a write
// whose connection was lost after it may have left gets that UNAVAILABLE.
template <class Request, class Response>
class RelayUnaryState final : public EtcdStreamObserver {
 public:
  using Fallback = absl::AnyInvocable<void(Request, api::Done<Response>) &&>;

  // `cancel` (may be null): the caller's CancelSignal, cleared at the end.
  RelayUnaryState(Request request, api::Done<Response> done, Fallback fallback,
                  std::shared_ptr<api::CancelSignal> cancel)
      : request_(std::move(request)),
        done_(std::move(done)),
        fallback_(std::move(fallback)),
        cancel_(std::move(cancel)) {}

  // Sends the request on `etcd` (the stream the relay opened for this
  // state) and registers the caller's cancel hook (it resets the stream),
  // unless the call has ended: the relay may have failed the open on its own
  // thread at once, and the fallback then owns the request (and the gRPC
  // client's hook must not be replaced).
  void Send(std::shared_ptr<EtcdStream> etcd) {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    etcd->Write(request_);
    etcd->WritesDone();
    if (cancel_ != nullptr) cancel_->OnCancel([etcd = std::move(etcd)] { etcd->Cancel(); });
  }
  // For a call the relay did not take: its request and `done`.
  std::pair<Request, api::Done<Response>> Take() { return {std::move(request_), std::move(done_)}; }

  void OnMessage(std::string_view message) override {
    ++messages_;
    if (messages_ == 1) {
      decoded_ = response_.ParseFromArray(message.data(), static_cast<int>(message.size()));
    }
  }

  void OnEnd(absl::Status status) override {
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      if (cancel_ != nullptr) cancel_->Clear();
    }
    // Only the relay's own UNAVAILABLE is a failed attempt; etcd's
    // ("etcdserver: no leader") is its answer.
    AttemptFailure failure = AttemptFailure::kNone;
    if (absl::IsUnavailable(status) && !IsEtcdError(status.message())) {
      failure = NeverSentToEtcd(status) ? AttemptFailure::kNotSent : AttemptFailure::kTransport;
    }
    if (MaySendAgain(failure, IsReadOnly(request_))) {
      std::move(fallback_)(std::move(request_), std::move(done_));
      return;
    }
    absl::StatusOr<Response> result;
    if (!status.ok()) {
      result = std::move(status);
    } else if (messages_ != 1 || !decoded_) {
      result = absl::InternalError(messages_ == 0 ? "keel: etcd sent no response message"
                                                  : "keel: etcd's response could not be decoded");
    } else {
      result = std::move(response_);
    }
    std::move(done_)(std::move(result));
  }

 private:
  Request request_;
  api::Done<Response> done_;
  Fallback fallback_;
  const std::shared_ptr<api::CancelSignal> cancel_;
  absl::Mutex mu_;  // Send (caller's thread) against OnEnd (the relay's)
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  Response response_;
  int messages_ = 0;
  bool decoded_ = false;
};

}  // namespace

void RelayStreamsBackend::Attach(FrameRelay* relay) {
  absl::MutexLock lock(&mu_);
  relay_ = relay;
}

void RelayStreamsBackend::Detach() {
  absl::MutexLock lock(&mu_);
  relay_ = nullptr;
}

std::shared_ptr<EtcdStream> RelayStreamsBackend::OpenEtcdStream(
    std::string_view path, const api::CallContext& ctx,
    std::shared_ptr<EtcdStreamObserver> observer) {
  // Held while opening: Detach() returning means no open is under way.
  absl::MutexLock lock(&mu_);
  if (relay_ == nullptr) return nullptr;
  return relay_->OpenToEtcd(path, ctx, std::move(observer));
}

template <class Request, class Response>
std::unique_ptr<api::BidiStream<Request>> RelayStreamsBackend::OpenOnRelay(
    std::string_view path, const api::CallContext& ctx, api::StreamObserver<Response>* observer) {
  auto state = std::make_shared<RelayBidiState<Response>>(observer);
  std::shared_ptr<EtcdStream> etcd = OpenEtcdStream(path, ctx, state);
  if (etcd == nullptr) return nullptr;
  state->SetEtcdStream(etcd);
  return std::make_unique<RelayBidiStream<Request, Response>>(std::move(state), std::move(etcd));
}

template <class Request, class Response>
void RelayStreamsBackend::UnaryOnRelay(const std::string& path,
                                       InnerMethod<Request, Response> method,
                                       const api::CallContext& ctx, Request request,
                                       api::Done<Response> done) {
  // The gRPC client answers an oversize request with etcd's own error.
  if (request.ByteSizeLong() > max_request_bytes_) {
    (inner().*method)(ctx, std::move(request), std::move(done));
    return;
  }
  auto fallback = [this, ctx, method](Request request, api::Done<Response> done) {
    bool attached = false;
    {
      absl::MutexLock lock(&mu_);
      attached = relay_ != nullptr;
    }
    if (!attached) {  // stopping: nothing new starts on the gRPC client
      std::move(done)(absl::UnavailableError("keel: the proxy is stopping"));
      return;
    }
    (inner().*method)(ctx, std::move(request), std::move(done));
  };
  auto state = std::make_shared<RelayUnaryState<Request, Response>>(
      std::move(request), std::move(done), std::move(fallback), ctx.cancel);
  std::shared_ptr<EtcdStream> etcd = OpenEtcdStream(path, ctx, state);
  if (etcd == nullptr) {  // the relay never calls the state
    auto [unsent, unsent_done] = state->Take();
    (inner().*method)(ctx, std::move(unsent), std::move(unsent_done));
    return;
  }
  state->Send(std::move(etcd));
}

void RelayStreamsBackend::Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
                                api::Done<::etcdserverpb::RangeResponse> done) {
  static const std::string kPath = MethodPath(remote_services::KV::service_full_name(), "Range");
  UnaryOnRelay(kPath, &api::Backend::Range, ctx, std::move(request), std::move(done));
}

void RelayStreamsBackend::Put(const api::CallContext& ctx, ::etcdserverpb::PutRequest request,
                              api::Done<::etcdserverpb::PutResponse> done) {
  static const std::string kPath = MethodPath(remote_services::KV::service_full_name(), "Put");
  UnaryOnRelay(kPath, &api::Backend::Put, ctx, std::move(request), std::move(done));
}

void RelayStreamsBackend::DeleteRange(const api::CallContext& ctx,
                                      ::etcdserverpb::DeleteRangeRequest request,
                                      api::Done<::etcdserverpb::DeleteRangeResponse> done) {
  static const std::string kPath =
      MethodPath(remote_services::KV::service_full_name(), "DeleteRange");
  UnaryOnRelay(kPath, &api::Backend::DeleteRange, ctx, std::move(request), std::move(done));
}

void RelayStreamsBackend::Txn(const api::CallContext& ctx, ::etcdserverpb::TxnRequest request,
                              api::Done<::etcdserverpb::TxnResponse> done) {
  static const std::string kPath = MethodPath(remote_services::KV::service_full_name(), "Txn");
  UnaryOnRelay(kPath, &api::Backend::Txn, ctx, std::move(request), std::move(done));
}

std::unique_ptr<api::WatchStream> RelayStreamsBackend::Watch(
    const api::CallContext& ctx, api::StreamObserver<::etcdserverpb::WatchResponse>* observer) {
  static const std::string kPath = MethodPath(remote_services::Watch::service_full_name(), "Watch");
  if (auto stream = OpenOnRelay<::etcdserverpb::WatchRequest>(kPath, ctx, observer)) {
    return stream;
  }
  return inner().Watch(ctx, observer);
}

std::unique_ptr<api::LeaseKeepAliveStream> RelayStreamsBackend::LeaseKeepAlive(
    const api::CallContext& ctx,
    api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) {
  static const std::string kPath =
      MethodPath(remote_services::Lease::service_full_name(), "LeaseKeepAlive");
  if (auto stream = OpenOnRelay<::etcdserverpb::LeaseKeepAliveRequest>(kPath, ctx, observer)) {
    return stream;
  }
  return inner().LeaseKeepAlive(ctx, observer);
}

}  // namespace keel::proxy::grpcproxy
