#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "common/metrics.h"
#include "google/protobuf/message_lite.h"
#include "proxy/grpc/relay_routes.h"

namespace keel::proxy::grpcproxy {

// The largest etcd answer the relay keeps to fill the cache with
// (FrameRelayOptions::end_fill); a larger one ends its ticket unfilled.
inline constexpr size_t kMaxFillResponseBytes = 64 * 1024;

// What the range cache can do for one Range (FrameRelayOptions::cached_range).
struct CachedRange {
  // Its response, gRPC-framed (api::GrpcFramed): the relay answers at once.
  std::optional<std::string> answer;
  // The cache does not hold it: the read goes straight to etcd, and etcd's
  // answer fills the cache under this ticket (FrameRelayOptions::end_fill).
  std::optional<uint64_t> fill;
};

// Receives what etcd sends on a stream the Backend chain opened through the
// relay (FrameRelay::OpenToEtcd). Called on one relay loop thread (or, for a
// stream still waiting when a relay that never ran is stopped, on the
// stopping thread), never overlapping, in order; OnEnd is the last call,
// exactly once. Must not block.
class EtcdStreamObserver {
 public:
  virtual ~EtcdStreamObserver() = default;
  // One response message, without its gRPC prefix.
  virtual void OnMessage(std::string_view message) = 0;
  // The stream ended: etcd's status, CANCELLED after Cancel(), UNAVAILABLE
  // when the connection to etcd was lost, etcd reset the stream or the relay
  // could not carry it (NeverSentToEtcd tells when etcd cannot have seen
  // it).
  virtual void OnEnd(absl::Status status) = 0;
};

// Whether an EtcdStreamObserver::OnEnd status says that etcd cannot have
// seen the stream (no connection came up, etcd refused the stream, the relay
// stopped before opening it), so that even a write may be sent again
// elsewhere. False for any other status, including a connection lost after
// it came up.
bool NeverSentToEtcd(const absl::Status& status);

// The chain's handle on a stream to etcd through the relay. Thread-safe;
// calls are carried out in order on the stream's loop. Destroying it does not
// end the stream (Cancel does).
class EtcdStream {
 public:
  virtual ~EtcdStream() = default;
  // Sends one request message.
  virtual void Write(const google::protobuf::MessageLite& request) = 0;
  // Half-closes: no more requests; responses go on.
  virtual void WritesDone() = 0;
  // Resets the stream; OnEnd(CANCELLED) follows unless it had ended.
  virtual void Cancel() = 0;
};

struct FrameRelayOptions {
  // How each method is treated; must outlive the relay.
  const RelayRoutes* routes = nullptr;
  // "host:port" of the etcd endpoint to relay to (the remote backend's
  // current one); asked each time a connection is opened.
  std::function<std::string()> upstream_endpoint;
  // TLS to etcd (MakeClientSslContext): each connection to etcd does its
  // handshake on the loop, checking that etcd's certificate names the
  // endpoint's host. Null: plain HTTP/2.
  std::shared_ptr<SSL_CTX> upstream_tls;
  // Hands one end of a new socketpair to the chain's gRPC server
  // (grpc::AddInsecureChannelFromFd); takes ownership of `fd`.
  std::function<void(int fd)> serve_internal;
  // Runs on a relay loop thread when etcd answered OK to a method with an
  // OkHook, before the client sees the answer. `revision` is the response
  // header's revision (0 when it has none).
  std::function<void(OkHook hook, int64_t revision)> on_ok;
  // For RelayRoute::cache_read methods (Range with the cache on): given the
  // request message of a token-less, non-hasleader call, what the cache can
  // do for it (CachedRange); neither an answer nor a fill sends the call
  // through the chain. Runs on a relay loop thread; must not block.
  std::function<CachedRange(std::string_view request)> cached_range;
  // Ends a CachedRange::fill ticket: `response` is etcd's whole OK answer,
  // or nullopt (the call failed, was sent again through the chain, or its
  // answer was too large to keep). Called exactly once per ticket, on the
  // loop thread that began it; must not block.
  std::function<void(uint64_t ticket, std::optional<std::string_view> response)> end_fill;
  // The Backend chain, as the front sees it. When set, RelayRoute::local
  // calls (Watch, LeaseKeepAlive, and unary calls a layer must see) are
  // served by the relay itself against it (local_call.h): no gRPC server
  // call, and a fan-out of events to many watchers is gathered into few
  // writes. Must outlive every local call: those Stop() saw end (it returned
  // true) are over, so the chain may go after Stop(), before the relay.
  api::Backend* chain = nullptr;
  // A request message of a local stream larger than this ends the call with
  // RESOURCE_EXHAUSTED, as the chain's gRPC server's receive limit does.
  uint64_t max_request_bytes = UINT64_MAX;
  // Advertised to clients (SETTINGS_MAX_CONCURRENT_STREAMS).
  uint32_t max_concurrent_streams = UINT32_MAX;
  // A request whose first message is larger runs through the chain, which
  // answers with etcd's own error.
  uint64_t max_send_bytes = 0;
  common::MetricsRegistry* metrics = nullptr;
  // Loop threads, each serving its share of the client connections with its
  // own connection to etcd (0: one per CPU this process may use, at most
  // 4). The callbacks above may run on several of them at once.
  int loops = 0;
};

// The grpc-proxy's HTTP/2 front (plain text, or TLS through ServeTls): it
// serves each client connection with nghttp2 and relays every stream, frame
// by frame, either
// straight to etcd over a shared HTTP/2 connection (methods no layer of the
// chain changes; see RelayRoutes) or to the chain's gRPC server over a
// socketpair, one per client connection. Messages are never decoded on the
// way, except the 5-byte gRPC prefix (sizes, counts) and the response
// header's revision for OkHook methods; a serializable Range the cache can
// answer is answered by the relay itself. So a passed-through call costs no
// gRPC server call and no gRPC client call: that is the whole point.
// Watch and LeaseKeepAlive streams, and unary calls a layer must see, are
// served by the relay itself against the chain's Backend
// (FrameRelayOptions::chain): their messages are decoded and encoded here,
// and the coalescers' fan-out reaches the loop's thread through one mailbox
// (one wake-up for many events).
//
// The chain's own streams to etcd (the coalescers' upstream streams, the
// range cache's revision probe) may ride the same connections (OpenToEtcd).
//
// Failure: while etcd cannot be reached, pass-through methods run through the
// chain (whose remote backend fails over). A request whose connection to etcd
// broke before an answer is sent again through the chain when that is safe
// (the connection never came up, or the method is read-only); otherwise the
// client gets UNAVAILABLE, as from the remote backend.
//
// Flow control is end to end: a client's window is opened only as its bytes
// leave for etcd, and etcd's only as they leave for the client.
//
// Each of a few threads runs an epoll loop over its share of the client
// connections (handed out in turn), with its own connection to etcd and its
// own mailbox (loop-confined state); Serve() and Stop() may be called from
// any thread.
class FrameRelay {
 public:
  explicit FrameRelay(FrameRelayOptions options);
  ~FrameRelay();  // Stop()s, then ends the chain's streams and the threads
  FrameRelay(const FrameRelay&) = delete;
  FrameRelay& operator=(const FrameRelay&) = delete;

  // Sets FrameRelayOptions::chain; only before Start(). (The chain may be
  // built after the relay, so that its streams to etcd are opened through
  // it from the first: see OpenToEtcd.)
  void SetChain(api::Backend* chain);

  // Starts the loop threads. Unavailable when epoll or eventfd fail.
  absl::Status Start();

  // Takes ownership of a connected client socket whose first bytes are the
  // HTTP/2 preface (still unread). Closes it once the relay is stopping.
  void Serve(int fd);

  // The same for a TLS client whose handshake is done (TlsTerminator): takes
  // ownership of `fd` and `ssl` (on it); `first_bytes`, the HTTP/2 preface
  // on, were already decrypted. Its bytes then go through OpenSSL on the
  // relay's own loop: no other thread, no copy through a socketpair.
  void ServeTls(int fd, SSL* ssl, std::string first_bytes);

  // Opens a stream to etcd for the chain (a coalescer's upstream Watch or
  // LeaseKeepAlive, the cache's watch, a KV call as a one-message stream) on
  // one of the relay's connections to etcd: its messages cost the relay's
  // framing, not a gRPC client call, and share the writes of the calls
  // passed through. Called on a loop's thread (a call the relay serves
  // against the chain, or a stream a coalescer opens for it), it uses that
  // loop's connection; otherwise the loops take turns. `path` is the
  // method's ("/etcdserverpb.Lease/LeaseKeepAlive"); ctx's token and
  // require_leader go as metadata, its deadline as grpc-timeout, and at the
  // deadline the stream is reset and ends with DEADLINE_EXCEEDED (ctx.cancel
  // is not watched). `observer` (not null) is kept until its OnEnd. Null
  // when the relay cannot carry it now: stopping, or etcd could not be
  // reached lately (the caller uses its gRPC client then, which fails over).
  // May be called before Start(): the stream opens once the relay runs (or
  // ends with UNAVAILABLE if it is stopped without having run).
  std::unique_ptr<EtcdStream> OpenToEtcd(std::string_view path, const api::CallContext& ctx,
                                         std::shared_ptr<EtcdStreamObserver> observer);

  // Sends GOAWAY to every client, lets open streams finish for up to `grace`,
  // then closes every client connection and waits for the local calls to
  // end. Idempotent. Returns false when some local call's backend had not
  // confirmed its end within the drain time: the Backend chain may still be
  // running it, so it must not be destroyed. The chain's streams to etcd
  // (OpenToEtcd) go on until the relay is destroyed, so that the chain,
  // destroyed before it, closes them itself (quietly); destroying the relay
  // ends what is left with UNAVAILABLE and joins the threads.
  bool Stop(absl::Duration grace);

  // A loop's state (frame_relay.cc); named here only so that the file's
  // nghttp2 callbacks can reach it.
  struct Loop;

 private:
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<size_t> next_loop_{0};
  std::atomic<size_t> next_etcd_stream_loop_{0};
};

}  // namespace keel::proxy::grpcproxy
