#pragma once

#include <memory>

#include "api/backend.h"
#include "common/metrics.h"
#include "grpcpp/server_builder.h"

namespace keel::api::server {

// Options of a Front.
struct FrontOptions {
  // Optional; when set, per-method counters are registered in it, in
  // go-grpc-prometheus's names: grpc_server_started_total and
  // grpc_server_handled_total{grpc_type,grpc_service,grpc_method[,grpc_code]}
  // (grpc_service like "etcdserverpb.KV", grpc_code like "OK", "InvalidArgument"),
  // plus grpc_server_msg_received_total and grpc_server_msg_sent_total. Every
  // series is registered up front (at zero), as go-grpc-prometheus does. Must
  // outlive the Front.
  common::MetricsRegistry* metrics = nullptr;
};

// The front: etcd's eight gRPC services (KV, Watch, Lease, Cluster,
// Maintenance, Auth, Lock, Election) on gRPC's callback API, each call turned
// into the matching call on a Backend. No thread per call or stream; nothing
// blocks in a reaction.
//
// Each call's CallContext comes from the client: metadata "token" → token,
// "hasleader" = "true" → require_leader, the client's deadline → deadline.
// Unary calls finish with what the Backend's Done gets: the response, or the
// status with code and message unchanged (etcd's error strings pass through).
// Streams relay both ways with end-to-end flow control (one response asked of
// the backend per response written to the client); a client's half-close
// becomes WritesDone() and the stream goes on (as with etcd itself); the
// backend's OnDone status ends the call; a client's cancellation (or expired
// deadline, or server shutdown) becomes Cancel() on the backend stream. Every
// stream's reactor stays alive until the backend's OnDone, so the Backend must
// always end its streams (it must after Cancel()). Stop the server with
// Shutdown(deadline): streams still open at the deadline are cancelled that
// way, whereas a plain Shutdown() waits for them (e.g. idle watches) forever.
//
// Thread-safe: the server calls into it from any of its threads.
class Front {
 public:
  // `backend` must outlive the Front.
  Front(Backend& backend, FrontOptions options = {});
  ~Front();
  Front(const Front&) = delete;
  Front& operator=(const Front&) = delete;

  // Registers the eight services on `builder`. The Front and the Backend must
  // outlive the server built from it. REQUIRES: called at most once.
  void Register(grpc::ServerBuilder& builder);

 private:
  struct Services;
  std::unique_ptr<Services> services_;
};

}  // namespace keel::api::server
