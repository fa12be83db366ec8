#pragma once

// --resolver-prefix / --resolver-ttl: the proxy announces itself under a key
// prefix so that other proxies (ClusterViewBackend) and grpc-go's etcd naming
// resolver can find it (spec/proxy.md 2.6).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/statusor.h"
#include "api/backend.h"

namespace keel::proxy::grpcproxy {

// One endpoint as etcd's gRPC naming resolver stores it.
struct RegisteredEndpoint {
  int op = 0;        // 0: add, 1: delete
  std::string addr;  // the proxy's advertised client URL
  std::string name;  // the "name" in its metadata (the proxy's hostname)
};

// The registration value for `addr`, byte for byte what etcd's proxy writes:
// {"Op":0,"Addr":"<addr>","Metadata":"{\"name\":\"<hostname>\"}"}
// (Metadata is itself a JSON document, carried as a string). Thread-safe.
std::string EncodeRegistrationValue(std::string_view addr, std::string_view hostname);

// Parses a registration value as etcd's proxy does: a JSON object with
// optional "Op" (integer 0..255), "Addr" (string) and "Metadata", which must
// be a string holding a JSON object (or null) with an optional string "name".
// InvalidArgument naming the problem otherwise. Thread-safe.
absl::StatusOr<RegisteredEndpoint> DecodeRegistrationValue(std::string_view value);

// What to register.
struct RegistrationOptions {
  std::string prefix;     // --resolver-prefix
  int ttl_seconds;        // --resolver-ttl (>= 1)
  std::string advertise;  // --advertise-client-url
  std::string hostname;
};

// Keeps key `prefix + "/" + advertise` (value EncodeRegistrationValue) in
// etcd, attached to a lease of ttl_seconds, like etcd's proxy: LeaseGrant,
// then a Txn putting the key with the lease, then a LeaseKeepAlive stream
// sending one request every TTL/3 (TTL as the server last answered). The
// registration is lost when a keepalive answers TTL <= 0, the stream ends, or
// no keepalive answer came for a whole TTL (the lease may have expired); then
// it starts over. Failed attempts are retried; attempts start at most once per
// second. Calls go through `backend` (so the namespace decorator applies, as
// in etcd) without a token: registration is proxy-internal (spec 2.11), and
// each unary call has a deadline of max(TTL, 5 s).
// Runs on its own thread; Backend callbacks only record results. Thread-safe.
// `backend` must outlive this object.
class Registration {
 public:
  // REQUIRES: options.ttl_seconds >= 1, !options.prefix.empty(),
  // !options.advertise.empty().
  Registration(api::Backend& backend, RegistrationOptions options);
  ~Registration();  // Stop()s
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

  // Returns at once; registers in the background and re-registers after loss.
  // Calls after the first are ignored.
  void Start();
  // Stops the background thread: cancels the keepalive stream and waits for
  // its OnDone, and waits for a unary call in flight (bounded by its
  // deadline), so no callback of this object runs once Stop() has returned and
  // `backend` may then be destroyed. Idempotent. Does not revoke the lease:
  // etcd lets it expire, and so the key disappears within the TTL.
  void Stop();

 private:
  struct Shared;
  class KeepAliveObserver;

  void Run();
  // One LeaseGrant + Txn. The lease ID and its granted TTL on success.
  absl::StatusOr<std::pair<int64_t, int64_t>> RegisterOnce();
  // Keeps `lease_id` alive until it is lost or Stop() is called.
  void KeepAlive(int64_t lease_id, int64_t ttl_seconds);
  // A unary call through backend_, waiting for its answer.
  template <class Request, class Response>
  absl::StatusOr<Response> Call(void (api::Backend::*method)(const api::CallContext&, Request,
                                                             api::Done<Response>),
                                Request request);
  // Waits until `deadline` or Stop(); false on Stop().
  bool SleepUntil(absl::Time deadline);

  api::Backend& backend_;
  const RegistrationOptions options_;
  const std::string key_;
  const std::string value_;
  std::shared_ptr<Shared> shared_;
  std::thread thread_;  // touched only by Start() and Stop(), under shared_->start_mu
};

}  // namespace keel::proxy::grpcproxy
