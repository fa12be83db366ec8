#pragma once

// The range cache decorator (issue 5; spec/proxy.md 2.4, 3.2; scenarios
// 12-17): serves Range from cache::RangeCache, kept coherent by ONE watch on
// the whole keyspace (so writes from any client, lease expiries and other
// proxies invalidate it, not only writes through this proxy), keyed per auth
// identity, bounded by bytes. See cache/README.md for the rules.

#include <cstdint>
#include <memory>
#include <optional>
#include <thread>

#include "absl/time/time.h"
#include "api/backend.h"
#include "common/metrics.h"

namespace keel::cache {

// Tuning of CachingBackend. Only max_bytes is a flag
// (--range-cache-max-bytes; 0 = no cache, the decorator is left out).
struct CacheOptions {
  // Bound on the cached bytes (keys, their index copies, responses and a
  // fixed per-entry overhead); LRU eviction past it.
  uint64_t max_bytes = 64 << 20;
  // How long a linearizable Range waits for the cache's watch to reach the
  // revision its probe returned before it is simply forwarded.
  absl::Duration linearizable_wait = absl::Seconds(1);
  // Backoff between attempts to (re)open the cache's watch: doubles from the
  // first value up to the second; starts again once a watch has delivered a
  // response after `created` or stayed live for max_watch_backoff.
  absl::Duration min_watch_backoff = absl::Milliseconds(100);
  absl::Duration max_watch_backoff = absl::Seconds(5);
  // The staleness bound of serializable reads through the proxy: a
  // serializable hit is served only while the freshness lease (see below)
  // was confirmed at most this long ago. InfiniteDuration() disables the
  // lease and its probes (then only the watch's own end stops serving).
  absl::Duration max_staleness = absl::Seconds(3);
  // How often the freshness probe runs while serializable reads come in.
  absl::Duration freshness_probe_interval = absl::Seconds(1);
  // No freshness probe once no serializable read came for this long.
  absl::Duration probe_idle_after = absl::Seconds(10);
};

// A Backend decorator that answers Range from a coherent cache.
//
// - Only latest-revision reads (revision == 0) are cached or served; the
//   rest passes through. Txn passes through (its ranges are not cached).
// - The cache holds and serves entries only while its own watch (key "\x00",
//   range_end "\x00", no token, require_leader, no prev_kv, through the
//   watch source) is live; a watch that ends or is refused (e.g. "no
//   leader", compaction, permission denied, a lost connection) empties it and
//   it is reopened with backoff. With auth on and no proxy identity allowed
//   to watch, the cache is off.
// - The watch source is `inner` unless another backend is given. The proxy
//   gives the one below its watch coalescer: no client shares the cache's
//   watch, so the coalescer's per-client work (a revision probe per create,
//   queues) would buy nothing.
// - Freshness lease. A live watch does not prove that A keeps up with the
//   store: an etcd that is black-holed leaves the watch quiet, not ended, and
//   a watch coalescer below (as in some tests) hides the loss of its
//   upstream stream altogether (it reopens from the last revision and tells
//   its clients nothing). So etcd may be down or unreachable while A stands
//   still. While serializable reads come in (and for
//   options.probe_idle_after after the last one) the timer thread sends a
//   token-less, require_leader api::RevisionProbe every
//   options.freshness_probe_interval, records its
//   send time t and returned revision R, and once A >= R sets
//   confirmed_at = t (every write acknowledged before t has then been
//   applied). Serializable hits are served only while
//   now - confirmed_at <= options.max_staleness; otherwise they are
//   forwarded (and fill). A failed probe confirms nothing, so an outage
//   stops hits within max_staleness plus one probe interval. Linearizable
//   reads' probes confirm too. After an idle period the first serializable
//   read is forwarded and starts a probe.
// - Serializable Range without a token and without require_leader: served
//   when cached, the lease holds and the watch has applied every write
//   acknowledged through this decorator (so a client reads its own writes
//   through the proxy). require_leader reads are forwarded (etcd fails them
//   at once without a leader).
// - Linearizable Range: the current revision R is learnt with
//   api::RevisionProbe (shared by concurrent callers); the read is served
//   from cache once the watch has applied R, forwarded after
//   options.linearizable_wait (or the client's deadline) otherwise, and
//   completed with CANCELLED when ctx.cancel fires while it waits. Never
//   older than a write acknowledged before the read began.
// - With a token, every read (serializable too) first passes the probe with
//   the client's token over the client's own range, a permission check; on
//   any probe error the Range itself is forwarded, so the client gets etcd's
//   own answer. Entries are keyed by token; a successful Auth* change
//   passing through flushes the whole cache.
// - Auth turned on directly on etcd: the first token-less request that etcd
//   refuses with `user name is empty`, `permission denied` or `invalid auth
//   token` - the periodic freshness probe, a linearizable read's probe or a
//   serializable miss - empties the cache at once and restarts its watch,
//   which etcd then refuses (should a watch coalescer below still let it
//   open, the lease is never confirmed: probes keep failing, nothing is
//   served). Hits served before that refusal may still be
//   token-less answers cached before auth was enabled (at most max_staleness
//   plus one probe interval after auth was enabled, while reads come in).
// - Misses are forwarded and their responses inserted unless an event newer
//   than the response was applied meanwhile.
//
// Logs (module "cache"): warn once when the cache stops serving (watch
// refused or lost, auth on upstream, freshness probe failing) with the
// reason; info once when it serves again (watch live and, with the lease,
// freshness confirmed).
//
// Metrics (when `metrics` is not null): etcd_grpc_proxy_cache_hits_total,
// etcd_grpc_proxy_cache_misses_total, keel_cache_linearizable_hits_total,
// keel_cache_evictions_total (counters), etcd_grpc_proxy_cache_keys_total,
// keel_cache_bytes (gauges).
//
// Thread-safe. Completions (`done`) never run under a lock; they run on the
// inner backend's threads, on the thread delivering the cache's watch
// responses (a waiting linearizable read resumed by an event, or forwarded
// when the watch ends), on the cache's timer thread (a linearizable read
// that timed out or was cancelled), or inline in the destructor (waiting
// linearizable reads are forwarded from there). In-flight unary calls may
// outlive this object; `inner` and `metrics` must outlive them.
class CachingBackend final : public api::ForwardingBackend {
 public:
  // Opens the cache's watch at once, on `watch_source` (null: on `inner`),
  // which must outlive this object. REQUIRES: options.max_bytes > 0.
  CachingBackend(api::Backend& inner, CacheOptions options, common::MetricsRegistry* metrics,
                 api::Backend* watch_source = nullptr);
  // Stops the timer thread, cancels the cache's watch and waits until its
  // OnDone has run; linearizable reads still waiting for the watch are
  // forwarded (their `done` later runs on the inner backend's threads).
  // Freshness probes in flight complete into the shared state and are
  // ignored. REQUIRES: not called from inside one of the watch source's
  // callbacks for the cache's watch.
  ~CachingBackend() override;
  CachingBackend(const CachingBackend&) = delete;
  CachingBackend& operator=(const CachingBackend&) = delete;

  // Served from cache when the rules above allow, else forwarded.
  void Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
             api::Done<::etcdserverpb::RangeResponse> done) override;

  // Writes: forwarded unchanged; the revision of each successful answer is
  // remembered so that serializable hits wait for the watch to apply it.
  void Put(const api::CallContext& ctx, ::etcdserverpb::PutRequest request,
           api::Done<::etcdserverpb::PutResponse> done) override;
  void DeleteRange(const api::CallContext& ctx, ::etcdserverpb::DeleteRangeRequest request,
                   api::Done<::etcdserverpb::DeleteRangeResponse> done) override;
  void Txn(const api::CallContext& ctx, ::etcdserverpb::TxnRequest request,
           api::Done<::etcdserverpb::TxnResponse> done) override;
  void Compact(const api::CallContext& ctx, ::etcdserverpb::CompactionRequest request,
               api::Done<::etcdserverpb::CompactionResponse> done) override;
  void LeaseRevoke(const api::CallContext& ctx, ::etcdserverpb::LeaseRevokeRequest request,
                   api::Done<::etcdserverpb::LeaseRevokeResponse> done) override;
  void Lock(const api::CallContext& ctx, ::v3lockpb::LockRequest request,
            api::Done<::v3lockpb::LockResponse> done) override;
  void Unlock(const api::CallContext& ctx, ::v3lockpb::UnlockRequest request,
              api::Done<::v3lockpb::UnlockResponse> done) override;
  void Campaign(const api::CallContext& ctx, ::v3electionpb::CampaignRequest request,
                api::Done<::v3electionpb::CampaignResponse> done) override;
  void Proclaim(const api::CallContext& ctx, ::v3electionpb::ProclaimRequest request,
                api::Done<::v3electionpb::ProclaimResponse> done) override;
  void Resign(const api::CallContext& ctx, ::v3electionpb::ResignRequest request,
              api::Done<::v3electionpb::ResignResponse> done) override;

  // For writes and auth changes that reached etcd without passing through
  // this decorator (the proxy's frame relay sends them straight on): what
  // the overrides below do on success, to be called before the client sees
  // the answer. NoteWriteAcknowledged(revision) as after a successful write
  // whose response header had `revision`; FlushForAuthChange() as after a
  // successful Auth* change. Thread-safe.
  void NoteWriteAcknowledged(int64_t revision);
  void FlushForAuthChange();

  // A serializable, token-less, non-hasleader Range answered at once when
  // the rules above allow a hit (counted as a hit); nullopt otherwise (the
  // caller then sends the Range through Range(), where it is counted).
  // Never blocks on the network: for callers that cannot wait (the frame
  // relay's loop). Thread-safe.
  std::optional<::etcdserverpb::RangeResponse> TryServeSerializable(
      const ::etcdserverpb::RangeRequest& request);

  // For a caller that sends a token-less, non-hasleader linearizable Range
  // straight to etcd (the frame relay): a ticket to fill the cache with
  // etcd's answer, or nullopt when the read should go through Range()
  // instead. A ticket is given when the cache does not hold the range (as
  // Range() itself would forward it: a probe could only miss; counted as a
  // miss) and, for a range it holds in at most `max_held_bytes` (what the
  // caller can keep of etcd's answer), when no other ticket is out: a lone
  // read is then one round trip instead of two and refreshes the entry
  // (counted in keel_cache_straight_reads_total), while overlapping reads
  // share Range()'s revision probe. Nullopt too when the cache is not live
  // or the read is not cacheable or not linearizable. The ticket keeps the
  // request. Every ticket ends with exactly one FinishExternalFill (etcd
  // answered OK: the answer is inserted under the same staleness rules as
  // any fill) or AbandonExternalFill; an unknown ticket is ignored.
  // Thread-safe; never blocks on the network.
  std::optional<uint64_t> BeginExternalFill(const ::etcdserverpb::RangeRequest& request,
                                            uint64_t max_held_bytes);
  void FinishExternalFill(uint64_t ticket, ::etcdserverpb::RangeResponse response);
  void AbandonExternalFill(uint64_t ticket);

  // Auth changes: forwarded unchanged; a success flushes the cache
  // (permissions changed, and no event reports it).
  void AuthEnable(const api::CallContext& ctx, ::etcdserverpb::AuthEnableRequest request,
                  api::Done<::etcdserverpb::AuthEnableResponse> done) override;
  void AuthDisable(const api::CallContext& ctx, ::etcdserverpb::AuthDisableRequest request,
                   api::Done<::etcdserverpb::AuthDisableResponse> done) override;
  void UserAdd(const api::CallContext& ctx, ::etcdserverpb::AuthUserAddRequest request,
               api::Done<::etcdserverpb::AuthUserAddResponse> done) override;
  void UserDelete(const api::CallContext& ctx, ::etcdserverpb::AuthUserDeleteRequest request,
                  api::Done<::etcdserverpb::AuthUserDeleteResponse> done) override;
  void UserChangePassword(const api::CallContext& ctx,
                          ::etcdserverpb::AuthUserChangePasswordRequest request,
                          api::Done<::etcdserverpb::AuthUserChangePasswordResponse> done) override;
  void UserGrantRole(const api::CallContext& ctx, ::etcdserverpb::AuthUserGrantRoleRequest request,
                     api::Done<::etcdserverpb::AuthUserGrantRoleResponse> done) override;
  void UserRevokeRole(const api::CallContext& ctx,
                      ::etcdserverpb::AuthUserRevokeRoleRequest request,
                      api::Done<::etcdserverpb::AuthUserRevokeRoleResponse> done) override;
  void RoleAdd(const api::CallContext& ctx, ::etcdserverpb::AuthRoleAddRequest request,
               api::Done<::etcdserverpb::AuthRoleAddResponse> done) override;
  void RoleDelete(const api::CallContext& ctx, ::etcdserverpb::AuthRoleDeleteRequest request,
                  api::Done<::etcdserverpb::AuthRoleDeleteResponse> done) override;
  void RoleGrantPermission(
      const api::CallContext& ctx, ::etcdserverpb::AuthRoleGrantPermissionRequest request,
      api::Done<::etcdserverpb::AuthRoleGrantPermissionResponse> done) override;
  void RoleRevokePermission(
      const api::CallContext& ctx, ::etcdserverpb::AuthRoleRevokePermissionRequest request,
      api::Done<::etcdserverpb::AuthRoleRevokePermissionResponse> done) override;

  // Test accessors. True once the cache's watch is live (and, for the
  // second, has applied `revision`); false after `timeout`.
  bool WaitForLiveForTest(absl::Duration timeout) const;
  bool WaitForAppliedForTest(int64_t revision, absl::Duration timeout) const;
  // Number of cached entries.
  size_t EntriesForTest() const;
  // True once a serializable hit would pass the freshness lease now; false
  // after `timeout`. Counts as serializable read activity (keeps the
  // freshness probes going).
  bool WaitForFreshForTest(absl::Duration timeout) const;
  // The backoff the next failed watch attempt will wait.
  absl::Duration WatchBackoffForTest() const;
  // Watch observers not yet destroyed (current and retired).
  int ObserversForTest() const;

 private:
  struct State;
  class CacheWatch;

  // Opens a new cache watch (constructor and timer thread only).
  void OpenWatch();
  // Reopens the watch after backoff, expires and cancels linearizable
  // waits, sends the freshness probes.
  void TimerLoop();
  // Sends one freshness probe (timer thread only).
  void SendFreshnessProbe();

  std::shared_ptr<State> state_;
  std::thread timer_;
};

}  // namespace keel::cache
