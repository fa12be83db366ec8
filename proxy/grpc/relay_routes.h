#pragma once

#include <deque>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "api/server/method_metrics.h"
#include "common/metrics.h"
#include "proxy/grpc/local_call.h"

namespace keel::proxy::grpcproxy {

// What the proxy must do once etcd answered a passed-through call with OK,
// before the client is told (so that a layer of the chain still sees what it
// needs, without the call running through it).
enum class OkHook {
  kNone,
  // The range cache's read-your-writes: raise its acknowledged revision to the
  // response header's revision (CachingBackend::NoteWriteAcknowledged).
  kNoteWriteRevision,
  // An auth change: the range cache's entries are flushed.
  kFlushCache,
};

// How the frame relay treats one gRPC method.
struct RelayRoute {
  // Sent straight to etcd, frames relayed; otherwise through the Backend chain.
  bool pass_through = false;
  // May be sent again (through the chain) after the connection to etcd broke
  // with the request already sent: the call changes nothing (remote_backend.cc
  // retries the same ones).
  bool read_only = false;
  OkHook on_ok = OkHook::kNone;
  // Range with the cache on: a token-less serializable read may be answered
  // by the relay itself from the cache, and a linearizable one the cache does
  // not hold goes straight to etcd and fills it (FrameRelayOptions::cached_range).
  bool cache_read = false;
  // Watch, LeaseKeepAlive and every unary method that must see a layer:
  // served by the relay itself against the Backend chain (when it has one)
  // with this factory, instead of through the chain's gRPC server; null for
  // the others.
  LocalCallFactory local = nullptr;
  // The go-grpc-prometheus counters of the method, shared with the front.
  api::server::MethodMetrics* metrics = nullptr;
};

// Which layers the chain has; they decide which methods must run through it.
struct RelayRouteOptions {
  bool cache = false;      // --range-cache-max-bytes > 0
  bool namespaced = false; // --namespace set
};

// The route of every method of the eight services, by gRPC path
// ("/etcdserverpb.KV/Put"). A method runs through the chain iff one of its
// layers changes it: the cluster view (MemberList), watch and keep-alive
// coalescing (Watch, LeaseKeepAlive), the namespace (keys, names, leases'
// keys), the cache (Range; writes and auth changes pass through with an
// OkHook instead). Anything not in the table (an unknown path) runs through
// the chain too, whose gRPC server answers UNIMPLEMENTED.
// Thread-compatible; Find() is safe from any thread once built.
class RelayRoutes {
 public:
  // `metrics` may be null; it must outlive this object.
  RelayRoutes(const RelayRouteOptions& options, common::MetricsRegistry* metrics);
  RelayRoutes(const RelayRoutes&) = delete;
  RelayRoutes& operator=(const RelayRoutes&) = delete;

  // The route of `path`, or null when it is not an etcd method.
  const RelayRoute* Find(std::string_view path) const;

 private:
  std::deque<api::server::MethodMetrics> metrics_;
  absl::flat_hash_map<std::string, RelayRoute> routes_;
};

}  // namespace keel::proxy::grpcproxy
