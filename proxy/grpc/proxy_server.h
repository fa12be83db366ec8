#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "proxy/grpc/proxy_flags.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace keel::api {
class Backend;
namespace server {
class Front;
}  // namespace server
}  // namespace keel::api

namespace keel::proxy::grpcproxy {

class RemoteBackend;
class RelayStreamsBackend;
class ClusterViewBackend;
class FrameRelay;
class RelayRoutes;
class HealthChecker;
class TlsTerminator;
class Registration;

// The running grpc-proxy: the Backend chain
//   Front -> ClusterViewBackend -> [NamespaceBackend if --namespace]
//         -> [CachingBackend unless --range-cache-max-bytes=0]
//         -> WatchCoalescingBackend -> LeaseCoalescingBackend
//         -> RelayStreamsBackend (the chain's streams and KV calls over the
//            relay; the cache opens its watch here, below the coalescers)
//         -> RemoteBackend
// behind a grpc::Server on --listen-addr, resolver registration and
// /health, /metrics, /backend/metrics, /version over HTTP/1.1.
//
// Listener. The proxy owns the listening socket and, as etcd's cmux does,
// shares it between gRPC and HTTP/1.1: an accept thread peeks at each
// connection's first bytes; the HTTP/2 preface ("PRI * ...") goes to the
// frame relay (FrameRelay: methods no layer changes are relayed straight to
// etcd, over TLS when the proxy dials etcd with TLS; the rest reach the
// gRPC server of the chain over a socketpair), anything else to the HTTP
// server. Without the relay (a --max-recv-bytes below its default, or
// KEEL_FRAME_RELAY=off in the environment) HTTP/2 connections go to the
// gRPC server directly
// (grpc::AddInsecureChannelFromFd). With server TLS on, the TlsTerminator
// does the handshake and peeks at the decrypted bytes instead: HTTP/2 goes
// to the relay, which takes the connection whole and speaks TLS itself, or
// (without the relay) to the gRPC server over a socketpair the terminator
// copies to; anything else to the HTTP server over such a socketpair. So
// HTTP/1.1 (/health, /metrics) works on the TLS port too (etcd documents
// that as a known issue of its proxy).
// --metrics-addr always serves the same HTTP paths as the main port, over
// TCP or a unix socket, with TLS (the listener's certificate, and client
// certificates when the main port asks for them) for https:// and unixs://.
//
// The backend need not be reachable for Start() to succeed (etcd's proxy
// starts anyway); /health reports it. Thread-compatible: Start() and Stop()
// from one thread (main).
class ProxyServer {
 public:
  // `config` as ToProxyConfig made it; config.endpoints must not be empty
  // (SRV discovery, if any, already resolved into it).
  explicit ProxyServer(ProxyConfig config);
  ~ProxyServer();  // Stop()s
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Builds the chain and starts serving; logs etcd's lines "listening for
  // gRPC proxy client requests" and "started gRPC proxy" (field address).
  // Errors: InvalidArgument from the TLS options (bad files, a client cert
  // with a Common Name); Unavailable with Go's wording when a listener cannot
  // be bound ("listen tcp 127.0.0.1:23790: bind: address already in use") or
  // the gRPC server does not start. On error nothing keeps running.
  // REQUIRES: called once.
  absl::Status Start();

  // Stops registration (the lease is left to expire, as etcd does), stops
  // accepting, shuts the gRPC server down (calls still open after `grace`
  // are cancelled) and stops the HTTP server. Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(2));

  // The bound port of --listen-addr (useful with port 0), valid after Start().
  int port() const { return port_; }

 private:
  // The accept loop of the shared port (see the class comment).
  void AcceptLoop();
  // Hands a client connection (plain, or decrypted by tls_) whose first
  // bytes were peeked to the relay or the gRPC server (`http2`) or to the
  // HTTP server; closes it once Stop() began.
  void Dispatch(int fd, bool http2);
  // Binds --metrics-addr and starts the HTTP server: on it, or, for
  // https:// and unixs://, behind the listener's TLS terminator (the accept
  // loop takes those connections).
  absl::Status StartMetricsListener();
  // GET of `path` (plain HTTP) on the remote backend's current endpoint, as
  // the answer to `request`: the backend's answer whatever its status, 500
  // with the error if it could not be fetched (3 s limit), 405 unless the
  // request is a GET or HEAD.
  common::HttpResponse FetchFromBackend(const common::HttpRequest& request,
                                        const std::string& path);

  const ProxyConfig config_;
  common::MetricsRegistry metrics_;
  std::unique_ptr<RemoteBackend> remote_;
  // The chain's streams and KV calls to etcd over the relay (when there is
  // one), the cache's watch among them.
  std::unique_ptr<RelayStreamsBackend> relay_streams_;
  std::unique_ptr<api::Backend> lease_coalescing_;
  std::unique_ptr<api::Backend> watch_coalescing_;
  std::unique_ptr<api::Backend> cache_;      // null with --range-cache-max-bytes=0
  std::unique_ptr<api::Backend> namespace_;  // null without --namespace
  std::unique_ptr<ClusterViewBackend> cluster_view_;
  std::unique_ptr<api::server::Front> front_;
  std::unique_ptr<HealthChecker> health_;
  std::unique_ptr<Registration> registration_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<RelayRoutes> relay_routes_;
  std::unique_ptr<FrameRelay> relay_;  // null when not used (see the class comment)
  std::unique_ptr<TlsTerminator> tls_;  // null without server TLS
  std::string metrics_unix_path_;  // a unix socket file --metrics-addr made, removed at Stop()
  std::atomic<bool> draining_{false};
  common::HttpServer http_;
  int listen_fd_ = -1;  // the shared listener
  int metrics_tls_fd_ = -1;  // an https:// or unixs:// --metrics-addr (the accept loop's)
  int wake_pipe_[2] = {-1, -1};
  std::thread accept_thread_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace keel::proxy::grpcproxy
