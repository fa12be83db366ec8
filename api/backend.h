#pragma once

// The etcd v3 API as asynchronous C++: what the front (api/server) calls and
// what every layer behind it implements (namespace/, cache/, coalesce/, the
// remote backend in proxy/grpc/, later the member). Protobuf messages only: no
// gRPC types cross this interface, so decorators need not link grpc++.

#include <memory>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/etcdserverpb/rpc.pb.h"
#include "api/v3electionpb/v3election.pb.h"
#include "api/v3lockpb/v3lock.pb.h"

namespace keel::api {

// Tells the layers below that the caller gave up on a unary call (the client
// cancelled or went away, or the server is shutting down), so that an
// upstream call waiting for a lock, an election or a hung member is
// cancelled too instead of completing for nobody. Thread-safe.
class CancelSignal {
 public:
  // Registers what cancelling does now, replacing any earlier registration;
  // runs it at once if Cancel() already happened. It runs under the signal's
  // lock (so Clear() returning means it is not running): it must be short,
  // must not block and must not call back into this signal.
  void OnCancel(absl::AnyInvocable<void()> fn) {
    absl::MutexLock lock(&mu_);
    fn_ = std::move(fn);
    if (cancelled_ && fn_) std::exchange(fn_, nullptr)();
  }
  // Drops the registration; after it returns the callback is not running.
  void Clear() {
    absl::MutexLock lock(&mu_);
    fn_ = nullptr;
  }
  // Cancels: runs the registered callback once. Idempotent.
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (fn_) std::exchange(fn_, nullptr)();
  }
  bool cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  absl::AnyInvocable<void()> fn_ ABSL_GUARDED_BY(mu_);
};

// What a client sent besides the request message. Copied into every layer.
struct CallContext {
  // etcd auth token (gRPC metadata "token"); empty when the client sent none.
  std::string token;
  // Client asked for "hasleader"="true" (etcd's require-leader metadata):
  // calls and streams must fail with `etcdserver: no leader` without one.
  bool require_leader = false;
  // The client's deadline; InfiniteFuture() when it set none.
  absl::Time deadline = absl::InfiniteFuture();
  // Unary calls: fires when the caller gives up (see CancelSignal); null when
  // the caller never cancels. Streams are cancelled through their handle.
  std::shared_ptr<CancelSignal> cancel;
};

// Completion of a unary call. Runs exactly once, on any thread (possibly
// before the call that took it returns); must not block.
template <class Response>
using Done = absl::AnyInvocable<void(absl::StatusOr<Response>) &&>;

// Every unary RPC of the eight services, as
// X(service, method, request type, response type). The front, the remote
// backend and ForwardingBackend expand this list, so a method is added in
// one place.
#define KEEL_UNARY_METHODS(X)                                                              \
  X(KV, Range, ::etcdserverpb::RangeRequest, ::etcdserverpb::RangeResponse)                \
  X(KV, Put, ::etcdserverpb::PutRequest, ::etcdserverpb::PutResponse)                      \
  X(KV, DeleteRange, ::etcdserverpb::DeleteRangeRequest,                                   \
    ::etcdserverpb::DeleteRangeResponse)                                                   \
  X(KV, Txn, ::etcdserverpb::TxnRequest, ::etcdserverpb::TxnResponse)                      \
  X(KV, Compact, ::etcdserverpb::CompactionRequest, ::etcdserverpb::CompactionResponse)    \
  X(Lease, LeaseGrant, ::etcdserverpb::LeaseGrantRequest,                                  \
    ::etcdserverpb::LeaseGrantResponse)                                                    \
  X(Lease, LeaseRevoke, ::etcdserverpb::LeaseRevokeRequest,                                \
    ::etcdserverpb::LeaseRevokeResponse)                                                   \
  X(Lease, LeaseTimeToLive, ::etcdserverpb::LeaseTimeToLiveRequest,                        \
    ::etcdserverpb::LeaseTimeToLiveResponse)                                               \
  X(Lease, LeaseLeases, ::etcdserverpb::LeaseLeasesRequest,                                \
    ::etcdserverpb::LeaseLeasesResponse)                                                   \
  X(Cluster, MemberAdd, ::etcdserverpb::MemberAddRequest, ::etcdserverpb::MemberAddResponse) \
  X(Cluster, MemberRemove, ::etcdserverpb::MemberRemoveRequest,                            \
    ::etcdserverpb::MemberRemoveResponse)                                                  \
  X(Cluster, MemberUpdate, ::etcdserverpb::MemberUpdateRequest,                            \
    ::etcdserverpb::MemberUpdateResponse)                                                  \
  X(Cluster, MemberList, ::etcdserverpb::MemberListRequest,                                \
    ::etcdserverpb::MemberListResponse)                                                    \
  X(Cluster, MemberPromote, ::etcdserverpb::MemberPromoteRequest,                          \
    ::etcdserverpb::MemberPromoteResponse)                                                 \
  X(Maintenance, Alarm, ::etcdserverpb::AlarmRequest, ::etcdserverpb::AlarmResponse)       \
  X(Maintenance, Status, ::etcdserverpb::StatusRequest, ::etcdserverpb::StatusResponse)    \
  X(Maintenance, Defragment, ::etcdserverpb::DefragmentRequest,                            \
    ::etcdserverpb::DefragmentResponse)                                                    \
  X(Maintenance, Hash, ::etcdserverpb::HashRequest, ::etcdserverpb::HashResponse)          \
  X(Maintenance, HashKV, ::etcdserverpb::HashKVRequest, ::etcdserverpb::HashKVResponse)    \
  X(Maintenance, MoveLeader, ::etcdserverpb::MoveLeaderRequest,                            \
    ::etcdserverpb::MoveLeaderResponse)                                                    \
  X(Maintenance, Downgrade, ::etcdserverpb::DowngradeRequest,                              \
    ::etcdserverpb::DowngradeResponse)                                                     \
  X(Auth, AuthEnable, ::etcdserverpb::AuthEnableRequest, ::etcdserverpb::AuthEnableResponse) \
  X(Auth, AuthDisable, ::etcdserverpb::AuthDisableRequest,                                 \
    ::etcdserverpb::AuthDisableResponse)                                                   \
  X(Auth, AuthStatus, ::etcdserverpb::AuthStatusRequest, ::etcdserverpb::AuthStatusResponse) \
  X(Auth, Authenticate, ::etcdserverpb::AuthenticateRequest,                               \
    ::etcdserverpb::AuthenticateResponse)                                                  \
  X(Auth, UserAdd, ::etcdserverpb::AuthUserAddRequest, ::etcdserverpb::AuthUserAddResponse) \
  X(Auth, UserGet, ::etcdserverpb::AuthUserGetRequest, ::etcdserverpb::AuthUserGetResponse) \
  X(Auth, UserList, ::etcdserverpb::AuthUserListRequest,                                   \
    ::etcdserverpb::AuthUserListResponse)                                                  \
  X(Auth, UserDelete, ::etcdserverpb::AuthUserDeleteRequest,                               \
    ::etcdserverpb::AuthUserDeleteResponse)                                                \
  X(Auth, UserChangePassword, ::etcdserverpb::AuthUserChangePasswordRequest,               \
    ::etcdserverpb::AuthUserChangePasswordResponse)                                        \
  X(Auth, UserGrantRole, ::etcdserverpb::AuthUserGrantRoleRequest,                         \
    ::etcdserverpb::AuthUserGrantRoleResponse)                                             \
  X(Auth, UserRevokeRole, ::etcdserverpb::AuthUserRevokeRoleRequest,                       \
    ::etcdserverpb::AuthUserRevokeRoleResponse)                                            \
  X(Auth, RoleAdd, ::etcdserverpb::AuthRoleAddRequest, ::etcdserverpb::AuthRoleAddResponse) \
  X(Auth, RoleGet, ::etcdserverpb::AuthRoleGetRequest, ::etcdserverpb::AuthRoleGetResponse) \
  X(Auth, RoleList, ::etcdserverpb::AuthRoleListRequest,                                   \
    ::etcdserverpb::AuthRoleListResponse)                                                  \
  X(Auth, RoleDelete, ::etcdserverpb::AuthRoleDeleteRequest,                               \
    ::etcdserverpb::AuthRoleDeleteResponse)                                                \
  X(Auth, RoleGrantPermission, ::etcdserverpb::AuthRoleGrantPermissionRequest,             \
    ::etcdserverpb::AuthRoleGrantPermissionResponse)                                       \
  X(Auth, RoleRevokePermission, ::etcdserverpb::AuthRoleRevokePermissionRequest,           \
    ::etcdserverpb::AuthRoleRevokePermissionResponse)                                      \
  X(Lock, Lock, ::v3lockpb::LockRequest, ::v3lockpb::LockResponse)                         \
  X(Lock, Unlock, ::v3lockpb::UnlockRequest, ::v3lockpb::UnlockResponse)                   \
  X(Election, Campaign, ::v3electionpb::CampaignRequest, ::v3electionpb::CampaignResponse) \
  X(Election, Proclaim, ::v3electionpb::ProclaimRequest, ::v3electionpb::ProclaimResponse) \
  X(Election, Leader, ::v3electionpb::LeaderRequest, ::v3electionpb::LeaderResponse)       \
  X(Election, Resign, ::v3electionpb::ResignRequest, ::v3electionpb::ResignResponse)

// Receives one stream's responses. Implemented by the caller of a streaming
// Backend method. Calls for one stream never overlap and come in order, on
// any thread; they must not block. OnDone is the last call, exactly once.
// A backend touches neither the observer nor the handle from the moment it
// calls OnDone, so the caller may destroy both as soon as OnDone has begun
// (the front and the frame relay do).
template <class Response>
class StreamObserver {
 public:
  virtual ~StreamObserver() = default;
  // One response, delivered only after a ReadNext() asked for it.
  virtual void OnResponse(Response response) = 0;
  // The stream ended: OK when the backend finished it cleanly, otherwise the
  // error as the client should see it (etcd's code and message).
  virtual void OnDone(absl::Status status) = 0;
};

// The caller's handle on a server-streaming call (Snapshot, Observe).
// Thread-safe; methods may be called from inside observer callbacks.
// Destroying the handle before OnDone cancels the stream; OnDone still runs.
class ReadStream {
 public:
  virtual ~ReadStream() = default;
  // Flow control: allows exactly one more OnResponse (credits add up). Call
  // once after the stream is opened and again after each response has been
  // consumed, so a slow reader holds back its backend instead of queueing
  // without bound. A no-op once the stream has ended.
  virtual void ReadNext() = 0;
  // Ends the stream early; OnDone follows with CANCELLED (or the status the
  // stream had already reached).
  virtual void Cancel() = 0;
};

// The caller's handle on a bidirectional stream (Watch, LeaseKeepAlive).
template <class Request>
class BidiStream : public ReadStream {
 public:
  // Queues one request; requests reach the backend in order.
  virtual void Write(Request request) = 0;
  // The client will send no more requests (half-close). Responses go on.
  virtual void WritesDone() = 0;
};

using WatchStream = BidiStream<::etcdserverpb::WatchRequest>;
using LeaseKeepAliveStream = BidiStream<::etcdserverpb::LeaseKeepAliveRequest>;

// The etcd v3 API. Implementations are thread-safe: any method may be called
// from any thread, concurrently. Unary methods complete through `done`
// (exactly once, see Done); errors are etcd's own codes and messages
// (api/errors.h), passed through unchanged from upstream.
class Backend {
 public:
  virtual ~Backend() = default;

#define KEEL_DECLARE_UNARY(service, method, Request, Response) \
  virtual void method(const CallContext& ctx, Request request, Done<Response> done) = 0;
  KEEL_UNARY_METHODS(KEEL_DECLARE_UNARY)
#undef KEEL_DECLARE_UNARY

  // Streams. `observer` must outlive the stream (until its OnDone); the
  // returned handle must be kept until OnDone or destroyed to cancel.
  virtual std::unique_ptr<WatchStream> Watch(
      const CallContext& ctx, StreamObserver<::etcdserverpb::WatchResponse>* observer) = 0;
  virtual std::unique_ptr<LeaseKeepAliveStream> LeaseKeepAlive(
      const CallContext& ctx, StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) = 0;
  virtual std::unique_ptr<ReadStream> Snapshot(
      const CallContext& ctx, ::etcdserverpb::SnapshotRequest request,
      StreamObserver<::etcdserverpb::SnapshotResponse>* observer) = 0;
  virtual std::unique_ptr<ReadStream> Observe(
      const CallContext& ctx, ::v3electionpb::LeaderRequest request,
      StreamObserver<::v3electionpb::LeaderResponse>* observer) = 0;
};

// A decorator's base: passes every call to `inner` unchanged, so a decorator
// overrides only the calls it changes. `inner` must outlive this object.
class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}

#define KEEL_FORWARD_UNARY(service, method, Request, Response)                     \
  void method(const CallContext& ctx, Request request, Done<Response> done) override { \
    inner_.method(ctx, std::move(request), std::move(done));                         \
  }
  KEEL_UNARY_METHODS(KEEL_FORWARD_UNARY)
#undef KEEL_FORWARD_UNARY

  std::unique_ptr<WatchStream> Watch(
      const CallContext& ctx, StreamObserver<::etcdserverpb::WatchResponse>* observer) override {
    return inner_.Watch(ctx, observer);
  }
  std::unique_ptr<LeaseKeepAliveStream> LeaseKeepAlive(
      const CallContext& ctx,
      StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override {
    return inner_.LeaseKeepAlive(ctx, observer);
  }
  std::unique_ptr<ReadStream> Snapshot(
      const CallContext& ctx, ::etcdserverpb::SnapshotRequest request,
      StreamObserver<::etcdserverpb::SnapshotResponse>* observer) override {
    return inner_.Snapshot(ctx, std::move(request), observer);
  }
  std::unique_ptr<ReadStream> Observe(
      const CallContext& ctx, ::v3electionpb::LeaderRequest request,
      StreamObserver<::v3electionpb::LeaderResponse>* observer) override {
    return inner_.Observe(ctx, std::move(request), observer);
  }

 protected:
  Backend& inner() { return inner_; }

 private:
  Backend& inner_;
};

}  // namespace keel::api
