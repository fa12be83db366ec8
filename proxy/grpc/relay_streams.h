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
// is attached, or the relay refuses (etcd unreachable lately, a deadline,
// stopping), the stream goes to `inner` (the remote backend), whose gRPC
// client fails over.
// A stream on the relay that loses its connection ends with UNAVAILABLE, as
// one on the gRPC client does; the coalescers reopen it.

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
  explicit RelayStreamsBackend(api::Backend& inner) : ForwardingBackend(inner) {}

  // Streams opened from now on use `relay` (which must not be destroyed
  // before Detach() returns; it may be started later).
  void Attach(FrameRelay* relay) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams opened from now on use `inner`; those on the relay go on until
  // their owners close them or the relay is destroyed.
  void Detach() ABSL_LOCKS_EXCLUDED(mu_);

  // A read-only call (the range cache's revision probe, chiefly): on the
  // relay when the call has no deadline and no cancel hook, else (or when the
  // relay cannot carry it) through `inner`.
  void Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
             api::Done<::etcdserverpb::RangeResponse> done) override;
  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override;
  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override;

 private:
  template <class Request, class Response>
  std::unique_ptr<api::BidiStream<Request>> OpenOnRelay(std::string_view path,
                                                        const api::CallContext& ctx,
                                                        api::StreamObserver<Response>* observer)
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  FrameRelay* relay_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace keel::proxy::grpcproxy
