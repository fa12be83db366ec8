#pragma once

#include <grpcpp/support/status.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/client.h"

namespace keel::bench {

// gRPC method paths keel-bench calls.
inline constexpr char kRangeMethod[] = "/etcdserverpb.KV/Range";
inline constexpr char kPutMethod[] = "/etcdserverpb.KV/Put";
inline constexpr char kTxnMethod[] = "/etcdserverpb.KV/Txn";
inline constexpr char kWatchMethod[] = "/etcdserverpb.Watch/Watch";
inline constexpr char kLeaseGrantMethod[] = "/etcdserverpb.Lease/LeaseGrant";
inline constexpr char kLeaseRevokeMethod[] = "/etcdserverpb.Lease/LeaseRevoke";
inline constexpr char kLeaseKeepAliveMethod[] = "/etcdserverpb.Lease/LeaseKeepAlive";

// One bidirectional streaming call. Created by Transport::OpenStream; its
// handler's callbacks run on the call's queue (see Transport).
class StreamCall {
 public:
  // Receives a stream's messages and its end. Must outlive the call's end.
  class Handler {
   public:
    virtual ~Handler() = default;
    // One serialized response message.
    virtual void OnMessage(std::string_view message) = 0;
    // The call ended (the server's status, CANCELLED after Cancel, or
    // UNAVAILABLE when the connection broke). Called exactly once, last.
    virtual void OnEnd(const grpc::Status& status) = 0;
  };
  virtual ~StreamCall() = default;
  // Queues one serialized request message; sent in order, one write in
  // flight at a time. REQUIRES: on the call's queue, before OnEnd.
  virtual void Write(std::string message) = 0;
  // Ends the call; OnEnd follows with CANCELLED unless it already ended.
  // Thread-safe.
  virtual void Cancel() = 0;
};

// How keel-bench speaks gRPC to the endpoints: the --conns connections
// (each its own TCP connection, round-robin over the endpoints, with the
// --user token on every call) and a few threads ("queues") that run every
// callback. Two implementations (--transport): `grpc`, gRPC C++'s
// completion-queue client, and `h2`, gRPC's wire format written straight
// onto HTTP/2 with nghttp2, which costs the load generator a fraction of the
// CPU per message, so that on a small machine the figures measure the
// server rather than the client.
//
// Callbacks for calls started with the same (queue, conn) pair run on one
// thread, one at a time, so per-client state needs no lock. Use QueueFor to
// pick that pair's queue. Thread-safe; must outlive every call.
class Transport {
 public:
  using UnaryDone = std::function<void(const grpc::Status& status, std::string_view response)>;

  // Dials per --transport; errors as Connections::Dial (InvalidArgument for
  // an unknown transport or TLS with `h2`).
  static absl::StatusOr<std::unique_ptr<Transport>> Dial(const GlobalOptions& options);

  virtual ~Transport() = default;
  // Number of connections (--conns).
  virtual int conns() const = 0;
  // The queue whose thread runs the callbacks of client loop `client` on
  // connection `conn`.
  virtual int QueueFor(int client, int conn) const = 0;
  // Runs `fn` on `queue`'s thread at `when` (at once if it has passed).
  virtual void RunAt(int queue, absl::Time when, std::function<void()> fn) = 0;
  // Starts a unary call of `method` with the serialized `request` on
  // connection `conn`, with a deadline `timeout` from now unless it is
  // infinite; `done` runs once on `queue` with the status and the serialized
  // response (empty unless OK). REQUIRES: queue == QueueFor(c, conn) for
  // some client c; `method` outlives the call.
  virtual void Unary(int queue, int conn, const char* method, std::string request,
                     absl::Duration timeout, UnaryDone done) = 0;
  // Opens a streaming call of `method`; its handler runs on `queue`.
  // REQUIRES: as for Unary; on `queue`'s thread for the `h2` transport.
  virtual std::unique_ptr<StreamCall> OpenStream(int queue, int conn, const char* method,
                                                 StreamCall::Handler* handler) = 0;
  // Stops the queues after every started call ended. Idempotent.
  virtual void Shutdown() = 0;

  // A blocking unary call from any thread but the queues' (for phases that
  // send one request at a time), with a deadline `timeout` from now.
  grpc::Status CallSync(int conn, const char* method, std::string request, std::string* response,
                        absl::Duration timeout);
};

}  // namespace keel::bench
