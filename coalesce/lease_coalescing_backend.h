#pragma once

// Lease keep-alive coalescing (issue 5; spec/proxy.md 2.7, 3.3, scenarios
// 33-38): a Backend decorator that serves every client LeaseKeepAlive stream
// over one shared upstream LeaseKeepAlive stream per require_leader flag. The
// decisions are the pure core's (coalesce/lease_coalescer.h); this is its
// glue.
//
// What every client sees (etcd's own server semantics, not etcd's proxy's):
//  - each request is answered by exactly one reply, after at most one upstream
//    round trip; a request for a lease whose upstream request is in flight
//    shares that request's reply;
//  - a lease is refreshed upstream only because a client asked, so it expires
//    on the client's own TTL after its last keep-alive (no ~2x TTL, #13031);
//  - a revoked, expired or unknown lease is answered with TTL 0;
//  - a half-closed stream gets the replies it is owed, then OnDone(OK) (#9751);
//  - Cancel() or destroying the handle: the client's pending requests are
//    forgotten and OnDone(CANCELLED) follows exactly once (unless the stream
//    had already ended); other clients are unaffected.
//
// Choices:
//  - Auth: the upstream streams carry no token (etcd does not check auth on
//    keep-alives; etcd's proxy does the same). ctx.token of a client is
//    ignored; ctx.deadline is the front's to enforce (it cancels the handle).
//  - require_leader: clientv3 (etcdctl, concurrency.Session, Kubernetes)
//    always opens its keep-alive stream with "hasleader", so those clients are
//    coalesced too: every client with ctx.require_leader shares a second
//    upstream stream opened with require_leader (two independent cores, one
//    per flag). When that upstream stream ends with `etcdserver: no leader`
//    (EtcdError::kNoLeader), every require-leader client stream ends with
//    exactly that status (after the replies it was already owed), as etcd
//    ends them; clients without require_leader are unaffected. A
//    require-leader client that opens or writes later opens a new upstream
//    stream, which etcd again ends while it has no leader. Idle
//    require-leader clients learn of a lost leader only when an upstream
//    stream exists (i.e. when some require-leader client has a request
//    waiting or made one since the last loss).
//  - Upstream failure (any other end): when the upstream stream ends while
//    requests are waiting, a new one is opened and the requests are re-sent
//    (one per lease). Reopening backs off: at once after a stream that had
//    answered, then 50 ms doubling to 2 s while streams keep failing without
//    answering (reset by any upstream reply), so a dead etcd costs a few
//    attempts per second, not a busy loop. Clients are not failed because of
//    the upstream: their requests wait (their own cancel or deadline ends
//    them, or the backlog bound below) and a reply after the reconnect still
//    reaches them. An upstream stream that neither answers nor fails is not
//    detected (RemoteBackend's gRPC keepalive pings end a dead connection).
//  - When nothing is waiting, a lost upstream stream is not reopened; the next
//    client request opens one.
//  - Backlog bound: a client's replies not yet delivered plus its requests
//    not yet answered may not exceed kMaxClientBacklog (1024). A request
//    beyond that (a client that writes keep-alives but never reads replies,
//    or keeps writing through a long upstream outage) ends that client's
//    stream at once with RESOURCE_EXHAUSTED "lease keep-alive stream ended:
//    more than 1024 keep-alive requests unanswered or replies unread";
//    undelivered replies are dropped. clientv3 reopens its stream after such
//    an error.
//
// Logging (common::Logger("grpc-proxy")): a warning when an upstream stream
// fails while requests wait and is being reopened (once per failure streak,
// not per retry), a warning when require-leader clients are ended because
// etcd has no leader (once until a reply comes again, not per client retry),
// and info when a reply arrives after either.
//
// Flow control towards each client is the Backend contract's: one OnResponse
// per ReadNext(). Replies wait in a per-client queue, bounded as above. Each
// upstream stream always has one ReadNext() outstanding (its replies are
// consumed at once).
//
// Metrics (in `metrics` when one is given):
//  - keel_lease_keepalive_client_streams: gauge, coalesced client streams
//    still open (not cancelled, not finished), both flags;
//  - keel_lease_keepalive_upstream_streams: gauge, upstream streams open (0
//    to 2: one per require_leader flag);
//  - keel_lease_keepalive_client_requests_total: counter, keep-alive requests
//    received on client streams;
//  - keel_lease_keepalive_upstream_requests_total: counter, keep-alive
//    requests written upstream (<= client requests, plus re-sends after an
//    upstream stream was lost).
//
// Threads: thread-safe. One absl::Mutex guards the cores and every stream's
// state; nothing is called out (inner backend, observers, logger) under it.
// Observer callbacks of a client stream run on the thread that made them
// deliverable (an upstream callback thread, or the thread calling the
// handle's ReadNext, Write, WritesDone or Cancel), never overlapping, in
// order. One internal thread reopens upstream streams after a delay and frees
// ended ones once their OnDone has returned.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "coalesce/lease_coalescer.h"
#include "common/metrics.h"
#include "spdlog/spdlog.h"

namespace keel::coalesce {

// See the file comment. Every call other than LeaseKeepAlive is forwarded
// unchanged.
class LeaseCoalescingBackend final : public api::ForwardingBackend {
 public:
  // `inner` must outlive this object. `metrics` may be null (no metrics); if
  // given it must outlive this object.
  LeaseCoalescingBackend(api::Backend& inner, common::MetricsRegistry* metrics);
  // Cancels the upstream stream and waits until its OnDone has returned, so
  // no callback touches this object afterwards. REQUIRES: every client stream
  // handle returned by LeaseKeepAlive has been destroyed, and the caller is
  // not inside a callback of `inner` or of one of our streams.
  ~LeaseCoalescingBackend() override;

  // The most replies not yet delivered plus requests not yet answered one
  // client stream may have; one more request ends it (RESOURCE_EXHAUSTED).
  static constexpr size_t kMaxClientBacklog = 1024;

  LeaseCoalescingBackend(const LeaseCoalescingBackend&) = delete;
  LeaseCoalescingBackend& operator=(const LeaseCoalescingBackend&) = delete;

  // A coalesced keep-alive stream. OnDone is OK after a half-close once every
  // reply is delivered, CANCELLED after Cancel()/handle destruction,
  // RESOURCE_EXHAUSTED when its backlog overflows, and (require_leader only)
  // `etcdserver: no leader` when etcd has none. The handle must not outlive
  // this backend.
  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) override;

 private:
  struct Client;
  struct Upstream;
  struct Lane;
  class ClientHandle;
  class UpstreamObserver;
  struct Effects;

  // Client handle entry points.
  // (By value: a handle may be destroyed inside the call, with its pointer.)
  void ClientWrite(std::shared_ptr<Client> client, int64_t lease_id);
  void ClientWritesDone(std::shared_ptr<Client> client);
  void ClientReadNext(std::shared_ptr<Client> client);
  void ClientCancel(std::shared_ptr<Client> client);

  // Upstream observer entry points. `up` stays alive until UpstreamDone has
  // returned (it is freed by the worker after that).
  void UpstreamResponse(Upstream& up, const ::etcdserverpb::LeaseKeepAliveResponse& response);
  void UpstreamDone(Upstream& up, const absl::Status& status);

  // Turns `lane`'s core actions into state changes (queued replies,
  // finishes) and into the calls to make once mu_ is released (collected in
  // `fx`). `open_inline`: an OpenUpstream without backoff may be opened by
  // the caller; otherwise it goes to the worker thread.
  void Apply(Lane& lane, std::vector<Action> actions, bool open_inline, Effects& fx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the calls collected in `fx`. REQUIRES: mu_ not held.
  void Run(Effects& fx) ABSL_LOCKS_EXCLUDED(mu_);
  // Opens `lane`'s upstream generation `id` on inner (unless shutting down).
  void OpenUpstreamNow(Lane& lane, UpstreamId id) ABSL_LOCKS_EXCLUDED(mu_);
  // Delivers what client `client` may receive now, one callback at a time.
  void Pump(std::shared_ptr<Client> client) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends `client` with `status` at once (its queue dropped); Pump delivers.
  void Abort(Client& client, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets a client (core, map, gauge). Idempotent.
  void ForgetClient(Client& client) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the upstream gauge from the lanes' open streams.
  void UpdateUpstreamGauge() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The worker thread: delayed reopens, freeing ended upstream streams.
  void WorkerLoop();

  // Used when no registry is given, so the counters always exist.
  const std::unique_ptr<common::MetricsRegistry> own_metrics_;
  common::MetricsRegistry* const metrics_;
  common::Gauge* client_streams_ = nullptr;
  common::Gauge* upstream_streams_ = nullptr;
  common::Counter* client_requests_ = nullptr;
  common::Counter* upstream_requests_ = nullptr;
  const std::shared_ptr<spdlog::logger> log_;

  absl::Mutex mu_;
  absl::CondVar worker_cv_;
  ClientId next_client_ ABSL_GUARDED_BY(mu_) = 1;
  // [0]: clients without require_leader, [1]: with it. Each has its own core
  // and its own upstream stream.
  std::unique_ptr<Lane> lanes_[2] ABSL_GUARDED_BY(mu_);
  // Upstream streams whose OnDone has returned, freed by the worker (never
  // on their own callback's stack).
  std::vector<std::shared_ptr<Upstream>> retired_ ABSL_GUARDED_BY(mu_);
  // Opens in progress (inner.LeaseKeepAlive running outside mu_).
  int opening_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace keel::coalesce
