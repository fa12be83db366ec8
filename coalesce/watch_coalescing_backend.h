#pragma once

// WatchCoalescingBackend: the Backend decorator that makes N client watchers
// on one range cost one upstream watcher (issue 5; spec/proxy.md 2.5). The
// decisions are coalesce/watch_coalescer.h's (read its header for the exact
// guarantees); this is the glue: it locks, calls the core, and executes the
// core's actions in order (probes through api::RevisionProbe, upstream Watch
// streams on `inner`, responses to clients under their ReadNext credits).
//
// Upstream streams are read continuously; every client stream has a bounded
// queue of its own, so a slow client never holds back the others (its
// c-watcher is dropped and resynced from its next revision). A lost upstream
// stream is reopened (50 ms doubling to 2 s while attempts fail; an attempt
// counts as good once etcd sent events or progress on it or it lived 10 s,
// a bare `created` does not) and its watchers are created again from where
// they stopped; clients see nothing. Revision probes time out after 5 s; a
// create whose probe etcd could not answer (no quorum, no endpoint reachable:
// unavailable or past the deadline) waits and tries again (50 ms doubling to
// 2 s) rather than being refused, as long as its client stays (a warning
// says so, at most every 10 s).
// When an upstream stream opened with require_leader ends with etcd's
// `etcdserver: no leader`, the require-leader client streams of that identity
// end with the same status, as etcd ends them.
//
// Client observer contract (the `observer` given to Watch): OnResponse runs
// only against a ReadNext credit (one response per ReadNext), never two at
// a time for one stream, in the order the responses were produced; OnDone
// runs exactly once, last, after which nothing of the observer is touched:
// CANCELLED after Cancel() or the handle's destruction (also when the
// decorator is destroyed first), RESOURCE_EXHAUSTED when the client keeps
// writing without reading (more than 1024 requests or unread replies
// waiting), etcd's `no leader` status for a require-leader stream. Callbacks
// run on any thread (an upstream reader, a probe completion, or the thread
// calling Write/ReadNext/Cancel), never under this object's lock, so the
// observer may call its handle (ReadNext, Write, Cancel) from inside them.
// The observer must outlive its OnDone.
//
// Logs (module "watch", warn): an upstream stream lost after it was healthy,
// the first failure of a streak of failing reopens (and, info, the
// recovery), resyncs (at most one line per 10 s, with their count), a client
// stream ended for its backlog.
//
// Metrics (when `metrics` is not null): keel_watch_client_watchers,
// keel_watch_upstream_watchers, keel_watch_upstream_streams,
// keel_watch_resyncs_total, keel_watch_create_probe_retries_total,
// etcd_grpc_proxy_watchers_coalescing_total,
// etcd_grpc_proxy_events_coalescing_total.
//
// Thread-safe. Every call but Watch is forwarded to `inner` unchanged.

#include <memory>

#include "api/backend.h"
#include "common/metrics.h"

namespace keel::coalesce {

class WatchCoalescingImpl;

// See the file comment.
class WatchCoalescingBackend final : public api::ForwardingBackend {
 public:
  // `inner` must outlive this object; `metrics` (may be null) must outlive
  // it too, and keeps reading its gauges through a shared state afterwards.
  WatchCoalescingBackend(api::Backend& inner, common::MetricsRegistry* metrics);
  // Ends any client stream still open (OnDone CANCELLED), cancels every
  // upstream stream and waits until their OnDone has run. Revision probes
  // still in flight complete later into a state that ignores them; no new
  // probe is sent (api::RevisionProbe::Close).
  // REQUIRES: not called from inside one of this object's callbacks.
  ~WatchCoalescingBackend() override;

  WatchCoalescingBackend(const WatchCoalescingBackend&) = delete;
  WatchCoalescingBackend& operator=(const WatchCoalescingBackend&) = delete;

  // A coalesced Watch stream: creates, cancels, responses as etcd's own.
  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override;

 private:
  std::shared_ptr<WatchCoalescingImpl> impl_;
};

}  // namespace keel::coalesce
