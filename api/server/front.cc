#include "api/server/front.h"

#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "api/server/call_context.h"
#include "api/server/grpc_status.h"
#include "api/server/method_metrics.h"
#include "api/server/stream_relay.h"
#include "api/v3electionpb/v3election.grpc.pb.h"
#include "api/v3lockpb/v3lock.grpc.pb.h"

namespace keel::api::server {

namespace {

// The reactor of one unary call. A client that cancels (or a server that
// shuts down) fires the call's CancelSignal, so the backend can cancel its
// upstream call: a Lock or Campaign must not be taken for a client that is
// gone, and Server::Shutdown waits for every call to finish. Deletes itself
// in OnDone, which gRPC runs only after Finish.
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  UnaryReactor() : cancel_(std::make_shared<CancelSignal>()) {}
  const std::shared_ptr<CancelSignal>& cancel() const { return cancel_; }
  void OnCancel() override { cancel_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<CancelSignal> cancel_;
};

// One unary call: the request goes to the backend through `call`, and the
// Done it is given finishes the call. Finishing after the client cancelled is
// harmless: gRPC keeps the call (and `response`) until Finish.
template <class Request, class Response, class Call>
grpc::ServerUnaryReactor* HandleUnary(grpc::CallbackServerContext* context, const Request* request,
                                      Response* response, MethodMetrics& metrics, Call&& call) {
  metrics.Started();
  metrics.Received();
  auto* reactor = new UnaryReactor();
  CallContext ctx = CallContextFrom(*context);
  ctx.cancel = reactor->cancel();
  std::forward<Call>(call)(
      std::move(ctx), Request(*request),
      Done<Response>([reactor, response, &metrics](absl::StatusOr<Response> result) {
        grpc::Status status;
        if (result.ok()) {
          *response = *std::move(result);
          metrics.Sent();
        } else {
          status = ToGrpcStatus(result.status());
        }
        metrics.Handled(status.error_code());
        reactor->Finish(std::move(status));
      }));
  return reactor;
}

// What every service class holds. `Generated` is the generated
// <Service>::CallbackService.
template <class GeneratedService>
class FrontService : public GeneratedService {
 protected:
  using Generated = GeneratedService;

  FrontService(Backend& backend, common::MetricsRegistry* metrics, std::string service)
      : backend_(backend), metrics_(metrics), service_(std::move(service)) {}

  Backend& backend_;
  common::MetricsRegistry* const metrics_;
  const std::string service_;  // full gRPC name, e.g. "etcdserverpb.KV"
};

// The unary handlers come from KEEL_UNARY_METHODS (api/backend.h): each
// service class expands the whole list and keeps the entries of its own
// service, so a method added there needs no code here.
//
// KEEL_FRONT_IF_SERVICE(want, service)(tokens) is `tokens` when the two
// service names are the same token and nothing otherwise.
#define KEEL_FRONT_CAT(a, b) KEEL_FRONT_CAT_I(a, b)
#define KEEL_FRONT_CAT_I(a, b) a##b
#define KEEL_FRONT_SECOND(...) KEEL_FRONT_SECOND_I(__VA_ARGS__)
#define KEEL_FRONT_SECOND_I(a, b, ...) b
#define KEEL_FRONT_WHEN_0(...)
#define KEEL_FRONT_WHEN_1(...) __VA_ARGS__
#define KEEL_FRONT_SAME_KV_KV ~, 1
#define KEEL_FRONT_SAME_Lease_Lease ~, 1
#define KEEL_FRONT_SAME_Cluster_Cluster ~, 1
#define KEEL_FRONT_SAME_Maintenance_Maintenance ~, 1
#define KEEL_FRONT_SAME_Auth_Auth ~, 1
#define KEEL_FRONT_SAME_Lock_Lock ~, 1
#define KEEL_FRONT_SAME_Election_Election ~, 1
#define KEEL_FRONT_IF_SERVICE(want, service) \
  KEEL_FRONT_CAT(KEEL_FRONT_WHEN_, KEEL_FRONT_SECOND(KEEL_FRONT_SAME_##want##_##service, 0, ~))

// The handler of one unary method and its counters.
#define KEEL_FRONT_UNARY(method, Request, Response)                                              \
 public:                                                                                         \
  using Generated::method;                                                                       \
  grpc::ServerUnaryReactor* method(grpc::CallbackServerContext* context, const Request* request, \
                                   Response* response) override {                                \
    return HandleUnary(context, request, response, method##_metrics_,                            \
                       [this](const CallContext& ctx, Request req, Done<Response> done) {        \
                         backend_.method(ctx, std::move(req), std::move(done));                  \
                       });                                                                       \
  }                                                                                              \
                                                                                                 \
 private:                                                                                        \
  MethodMetrics method##_metrics_{metrics_, RpcType::kUnary, service_, #method};

#define KEEL_FRONT_KV(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(KV, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_LEASE(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Lease, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_CLUSTER(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Cluster, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_MAINTENANCE(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Maintenance, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_AUTH(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Auth, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_LOCK(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Lock, service)(KEEL_FRONT_UNARY(method, Request, Response))
#define KEEL_FRONT_ELECTION(service, method, Request, Response) \
  KEEL_FRONT_IF_SERVICE(Election, service)(KEEL_FRONT_UNARY(method, Request, Response))

class KvService final : public FrontService<etcdserverpb::KV::CallbackService> {
 public:
  KvService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.KV") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_KV)
};

class WatchService final : public FrontService<etcdserverpb::Watch::CallbackService> {
 public:
  WatchService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.Watch") {}

  using Generated::Watch;
  grpc::ServerBidiReactor<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>* Watch(
      grpc::CallbackServerContext* context) override {
    return BidiRelay<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>::Start(
        context, watch_metrics_,
        [this](const CallContext& ctx, StreamObserver<etcdserverpb::WatchResponse>* observer) {
          return backend_.Watch(ctx, observer);
        });
  }

 private:
  MethodMetrics watch_metrics_{metrics_, RpcType::kBidiStream, service_, "Watch"};
};

class LeaseService final : public FrontService<etcdserverpb::Lease::CallbackService> {
 public:
  LeaseService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.Lease") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_LEASE)

 public:
  using Generated::LeaseKeepAlive;
  grpc::ServerBidiReactor<etcdserverpb::LeaseKeepAliveRequest,
                          etcdserverpb::LeaseKeepAliveResponse>*
  LeaseKeepAlive(grpc::CallbackServerContext* context) override {
    return BidiRelay<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>::
        Start(context, keep_alive_metrics_,
              [this](const CallContext& ctx,
                     StreamObserver<etcdserverpb::LeaseKeepAliveResponse>* observer) {
                return backend_.LeaseKeepAlive(ctx, observer);
              });
  }

 private:
  MethodMetrics keep_alive_metrics_{metrics_, RpcType::kBidiStream, service_, "LeaseKeepAlive"};
};

class ClusterService final : public FrontService<etcdserverpb::Cluster::CallbackService> {
 public:
  ClusterService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.Cluster") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_CLUSTER)
};

class MaintenanceService final : public FrontService<etcdserverpb::Maintenance::CallbackService> {
 public:
  MaintenanceService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.Maintenance") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_MAINTENANCE)

 public:
  using Generated::Snapshot;
  grpc::ServerWriteReactor<etcdserverpb::SnapshotResponse>* Snapshot(
      grpc::CallbackServerContext* context, const etcdserverpb::SnapshotRequest* request) override {
    return WriteRelay<etcdserverpb::SnapshotRequest, etcdserverpb::SnapshotResponse>::Start(
        context, snapshot_metrics_, *request,
        [this](const CallContext& ctx, etcdserverpb::SnapshotRequest req,
               StreamObserver<etcdserverpb::SnapshotResponse>* observer) {
          return backend_.Snapshot(ctx, std::move(req), observer);
        });
  }

 private:
  MethodMetrics snapshot_metrics_{metrics_, RpcType::kServerStream, service_, "Snapshot"};
};

class AuthService final : public FrontService<etcdserverpb::Auth::CallbackService> {
 public:
  AuthService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "etcdserverpb.Auth") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_AUTH)
};

class LockService final : public FrontService<v3lockpb::Lock::CallbackService> {
 public:
  LockService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "v3lockpb.Lock") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_LOCK)
};

class ElectionService final : public FrontService<v3electionpb::Election::CallbackService> {
 public:
  ElectionService(Backend& backend, common::MetricsRegistry* metrics)
      : FrontService(backend, metrics, "v3electionpb.Election") {}

  KEEL_UNARY_METHODS(KEEL_FRONT_ELECTION)

 public:
  using Generated::Observe;
  grpc::ServerWriteReactor<v3electionpb::LeaderResponse>* Observe(
      grpc::CallbackServerContext* context, const v3electionpb::LeaderRequest* request) override {
    return WriteRelay<v3electionpb::LeaderRequest, v3electionpb::LeaderResponse>::Start(
        context, observe_metrics_, *request,
        [this](const CallContext& ctx, v3electionpb::LeaderRequest req,
               StreamObserver<v3electionpb::LeaderResponse>* observer) {
          return backend_.Observe(ctx, std::move(req), observer);
        });
  }

 private:
  MethodMetrics observe_metrics_{metrics_, RpcType::kServerStream, service_, "Observe"};
};

#undef KEEL_FRONT_ELECTION
#undef KEEL_FRONT_LOCK
#undef KEEL_FRONT_AUTH
#undef KEEL_FRONT_MAINTENANCE
#undef KEEL_FRONT_CLUSTER
#undef KEEL_FRONT_LEASE
#undef KEEL_FRONT_KV
#undef KEEL_FRONT_UNARY
#undef KEEL_FRONT_IF_SERVICE
#undef KEEL_FRONT_SAME_Election_Election
#undef KEEL_FRONT_SAME_Lock_Lock
#undef KEEL_FRONT_SAME_Auth_Auth
#undef KEEL_FRONT_SAME_Maintenance_Maintenance
#undef KEEL_FRONT_SAME_Cluster_Cluster
#undef KEEL_FRONT_SAME_Lease_Lease
#undef KEEL_FRONT_SAME_KV_KV
#undef KEEL_FRONT_WHEN_1
#undef KEEL_FRONT_WHEN_0
#undef KEEL_FRONT_SECOND_I
#undef KEEL_FRONT_SECOND
#undef KEEL_FRONT_CAT_I
#undef KEEL_FRONT_CAT

}  // namespace

struct Front::Services {
  Services(Backend& backend, common::MetricsRegistry* metrics)
      : kv(backend, metrics),
        watch(backend, metrics),
        lease(backend, metrics),
        cluster(backend, metrics),
        maintenance(backend, metrics),
        auth(backend, metrics),
        lock(backend, metrics),
        election(backend, metrics) {}

  KvService kv;
  WatchService watch;
  LeaseService lease;
  ClusterService cluster;
  MaintenanceService maintenance;
  AuthService auth;
  LockService lock;
  ElectionService election;
};

Front::Front(Backend& backend, FrontOptions options)
    : services_(std::make_unique<Services>(backend, options.metrics)) {}

Front::~Front() = default;

void Front::Register(grpc::ServerBuilder& builder) {
  builder.RegisterService(&services_->kv);
  builder.RegisterService(&services_->watch);
  builder.RegisterService(&services_->lease);
  builder.RegisterService(&services_->cluster);
  builder.RegisterService(&services_->maintenance);
  builder.RegisterService(&services_->auth);
  builder.RegisterService(&services_->lock);
  builder.RegisterService(&services_->election);
}

}  // namespace keel::api::server
