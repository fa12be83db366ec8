#include "proxy/grpc/local_call.h"

#include <atomic>
#include <cstdint>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "api/grpc_framing.h"
#include "proxy/grpc/grpc_services.h"

namespace keel::proxy::grpcproxy {

using api::GrpcFramed;
namespace {

// A bidi Backend stream as a LocalCall: it is also the stream's observer.
template <class Request, class Response>
class BidiLocalCall final : public LocalCall, public api::StreamObserver<Response> {
 public:
  explicit BidiLocalCall(std::shared_ptr<LocalMailbox> mailbox) : mailbox_(std::move(mailbox)) {}

  template <class Open>
  void Start(Open&& open) {
    stream_ = std::forward<Open>(open)(static_cast<api::StreamObserver<Response>*>(this));
    ReadNext();
  }

  // Once the backend ended the stream (maybe inside Watch() itself), its
  // handle is not called again: only the relay's own end remains.
  bool Write(std::string_view message) override {
    Request request;
    if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) return false;
    if (!done_.load(std::memory_order_acquire)) stream_->Write(std::move(request));
    return true;
  }
  void WritesDone() override {
    if (!done_.load(std::memory_order_acquire)) stream_->WritesDone();
  }
  void ReadNext() override {
    if (!done_.load(std::memory_order_acquire)) stream_->ReadNext();
  }
  void Cancel() override {
    if (!done_.load(std::memory_order_acquire)) stream_->Cancel();
  }

  void OnResponse(Response response) override {
    mailbox_->Post(LocalEvent{this, GrpcFramed(response), std::nullopt});
  }
  void OnDone(absl::Status status) override {
    done_.store(true, std::memory_order_release);
    // The relay may destroy this call as soon as the event is posted.
    std::shared_ptr<LocalMailbox> mailbox = mailbox_;
    mailbox->Post(LocalEvent{this, std::string(), std::move(status)});
  }

 private:
  std::shared_ptr<LocalMailbox> mailbox_;
  std::unique_ptr<api::BidiStream<Request>> stream_;
  std::atomic<bool> done_{false};
};

// A unary Backend call (Backend::*Method) as a LocalCall: the request is
// sent to the backend as soon as it arrives; the response (if OK) and then
// the status come back as events. The relay's Cancel fires the call's
// CancelSignal, as the front's reactor does when a client goes away.
template <class Request, class Response,
          void (api::Backend::*Method)(const api::CallContext&, Request, api::Done<Response>)>
class UnaryLocalCall final : public LocalCall {
 public:
  UnaryLocalCall(api::Backend& backend, const api::CallContext& ctx,
                 std::shared_ptr<LocalMailbox> mailbox)
      : backend_(backend), ctx_(ctx), mailbox_(std::move(mailbox)) {
    ctx_.cancel = std::make_shared<api::CancelSignal>();
  }

  bool Write(std::string_view message) override {
    if (state_ != State::kWaiting) return false;  // one message per unary call
    Request request;
    if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) return false;
    state_ = State::kSent;
    // The relay may destroy this call once the status event is taken: the
    // callback uses nothing of it but its address.
    std::shared_ptr<LocalMailbox> mailbox = mailbox_;
    (backend_.*Method)(ctx_, std::move(request), [this, mailbox](absl::StatusOr<Response> result) {
      if (result.ok()) mailbox->Post(LocalEvent{this, GrpcFramed(*result), std::nullopt});
      mailbox->Post(LocalEvent{this, std::string(), result.status()});
    });
    return true;
  }
  void WritesDone() override {
    if (state_ != State::kWaiting) return;
    End(absl::InternalError("keel: a unary call ended without its request message"));
  }
  void ReadNext() override {}
  void Cancel() override {
    if (state_ == State::kSent) {
      ctx_.cancel->Cancel();
    } else if (state_ == State::kWaiting) {
      End(absl::CancelledError("call cancelled"));
    }
  }

 private:
  enum class State { kWaiting, kSent, kEnded };
  // Ends a call that never reached the backend.
  void End(absl::Status status) {
    state_ = State::kEnded;
    mailbox_->Post(LocalEvent{this, std::string(), std::move(status)});
  }

  api::Backend& backend_;
  api::CallContext ctx_;
  std::shared_ptr<LocalMailbox> mailbox_;
  State state_ = State::kWaiting;  // its relay loop's thread only
};

template <class Request, class Response,
          void (api::Backend::*Method)(const api::CallContext&, Request, api::Done<Response>)>
std::unique_ptr<LocalCall> OpenUnary(api::Backend& backend, const api::CallContext& ctx,
                                     std::shared_ptr<LocalMailbox> mailbox) {
  return std::make_unique<UnaryLocalCall<Request, Response, Method>>(backend, ctx,
                                                                     std::move(mailbox));
}

template <class Request, class Response,
          std::unique_ptr<api::BidiStream<Request>> (api::Backend::*Method)(
              const api::CallContext&, api::StreamObserver<Response>*)>
std::unique_ptr<LocalCall> OpenBidi(api::Backend& backend, const api::CallContext& ctx,
                                    std::shared_ptr<LocalMailbox> mailbox) {
  auto call = std::make_unique<BidiLocalCall<Request, Response>>(std::move(mailbox));
  call->Start(
      [&](api::StreamObserver<Response>* observer) { return (backend.*Method)(ctx, observer); });
  return call;
}

// Every local call by path ("/etcdserverpb.KV/Range").
const absl::flat_hash_map<std::string, LocalCallFactory>& Factories() {
  static const auto* factories = [] {
    auto* m = new absl::flat_hash_map<std::string, LocalCallFactory>();
#define KEEL_LOCAL_UNARY(service, method, Request, Response)                     \
  m->emplace(MethodPath(remote_services::service::service_full_name(), #method), \
             &OpenUnary<Request, Response, &api::Backend::method>);
    KEEL_UNARY_METHODS(KEEL_LOCAL_UNARY)
#undef KEEL_LOCAL_UNARY
    m->emplace(MethodPath(remote_services::Watch::service_full_name(), "Watch"),
               &OpenBidi<::etcdserverpb::WatchRequest, ::etcdserverpb::WatchResponse,
                         &api::Backend::Watch>);
    m->emplace(MethodPath(remote_services::Lease::service_full_name(), "LeaseKeepAlive"),
               &OpenBidi<::etcdserverpb::LeaseKeepAliveRequest,
                         ::etcdserverpb::LeaseKeepAliveResponse, &api::Backend::LeaseKeepAlive>);
    return m;
  }();
  return *factories;
}

}  // namespace

LocalCallFactory LocalCallFactoryFor(std::string_view path) {
  auto it = Factories().find(absl::string_view(path.data(), path.size()));
  return it == Factories().end() ? nullptr : it->second;
}

}  // namespace keel::proxy::grpcproxy
