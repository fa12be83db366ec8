#pragma once

// The grpc-proxy's innermost layer: an api::Backend that is a gRPC client of
// etcd endpoints (real etcd or keel members), with sticky endpoint choice and
// failover that keeps a dead member invisible to clients.

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "api/backend.h"
#include "grpcpp/security/credentials.h"

namespace keel::proxy::grpcproxy {

class RemoteEndpoints;

// How RemoteBackend reaches etcd.
struct RemoteOptions {
  std::vector<std::string> endpoints;  // "host:port", scheme already stripped, at least one
  std::shared_ptr<::grpc::ChannelCredentials> credentials;  // insecure or TLS, made by the caller
  int max_send_bytes = 1572864;                             // --max-send-bytes
  int max_recv_bytes = 2147483647;                          // --max-recv-bytes
  absl::Duration dial_timeout = absl::Seconds(5);
};

// An api::Backend that forwards every call to etcd over gRPC's callback
// client API (no thread per call or stream; nothing blocks).
//
// Endpoints. One grpc::Channel per endpoint (max message sizes from the
// options, keepalive pings every 10 s while calls are open, reconnect backoff
// capped at 2 s so a restarted member is used again quickly). Calls go to one
// preferred endpoint (sticky: Status, HashKV, Snapshot hit a stable member);
// when a call or stream is answered by another endpoint after failing over,
// that endpoint becomes the preferred one.
//
// Connecting and failover. Every attempt uses wait_for_ready(false): on a
// channel that is IDLE or CONNECTING the call waits for that connection
// attempt (bounded by dial_timeout, which is the channel's minimum connect
// timeout, and by the client's deadline) and is sent once it is READY; on a
// channel in TRANSIENT_FAILURE it fails at once, before anything is sent.
// Failures are classified by their grpc::Status:
//   - "not sent": UNAVAILABLE from the channel failing to connect ("failed to
//     connect to all addresses", connection refused, ...). Any call, reads
//     and writes alike, moves on to the next endpoint.
//   - "transport": any other UNAVAILABLE whose message is not etcd's
//     ("etcdserver: ..."), e.g. a connection reset while the call was open.
//     The request may have reached etcd, so only read-only calls (Range,
//     LeaseTimeToLive, LeaseLeases, MemberList, Status, Alarm GET, Hash,
//     HashKV, AuthStatus, UserGet/List, RoleGet/List, Leader) move on.
//   - anything else is etcd's answer (including etcd's own UNAVAILABLE
//     "etcdserver: no leader", "... request timed out", "... leader changed")
//     and is returned unchanged, code and message.
// Each endpoint is tried at most once per call; when all failed the last
// error is returned.
//
// Streams (Watch, LeaseKeepAlive, Snapshot, Observe) open on the preferred
// endpoint. If one fails with a not-sent or transport failure before any
// response arrived, it is reopened on the next endpoint and the requests
// written so far are replayed (every stream is idempotent until it has
// answered). After a response, losing etcd ends the stream with that status.
// A stream reads from etcd only when the caller's ReadNext() allows it; so
// it notices etcd going away when it next reads or writes.
//
// Metadata: CallContext::token goes out as "token", require_leader as
// "hasleader"="true", the deadline as the call's deadline.
// A unary request larger than max_send_bytes is refused unsent with
// EtcdStatus(kRequestTooLarge), the error etcd itself gives (a stream
// message that large fails the stream with gRPC's RESOURCE_EXHAUSTED).
//
// Thread-safe.
class RemoteBackend final : public api::Backend {
 public:
  // Never blocks, never fails: channels connect on first use.
  // REQUIRES: !options.endpoints.empty().
  explicit RemoteBackend(RemoteOptions options);
  // REQUIRES: every call and stream has completed (its OnDone/done ran),
  // and the caller is not inside one of this backend's callbacks (gRPC
  // cannot destroy a channel on its own callback thread).
  ~RemoteBackend() override;

  RemoteBackend(const RemoteBackend&) = delete;
  RemoteBackend& operator=(const RemoteBackend&) = delete;

#define KEEL_REMOTE_DECLARE_UNARY(service, method, Request, Response) \
  void method(const api::CallContext& ctx, Request request, api::Done<Response> done) override;
  KEEL_UNARY_METHODS(KEEL_REMOTE_DECLARE_UNARY)
#undef KEEL_REMOTE_DECLARE_UNARY

  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override;
  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override;
  std::unique_ptr<api::ReadStream> Snapshot(
      const api::CallContext& ctx, ::etcdserverpb::SnapshotRequest request,
      api::StreamObserver<::etcdserverpb::SnapshotResponse>* observer) override;
  std::unique_ptr<api::ReadStream> Observe(
      const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
      api::StreamObserver<::v3electionpb::LeaderResponse>* observer) override;

  // "host:port" of the endpoint calls currently go to.
  std::string CurrentEndpoint() const;

 private:
  std::unique_ptr<RemoteEndpoints> endpoints_;
};

}  // namespace keel::proxy::grpcproxy
