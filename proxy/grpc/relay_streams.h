#pragma once

// The chain's own streams and calls to etcd (the coalescers' upstream
// streams, the range cache's watch, the KV calls below) over the frame
// relay's connections to etcd (FrameRelay::OpenToEtcd) instead of the gRPC
// client: a keep-alive or a watch event costs the relay's framing (a few µs,
// sent with the relay's other writes) rather than a gRPC client call (about
// 27 µs of CPU per keep-alive here, most of it on gRPC's own threads, one
// sendmsg each).
//
// The relay is attached before the chain above is built (so that the streams
// it opens at once, like the cache's watch, ride the relay from the first;
// they wait until the relay starts) and detached before it stops. While none
// is attached, or the relay refuses (etcd unreachable lately, stopping), the
// stream goes to `inner` (the remote backend), whose gRPC client fails over.
// A stream on the relay that loses its connection ends with UNAVAILABLE, as
// one on the gRPC client does; its owner (a coalescer, the cache) reopens
// it. The KV calls the chain makes (the range cache's probe and misses, a
// namespaced proxy's reads and writes) ride the relay as one-message
// streams; one that ends so before an answer is sent again through `inner`
// when the gRPC client's rule allows it (reads always, writes only when
// etcd never saw them).

#include <limits>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "api/backend.h"
#include "proxy/grpc/frame_relay.h"

namespace keel::proxy::grpcproxy {

// Watch, LeaseKeepAlive, Range, Put, DeleteRange and Txn through the relay
// when one is attached; every other call (and those when none is) goes to
// `inner` unchanged.
// Thread-safe.
class RelayStreamsBackend final : public api::ForwardingBackend {
 public:
  // A KV request larger than `max_request_bytes` (--max-send-bytes) goes to
  // `inner`, which answers it with etcd's error.
  explicit RelayStreamsBackend(api::Backend& inner,
                               size_t max_request_bytes = std::numeric_limits<size_t>::max())
      : ForwardingBackend(inner), max_request_bytes_(max_request_bytes) {}

  // Streams opened from now on use `relay` (which must not be destroyed
  // before Detach() returns; it may be started later).
  void Attach(FrameRelay* relay) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams opened from now on use `inner`; those on the relay go on until
  // their owners close them or the relay is destroyed.
  void Detach() ABSL_LOCKS_EXCLUDED(mu_);

  // The KV calls the chain makes (the range cache's revision probe and
  // misses, a namespaced proxy's reads and writes): on the relay (the
  // caller's cancel hook resets its stream), else (when the relay does not
  // take it) through `inner`. One the relay takes but cannot deliver is sent
  // again through `inner` by the gRPC client's own rule: a Range always, a
  // write only when etcd never saw it (a write whose connection was lost
  // after it left ends with UNAVAILABLE, as on the gRPC client); when this is
  // detached by then (the proxy is stopping): UNAVAILABLE. So this object
  // must outlive the relay's calls (ProxyServer destroys the relay first).
  void Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
             api::Done<::etcdserverpb::RangeResponse> done) override ABSL_LOCKS_EXCLUDED(mu_);
  void Put(const api::CallContext& ctx, ::etcdserverpb::PutRequest request,
           api::Done<::etcdserverpb::PutResponse> done) override ABSL_LOCKS_EXCLUDED(mu_);
  void DeleteRange(const api::CallContext& ctx, ::etcdserverpb::DeleteRangeRequest request,
                   api::Done<::etcdserverpb::DeleteRangeResponse> done) override
      ABSL_LOCKS_EXCLUDED(mu_);
  void Txn(const api::CallContext& ctx, ::etcdserverpb::TxnRequest request,
           api::Done<::etcdserverpb::TxnResponse> done) override ABSL_LOCKS_EXCLUDED(mu_);
  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override;
  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override;

 private:
  // Null when no relay is attached or it refuses.
  std::shared_ptr<EtcdStream> OpenEtcdStream(std::string_view path, const api::CallContext& ctx,
                                             std::shared_ptr<EtcdStreamObserver> observer)
      ABSL_LOCKS_EXCLUDED(mu_);
  template <class Request, class Response>
  using InnerMethod = void (api::Backend::*)(const api::CallContext&, Request, api::Done<Response>);
  // One unary call on the relay (see Range); `method` is inner's for it.
  template <class Request, class Response>
  void UnaryOnRelay(const std::string& path, InnerMethod<Request, Response> method,
                    const api::CallContext& ctx, Request request, api::Done<Response> done)
      ABSL_LOCKS_EXCLUDED(mu_);
  template <class Request, class Response>
  std::unique_ptr<api::BidiStream<Request>> OpenOnRelay(std::string_view path,
                                                        const api::CallContext& ctx,
                                                        api::StreamObserver<Response>* observer)
      ABSL_LOCKS_EXCLUDED(mu_);

  const size_t max_request_bytes_;
  absl::Mutex mu_;
  FrameRelay* relay_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace keel::proxy::grpcproxy
