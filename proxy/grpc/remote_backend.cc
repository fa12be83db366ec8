#include "proxy/grpc/remote_backend.h"

#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "api/errors.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "proxy/grpc/remote_endpoints.h"
#include "proxy/grpc/remote_stream.h"

namespace keel::proxy::grpcproxy {
namespace {

// One unary call: tries endpoints from the preferred one on, one attempt
// each (fresh ClientContext every time), and completes `done` once.
// Self-deleting; lives from Start() until its last attempt's callback.
template <class Service, class Request, class Response>
class UnaryCall {
 public:
  // Issues the RPC on one endpoint's stub (the generated callback method).
  using Issue = void (*)(typename Service::Stub* stub, ::grpc::ClientContext* context,
                         const Request* request, Response* response,
                         std::function<void(::grpc::Status)> on_done);

  static void Start(RemoteEndpoints& endpoints, const api::CallContext& ctx, Request request,
                    api::Done<Response> done, Issue issue) {
    const size_t max_send = static_cast<size_t>(endpoints.options().max_send_bytes);
    if (request.ByteSizeLong() > max_send) {
      // etcd refuses these itself; the proxy's client must not turn that
      // into gRPC's own RESOURCE_EXHAUSTED as etcd's proxy does (spec 2.2).
      std::move(done)(api::EtcdStatus(api::EtcdError::kRequestTooLarge));
      return;
    }
    auto* call = new UnaryCall(endpoints, ctx, std::move(request), std::move(done), issue);
    call->Attempt();
  }

 private:
  UnaryCall(RemoteEndpoints& endpoints, const api::CallContext& ctx, Request request,
            api::Done<Response> done, Issue issue)
      : endpoints_(endpoints),
        ctx_(ctx),
        request_(std::move(request)),
        done_(std::move(done)),
        issue_(issue),
        first_(endpoints.preferred()) {}

  void Attempt() {
    current_ = (first_ + tries_) % endpoints_.size();
    ++tries_;
    // A ClientContext serves one RPC only; the previous attempt's is
    // released here, after its callback has started (gRPC allows it).
    context_ = std::make_unique<::grpc::ClientContext>();
    RemoteEndpoints::PrepareContext(ctx_, context_.get());
    if (ctx_.cancel != nullptr) {
      // The caller gave up: cancel upstream too (a TryCancel before the call
      // starts cancels it as it starts). Cleared before context_ goes away.
      ctx_.cancel->OnCancel([context = context_.get()] { context->TryCancel(); });
    }
    response_.Clear();
    issue_(endpoints_.Stub<Service>(current_), context_.get(), &request_, &response_,
           [this](::grpc::Status status) { OnAttemptDone(std::move(status)); });
  }

  void OnAttemptDone(::grpc::Status status) {
    if (ctx_.cancel != nullptr) ctx_.cancel->Clear();
    const AttemptFailure failure = ClassifyAttempt(status);
    if (MaySendAgain(failure, IsReadOnly(request_)) && tries_ < endpoints_.size()) {
      Attempt();
      return;
    }
    if (failure == AttemptFailure::kNone) endpoints_.MarkAnswered(current_);
    absl::StatusOr<Response> result;
    if (status.ok()) {
      result = std::move(response_);
    } else {
      result = ToAbslStatus(status);
    }
    api::Done<Response> done = std::move(done_);
    // Frees the ClientContext (and its channel reference) before `done`, so
    // a caller that destroys the backend right after never leaves the last
    // channel reference to gRPC's callback thread (remote_stream.h).
    delete this;
    std::move(done)(std::move(result));
  }

  RemoteEndpoints& endpoints_;
  const api::CallContext ctx_;
  const Request request_;
  api::Done<Response> done_;
  const Issue issue_;
  const size_t first_;
  size_t tries_ = 0;
  size_t current_ = 0;
  std::unique_ptr<::grpc::ClientContext> context_;
  Response response_;
};

}  // namespace

RemoteBackend::RemoteBackend(RemoteOptions options)
    : endpoints_(std::make_unique<RemoteEndpoints>(options)) {}

RemoteBackend::~RemoteBackend() = default;

std::string RemoteBackend::CurrentEndpoint() const {
  return endpoints_->address(endpoints_->preferred());
}

#define KEEL_REMOTE_DEFINE_UNARY(service, method, Request, Response)                          \
  void RemoteBackend::method(const api::CallContext& ctx, Request request,                    \
                             api::Done<Response> done) {                                      \
    UnaryCall<remote_services::service, Request, Response>::Start(                            \
        *endpoints_, ctx, std::move(request), std::move(done),                                \
        [](remote_services::service::Stub* stub, ::grpc::ClientContext* context,              \
           const Request* req, Response* resp, std::function<void(::grpc::Status)> on_done) { \
          stub->async()->method(context, req, resp, std::move(on_done));                      \
        });                                                                                   \
  }
KEEL_UNARY_METHODS(KEEL_REMOTE_DEFINE_UNARY)
#undef KEEL_REMOTE_DEFINE_UNARY

std::unique_ptr<api::WatchStream> RemoteBackend::Watch(
    const api::CallContext& ctx, api::StreamObserver<::etcdserverpb::WatchResponse>* observer) {
  using State =
      RemoteStreamState<::etcdserverpb::WatchRequest, ::etcdserverpb::WatchResponse, true>;
  auto state = std::make_shared<State>(
      *endpoints_, ctx, observer,
      [](RemoteEndpoints& endpoints, size_t i, State::Attempt* attempt) {
        endpoints.Stub<remote_services::Watch>(i)->async()->Watch(&attempt->context, attempt);
      },
      ::etcdserverpb::WatchRequest());
  state->Start();
  return std::make_unique<
      RemoteBidiStream<::etcdserverpb::WatchRequest, ::etcdserverpb::WatchResponse>>(state);
}

std::unique_ptr<api::LeaseKeepAliveStream> RemoteBackend::LeaseKeepAlive(
    const api::CallContext& ctx,
    api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) {
  using State = RemoteStreamState<::etcdserverpb::LeaseKeepAliveRequest,
                                  ::etcdserverpb::LeaseKeepAliveResponse, true>;
  auto state = std::make_shared<State>(
      *endpoints_, ctx, observer,
      [](RemoteEndpoints& endpoints, size_t i, State::Attempt* attempt) {
        endpoints.Stub<remote_services::Lease>(i)->async()->LeaseKeepAlive(&attempt->context,
                                                                           attempt);
      },
      ::etcdserverpb::LeaseKeepAliveRequest());
  state->Start();
  return std::make_unique<RemoteBidiStream<::etcdserverpb::LeaseKeepAliveRequest,
                                           ::etcdserverpb::LeaseKeepAliveResponse>>(state);
}

std::unique_ptr<api::ReadStream> RemoteBackend::Snapshot(
    const api::CallContext& ctx, ::etcdserverpb::SnapshotRequest request,
    api::StreamObserver<::etcdserverpb::SnapshotResponse>* observer) {
  using State =
      RemoteStreamState<::etcdserverpb::SnapshotRequest, ::etcdserverpb::SnapshotResponse, false>;
  auto state = std::make_shared<State>(
      *endpoints_, ctx, observer,
      [](RemoteEndpoints& endpoints, size_t i, State::Attempt* attempt) {
        endpoints.Stub<remote_services::Maintenance>(i)->async()->Snapshot(
            &attempt->context, &attempt->message, attempt);
      },
      std::move(request));
  state->Start();
  return std::make_unique<
      RemoteReadStream<::etcdserverpb::SnapshotRequest, ::etcdserverpb::SnapshotResponse>>(state);
}

std::unique_ptr<api::ReadStream> RemoteBackend::Observe(
    const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
    api::StreamObserver<::v3electionpb::LeaderResponse>* observer) {
  using State =
      RemoteStreamState<::v3electionpb::LeaderRequest, ::v3electionpb::LeaderResponse, false>;
  auto state = std::make_shared<State>(
      *endpoints_, ctx, observer,
      [](RemoteEndpoints& endpoints, size_t i, State::Attempt* attempt) {
        endpoints.Stub<remote_services::Election>(i)->async()->Observe(&attempt->context,
                                                                       &attempt->message, attempt);
      },
      std::move(request));
  state->Start();
  return std::make_unique<
      RemoteReadStream<::v3electionpb::LeaderRequest, ::v3electionpb::LeaderResponse>>(state);
}

}  // namespace keel::proxy::grpcproxy
