#pragma once

// The coalescers' upstream streams over the frame relay's connections to
// etcd (FrameRelay::OpenToEtcd) instead of the gRPC client: a keep-alive or a
// watch event costs the relay's framing (a few µs, sent with the relay's
// other writes) rather than a gRPC client call (about 27 µs of CPU per
// keep-alive here, most of it on gRPC's own threads, one sendmsg each).
//
// The relay is attached before the chain above is built (so that the streams
// it opens at once, like the cache's watch, ride the relay from the first;
// they wait until the relay starts) and detached before it stops. While none
// is attached, or the relay refuses (etcd unreachable lately, stopping), the
// stream goes to `inner` (the remote backend), whose gRPC client fails over.
// A stream on the relay that loses its connection ends with UNAVAILABLE, as
// one on the gRPC client does; the coalescers reopen it. A Range (the range
// cache's revision probe) rides the relay as a one-message stream; one that
// ends so before an answer is sent again through `inner`.

#include <limits>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "api/backend.h"
#include "proxy/grpc/frame_relay.h"

namespace keel::proxy::grpcproxy {

// Watch, LeaseKeepAlive and Range through the relay when one is attached;
// every other call (and those when none is) goes to `inner` unchanged.
// Thread-safe.
class RelayStreamsBackend final : public api::ForwardingBackend {
 public:
  // A Range larger than `max_request_bytes` (--max-send-bytes) goes to
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

  // A read-only call (the range cache's revision probe, the reads of a
  // namespaced proxy): on the relay (the caller's cancel hook resets its
  // stream), else (when the relay does not take it) through `inner`. One the relay takes but cannot
  // deliver is sent again through `inner`, unless this is detached by then
  // (the proxy is stopping): UNAVAILABLE. So this object must outlive the
  // relay's calls (ProxyServer destroys the relay first).
  void Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
             api::Done<::etcdserverpb::RangeResponse> done) override ABSL_LOCKS_EXCLUDED(mu_);
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
  std::unique_ptr<api::BidiStream<Request>> OpenOnRelay(std::string_view path,
                                                        const api::CallContext& ctx,
                                                        api::StreamObserver<Response>* observer)
      ABSL_LOCKS_EXCLUDED(mu_);

  const size_t max_request_bytes_;
  absl::Mutex mu_;
  FrameRelay* relay_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace keel::proxy::grpcproxy
