#include "cache/caching_backend.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "api/errors.h"
#include "api/revision_probe.h"
#include "cache/range_cache.h"
#include "common/logging.h"

namespace keel::cache {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::WatchResponse;

namespace {

// The key a token-less probe reads ("\x00"): any fixed key will do, nothing
// is checked.
constexpr char kProbeKey = '\0';

// Probe answers kept while the watch has not reached their revision.
constexpr size_t kMaxUnconfirmed = 64;

void Increment(common::Counter* counter) {
  if (counter != nullptr) counter->Increment();
}

// True for the errors etcd gives a token-less request once auth is on.
bool AuthTurnedOn(const absl::Status& status) {
  std::optional<api::EtcdError> e = api::ParseEtcdError(status);
  return e == api::EtcdError::kUserEmpty || e == api::EtcdError::kPermissionDenied ||
         e == api::EtcdError::kInvalidAuthToken;
}

spdlog::logger& Log() {
  static const std::shared_ptr<spdlog::logger> logger = common::Logger("cache");
  return *logger;
}

}  // namespace

// Linearizable reads of held ranges sent straight to etcd at once (by the
// frame relay); more overlapping ones share Range()'s revision probe.
constexpr size_t kStraightReads = 1;

// Everything the completions need; shared with them because in-flight calls
// may outlive the CachingBackend.
struct CachingBackend::State {
  State(api::Backend& backend, api::Backend& watch_backend, CacheOptions opts,
        common::MetricsRegistry* metrics)
      : inner(backend),
        watch_source(watch_backend),
        options(opts),
        probe(backend),
        cache(opts.max_bytes) {
    backoff = options.min_watch_backoff;
    if (metrics == nullptr) return;
    hits = metrics->GetCounter("etcd_grpc_proxy_cache_hits_total", "Total number of cache hits");
    misses =
        metrics->GetCounter("etcd_grpc_proxy_cache_misses_total", "Total number of cache misses");
    straight_reads = metrics->GetCounter(
        "keel_cache_straight_reads_total",
        "Lone linearizable reads of cached ranges sent straight to etcd, refreshing the entry");
    linearizable_hits = metrics->GetCounter(
        "keel_cache_linearizable_hits_total",
        "Linearizable Range requests answered from the cache after a revision probe");
    evictions = metrics->GetCounter("keel_cache_evictions_total",
                                    "Cache entries evicted to stay within the byte budget");
    keys =
        metrics->GetGauge("etcd_grpc_proxy_cache_keys_total", "Total number of keys/ranges cached");
    bytes = metrics->GetGauge("keel_cache_bytes", "Bytes held by the range cache");
  }

  // A linearizable read waiting for the watch to apply its probe revision.
  // `resume` with OK serves or forwards it; with an error completes it so.
  struct Waiter {
    uint64_t id = 0;
    absl::Time deadline;
    std::shared_ptr<api::CancelSignal> cancel;
    absl::AnyInvocable<void(absl::Status) &&> resume;
  };

  // Runs taken waiters (never under mu).
  static void Resume(std::vector<Waiter>& waiters, const absl::Status& status) {
    for (Waiter& w : waiters) {
      // Our cancel hook is no longer needed; the forwarded call may register
      // its own. Never under mu (the hook takes mu under the signal's lock).
      if (status.ok() && w.cancel != nullptr) w.cancel->Clear();
      std::move(w.resume)(status);
    }
  }

  bool lease_enabled() const { return options.max_staleness != absl::InfiniteDuration(); }

  // Publishes the cache's size. REQUIRES: mu held.
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (keys != nullptr) keys->Set(static_cast<int64_t>(cache.size()));
    if (bytes != nullptr) bytes->Set(static_cast<int64_t>(cache.bytes()));
    if (evictions != nullptr && cache.evictions() > evictions_reported) {
      evictions->Increment(cache.evictions() - evictions_reported);
    }
    evictions_reported = cache.evictions();
  }
  // Removes and returns the waiters the watch has satisfied (all of them when
  // `all`). REQUIRES: mu held.
  std::vector<Waiter> TakeWaiters(bool all) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<Waiter> out;
    auto end = all ? waiters.end() : waiters.upper_bound(cache.applied_revision());
    for (auto it = waiters.begin(); it != end; ++it) out.push_back(std::move(it->second));
    waiters.erase(waiters.begin(), end);
    return out;
  }

  // ----- serving state and its log lines -----

  // The cache serves nothing any more, because of `reason`: warns once per
  // transition. REQUIRES: mu held.
  void ReportOff(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (reported == Reported::kOff) return;
    reported = Reported::kOff;
    KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                   "range cache not serving: reads are forwarded to etcd", {{"reason", reason}});
  }
  // The cache serves again: info once per transition. REQUIRES: mu held.
  void ReportServing() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (reported == Reported::kServing) return;
    reported = Reported::kServing;
    KEEL_LOG_EVENT(Log(), spdlog::level::info, "range cache serving",
                   {{"applied_revision", cache.applied_revision()}});
  }

  // ----- the freshness lease -----

  // True when a serializable hit may be served at `now`. REQUIRES: mu held.
  bool Fresh(absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    if (!lease_enabled()) return true;
    return confirmed_at != absl::InfinitePast() && now - confirmed_at <= options.max_staleness;
  }
  // A probe sent at `sent` returned `revision`: confirms freshness as of
  // `sent` once A >= revision. REQUIRES: mu held.
  void NoteProbe(absl::Time sent, int64_t revision) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!lease_enabled()) return;
    // Bounded: while the watch lags, the newest probes matter most.
    if (unconfirmed.size() >= kMaxUnconfirmed) unconfirmed.erase(unconfirmed.begin());
    unconfirmed.emplace_back(sent, revision);
    CheckLease();
  }
  // Confirms the probes the watch has caught up with. REQUIRES: mu held.
  void CheckLease() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!cache.live()) return;
    const int64_t applied = cache.applied_revision();
    const absl::Time now = absl::Now();
    bool confirmed = false;
    for (auto it = unconfirmed.begin(); it != unconfirmed.end();) {
      if (it->second <= applied) {
        confirmed_at = std::max(confirmed_at, it->first);
        confirmed = true;
        it = unconfirmed.erase(it);
      } else if (lease_enabled() && now - it->first > options.max_staleness) {
        it = unconfirmed.erase(it);  // could only confirm an expired lease
      } else {
        ++it;
      }
    }
    if (confirmed && Fresh(now)) ReportServing();
  }
  // True when the timer should send a freshness probe at `now`.
  // REQUIRES: mu held.
  bool ProbeDue(absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return ProbeWanted(now) && now >= last_probe_sent + options.freshness_probe_interval;
  }
  bool ProbeWanted(absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return lease_enabled() && cache.live() && !probe_in_flight && !shutting_down &&
           now - last_read <= options.probe_idle_after;
  }

  // ----- the watch's life -----

  // The watch became live at `revision`. REQUIRES: mu held.
  void WatchLive(int64_t revision) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    cache.Start(revision);
    live_since = absl::Now();
    delivered = false;
    confirmed_at = absl::InfinitePast();
    if (!lease_enabled()) {
      ReportServing();
    } else {
      CheckLease();
      // Confirm at once if reads are waiting for it.
      if (ProbeWanted(absl::Now())) kick = true;
    }
  }
  // The cache stops (watch lost or refused, auth on upstream): empties it,
  // returns every waiter (to be resumed outside mu). REQUIRES: mu held.
  std::vector<Waiter> StopCache(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    cache.Stop();
    confirmed_at = absl::InfinitePast();
    UpdateGauges();
    ReportOff(reason);
    return TakeWaiters(/*all=*/true);
  }
  // A token-less request was refused with an auth error: auth was enabled
  // upstream (not through this proxy), so token-less entries may no longer
  // be readable. Stops serving at once and has the timer restart the watch,
  // which etcd now refuses unless the proxy has an identity.
  // REQUIRES: mu held.
  std::vector<Waiter> AuthOnUpstream(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!cache.live()) return {};
    restart_watch = true;
    kick = true;
    return StopCache("auth enabled on etcd: a token-less request was refused: " +
                     std::string(status.message()));
  }

  api::Backend& inner;
  api::Backend& watch_source;  // where the cache's watch is opened
  const CacheOptions options;
  api::RevisionProbe probe;
  common::Counter* hits = nullptr;
  common::Counter* misses = nullptr;
  common::Counter* linearizable_hits = nullptr;
  common::Counter* straight_reads = nullptr;
  common::Counter* evictions = nullptr;
  common::Gauge* keys = nullptr;
  common::Gauge* bytes = nullptr;

  mutable absl::Mutex mu;
  RangeCache cache ABSL_GUARDED_BY(mu);
  // W: the highest revision acknowledged for a write through this decorator.
  int64_t acknowledged ABSL_GUARDED_BY(mu) = 0;
  uint64_t evictions_reported ABSL_GUARDED_BY(mu) = 0;
  // Tickets of BeginExternalFill not ended yet, with their requests.
  absl::flat_hash_map<FillId, RangeRequest> external_fills ABSL_GUARDED_BY(mu);
  // Keyed by the revision each waiter needs.
  std::multimap<int64_t, Waiter> waiters ABSL_GUARDED_BY(mu);
  uint64_t next_waiter_id ABSL_GUARDED_BY(mu) = 1;
  // Waiters whose ctx.cancel fired; the timer thread completes them.
  std::vector<Waiter> cancelled ABSL_GUARDED_BY(mu);

  // The freshness lease.
  absl::Time confirmed_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  // Probes answered (send time, revision) that the watch has not reached.
  std::vector<std::pair<absl::Time, int64_t>> unconfirmed ABSL_GUARDED_BY(mu);
  absl::Time last_read ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  absl::Time last_probe_sent ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  bool probe_in_flight ABSL_GUARDED_BY(mu) = false;

  enum class Reported { kUnknown, kServing, kOff };
  Reported reported ABSL_GUARDED_BY(mu) = Reported::kUnknown;

  // The cache's watch: one attempt at a time, numbered by `watch_generation`.
  // The observer is shared with its own OnDone (see CacheWatch).
  std::shared_ptr<CacheWatch> watch ABSL_GUARDED_BY(mu);
  std::unique_ptr<api::WatchStream> watch_handle ABSL_GUARDED_BY(mu);
  uint64_t watch_generation ABSL_GUARDED_BY(mu) = 0;
  bool watch_done ABSL_GUARDED_BY(mu) = true;  // the attempt's OnDone has run
  absl::Time live_since ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  bool delivered ABSL_GUARDED_BY(mu) = false;  // a response after `created`
  int observers ABSL_GUARDED_BY(mu) = 0;       // CacheWatch objects alive
  absl::Time reopen_at ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  absl::Duration backoff ABSL_GUARDED_BY(mu);
  bool kick ABSL_GUARDED_BY(mu) = false;  // wakes the timer thread
  // The timer thread must cancel the live watch (auth turned on upstream).
  bool restart_watch ABSL_GUARDED_BY(mu) = false;
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
};

// The observer of one attempt at the cache's watch. Touches only the shared
// state. Owned by shared_ptr: the state holds one reference until the
// attempt is replaced (after OnDone has marked it done), and OnDone holds
// its own for its whole body, so the observer is destroyed only once OnDone
// has finished (by whichever reference goes last).
class CachingBackend::CacheWatch final : public api::StreamObserver<WatchResponse>,
                                         public std::enable_shared_from_this<CacheWatch> {
 public:
  CacheWatch(std::shared_ptr<State> state, uint64_t generation)
      : state_(std::move(state)), generation_(generation) {
    absl::MutexLock lock(&state_->mu);
    ++state_->observers;
  }
  ~CacheWatch() override {
    absl::MutexLock lock(&state_->mu);
    --state_->observers;
  }

  void OnResponse(WatchResponse response) override {
    std::shared_ptr<State> state = state_;
    std::vector<State::Waiter> ready;
    api::WatchStream* handle = nullptr;
    bool cancel = false;
    {
      absl::MutexLock lock(&state->mu);
      if (generation_ != state->watch_generation) return;
      handle = state->watch_handle.get();
      RangeCache& cache = state->cache;
      if (response.canceled()) {
        // Refused (auth on, no identity allowed to watch) or compacted: the
        // cache cannot follow the store any more.
        cancel = true;
        ready = state->StopCache("the cache's watch was refused or cancelled: " +
                                 response.cancel_reason());
      } else {
        if (response.created()) {
          state->WatchLive(response.header().revision());
        } else {
          state->delivered = true;
        }
        // A comes from the events themselves (a response's header revision
        // may be ahead of its events when etcd sends a catching-up batch); a
        // response holds whole revisions (etcd splits one only for a watcher
        // that asked for fragments), so its last event's revision is done.
        int64_t last = 0;
        for (const ::mvccpb::Event& event : response.events()) {
          cache.ApplyEvent(event.kv().key(), event.kv().mod_revision());
          last = std::max(last, event.kv().mod_revision());
        }
        if (response.events_size() == 0 && !response.created()) {
          last = response.header().revision();  // progress notification
        }
        cache.Advance(last);
        state->CheckLease();
        ready = state->TakeWaiters(/*all=*/false);
      }
      state->UpdateGauges();
    }
    State::Resume(ready, absl::OkStatus());
    // `handle` stays valid: only the timer thread and the destructor replace
    // it, and both wait for this attempt's OnDone first.
    if (handle == nullptr) return;
    if (cancel) {
      handle->Cancel();
    } else {
      handle->ReadNext();
    }
  }

  void OnDone(absl::Status status) override {
    // Keeps this observer alive until OnDone returns, whatever the state does
    // with its reference once `watch_done` is set.
    std::shared_ptr<CacheWatch> self = shared_from_this();
    std::shared_ptr<State> state = state_;
    std::vector<State::Waiter> ready;
    {
      absl::MutexLock lock(&state->mu);
      if (generation_ != state->watch_generation) return;
      // The backoff starts again only after a watch that worked: one that
      // delivered something after `created`, or stayed live a while.
      if (state->cache.live() && (state->delivered || absl::Now() - state->live_since >=
                                                          state->options.max_watch_backoff)) {
        state->backoff = state->options.min_watch_backoff;
      }
      ready = state->StopCache(status.ok() ? std::string("the cache's watch ended")
                                           : "the cache's watch was lost: " + status.ToString());
      state->watch_done = true;
      state->reopen_at = absl::Now() + state->backoff;
      state->backoff = std::min(state->backoff * 2, state->options.max_watch_backoff);
      state->kick = true;
    }
    State::Resume(ready, absl::OkStatus());
  }

 private:
  const std::shared_ptr<State> state_;
  const uint64_t generation_;
};

// Helpers shared by the Range paths; free functions over the shared state so
// that completions never touch the CachingBackend itself.
namespace {

template <class StateT>
void Forward(std::shared_ptr<StateT> state, const api::CallContext& ctx, RangeRequest request,
             std::optional<FillId> fill, api::Done<RangeResponse> done) {
  api::Backend& inner = state->inner;
  if (!fill.has_value()) {
    inner.Range(ctx, std::move(request), std::move(done));
    return;
  }
  RangeRequest copy = request;
  inner.Range(
      ctx, std::move(copy),
      [state = std::move(state), identity = ctx.token, request = std::move(request), fill = *fill,
       done = std::move(done)](absl::StatusOr<RangeResponse> response) mutable {
        std::vector<typename StateT::Waiter> stopped;
        {
          absl::MutexLock lock(&state->mu);
          if (response.ok()) {
            state->cache.FinishFill(fill, identity, request, *response);
          } else {
            state->cache.AbandonFill(fill);
            if (identity.empty() && AuthTurnedOn(response.status())) {
              stopped = state->AuthOnUpstream(response.status());
            }
          }
          state->UpdateGauges();
        }
        StateT::Resume(stopped, absl::OkStatus());
        std::move(done)(std::move(response));
      });
}

// Answers from cache when the watch has applied both `min_revision` and every
// write acknowledged here (and, for a serializable read, the freshness lease
// holds); otherwise forwards (and fills when live).
template <class StateT>
void Serve(std::shared_ptr<StateT> state, const api::CallContext& ctx, RangeRequest request,
           int64_t min_revision, bool linearizable, api::Done<RangeResponse> done) {
  std::optional<RangeResponse> hit;
  std::optional<FillId> fill;
  {
    absl::MutexLock lock(&state->mu);
    RangeCache& cache = state->cache;
    const absl::Time now = absl::Now();
    if (!linearizable) {
      state->last_read = now;
      if (state->ProbeDue(now)) state->kick = true;
    }
    if (cache.live()) {
      const int64_t applied = cache.applied_revision();
      if (applied >= min_revision && applied >= state->acknowledged &&
          (linearizable || state->Fresh(now))) {
        hit = cache.Lookup(ctx.token, request);
      }
      if (!hit.has_value()) fill = cache.BeginFill(request);
    }
  }
  if (hit.has_value()) {
    Increment(state->hits);
    if (linearizable) Increment(state->linearizable_hits);
    std::move(done)(std::move(*hit));
    return;
  }
  Increment(state->misses);
  Forward(std::move(state), ctx, std::move(request), fill, std::move(done));
}

}  // namespace

CachingBackend::CachingBackend(api::Backend& inner, CacheOptions options,
                               common::MetricsRegistry* metrics, api::Backend* watch_source)
    : ForwardingBackend(inner),
      state_(std::make_shared<State>(inner, watch_source != nullptr ? *watch_source : inner,
                                     options, metrics)) {
  OpenWatch();
  timer_ = std::thread([this] { TimerLoop(); });
}

CachingBackend::~CachingBackend() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->shutting_down = true;
  }
  timer_.join();
  api::WatchStream* handle = nullptr;
  {
    absl::MutexLock lock(&state_->mu);
    if (!state_->watch_done) handle = state_->watch_handle.get();
  }
  if (handle != nullptr) handle->Cancel();
  std::shared_ptr<CacheWatch> watch;
  std::unique_ptr<api::WatchStream> watch_handle;
  std::vector<State::Waiter> waiting;
  std::vector<State::Waiter> cancelled;
  {
    absl::MutexLock lock(&state_->mu);
    state_->mu.Await(absl::Condition(&state_->watch_done));
    ++state_->watch_generation;
    // Dropping our reference cannot free the observer while its OnDone still
    // runs: OnDone holds its own.
    watch = std::move(state_->watch);
    watch_handle = std::move(state_->watch_handle);
    state_->cache.Stop();
    state_->UpdateGauges();
    waiting = state_->TakeWaiters(/*all=*/true);
    cancelled = std::move(state_->cancelled);
  }
  watch_handle.reset();
  watch.reset();
  State::Resume(cancelled, absl::CancelledError("context canceled"));
  State::Resume(waiting, absl::OkStatus());
}

void CachingBackend::OpenWatch() {
  std::shared_ptr<CacheWatch> old_watch;
  std::unique_ptr<api::WatchStream> old_handle;
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&state_->mu);
    old_watch = std::move(state_->watch);
    old_handle = std::move(state_->watch_handle);
    generation = ++state_->watch_generation;
    state_->watch_done = false;
    state_->reopen_at = absl::InfiniteFuture();
    state_->delivered = false;
  }
  // The previous attempt's OnDone has marked it done (we only reopen after
  // that); if OnDone is still returning, its own reference keeps the old
  // observer alive until it has. The handle may go once OnDone has run.
  old_handle.reset();
  old_watch.reset();
  auto observer = std::make_shared<CacheWatch>(state_, generation);
  {
    absl::MutexLock lock(&state_->mu);
    state_->watch = observer;
  }

  // The whole keyspace, from now on, without a token (see README: the proxy's
  // own identity, if any, is its client certificate). require_leader: a
  // member cut off from the leader ends the watch (etcd's "no leader")
  // instead of leaving the cache live on a store that no longer moves.
  api::CallContext ctx;
  ctx.require_leader = true;
  std::unique_ptr<api::WatchStream> handle = state_->watch_source.Watch(ctx, observer.get());
  ::etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key(std::string(1, '\0'));
  create.mutable_create_request()->set_range_end(std::string(1, '\0'));
  handle->Write(std::move(create));
  api::WatchStream* raw = handle.get();
  {
    absl::MutexLock lock(&state_->mu);
    state_->watch_handle = std::move(handle);
  }
  // Only this thread (or the destructor, after joining it) replaces the
  // handle, so `raw` stays valid here.
  raw->ReadNext();
}

// Sends one freshness probe (timer thread; never under mu).
void CachingBackend::SendFreshnessProbe() {
  const absl::Time sent = absl::Now();
  api::CallContext ctx;
  ctx.require_leader = true;
  ctx.deadline =
      sent + std::max(state_->options.max_staleness, state_->options.freshness_probe_interval);
  std::shared_ptr<State> state = state_;
  state_->probe.Fetch(ctx, std::string(1, kProbeKey), std::string(),
                      [state, sent](absl::StatusOr<::etcdserverpb::ResponseHeader> header) {
                        std::vector<State::Waiter> stopped;
                        {
                          absl::MutexLock lock(&state->mu);
                          state->probe_in_flight = false;
                          state->kick = true;  // reschedule
                          if (header.ok()) {
                            state->NoteProbe(sent, header->revision());
                          } else if (AuthTurnedOn(header.status())) {
                            stopped = state->AuthOnUpstream(header.status());
                          } else if (state->cache.live()) {
                            state->ReportOff(
                                "freshness probe failed (serializable hits stop once the last "
                                "confirmation is older than max_staleness): " +
                                header.status().ToString());
                          }
                        }
                        State::Resume(stopped, absl::OkStatus());
                      });
}

void CachingBackend::TimerLoop() {
  while (true) {
    std::vector<State::Waiter> expired;
    std::vector<State::Waiter> cancelled;
    bool reopen = false;
    bool probe = false;
    api::WatchStream* cancel = nullptr;
    {
      absl::MutexLock lock(&state_->mu);
      absl::Time next = state_->watch_done ? state_->reopen_at : absl::InfiniteFuture();
      for (const auto& [revision, w] : state_->waiters) next = std::min(next, w.deadline);
      if (state_->ProbeWanted(absl::Now())) {
        next = std::min(next, state_->last_probe_sent + state_->options.freshness_probe_interval);
      }
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
        return state_->kick || state_->shutting_down;
      };
      state_->mu.AwaitWithDeadline(absl::Condition(&wake), next);
      state_->kick = false;
      if (state_->shutting_down) return;
      const absl::Time now = absl::Now();
      for (auto it = state_->waiters.begin(); it != state_->waiters.end();) {
        if (it->second.deadline <= now) {
          expired.push_back(std::move(it->second));
          it = state_->waiters.erase(it);
        } else {
          ++it;
        }
      }
      cancelled = std::move(state_->cancelled);
      state_->cancelled.clear();
      reopen = state_->watch_done && state_->reopen_at <= now;
      if (std::exchange(state_->restart_watch, false) && !state_->watch_done) {
        cancel = state_->watch_handle.get();
      }
      if (state_->ProbeDue(now)) {
        probe = true;
        state_->probe_in_flight = true;
        state_->last_probe_sent = now;
      }
    }
    // Only this thread replaces the handle, so it is still alive here.
    if (cancel != nullptr) cancel->Cancel();
    State::Resume(cancelled, absl::CancelledError("context canceled"));
    State::Resume(expired, absl::OkStatus());
    if (reopen) OpenWatch();
    if (probe) SendFreshnessProbe();
  }
}

void CachingBackend::Range(const api::CallContext& ctx, RangeRequest request,
                           api::Done<RangeResponse> done) {
  if (!RangeCache::Cacheable(request)) {
    inner().Range(ctx, std::move(request), std::move(done));
    return;
  }
  const bool with_token = !ctx.token.empty();
  if (request.serializable() && !with_token) {
    if (ctx.require_leader) {
      // etcd fails a hasleader call at once without a leader; the cache
      // cannot know, so the read goes to etcd.
      Increment(state_->misses);
      inner().Range(ctx, std::move(request), std::move(done));
      return;
    }
    Serve(state_, ctx, std::move(request), /*min_revision=*/0, /*linearizable=*/false,
          std::move(done));
    return;
  }
  bool live;
  bool cached = false;
  std::optional<FillId> fill;
  {
    absl::MutexLock lock(&state_->mu);
    live = state_->cache.live();
    if (live) cached = state_->cache.Has(ctx.token, request);
    if (live && !cached) fill = state_->cache.BeginFill(request);
  }
  if (!live) {
    // Nothing to serve: no probe, just the Range.
    Increment(state_->misses);
    inner().Range(ctx, std::move(request), std::move(done));
    return;
  }
  if (!cached) {
    // The probe could only lead to this same miss, one round trip later: the
    // Range goes to etcd at once (its answer is linearizable by itself, and
    // checks a token's permissions) and fills the cache.
    Increment(state_->misses);
    Forward(state_, ctx, std::move(request), fill, std::move(done));
    return;
  }
  // With a token the probe reads the client's own range with its token: a
  // permission check. Without one, any fixed key gives the revision.
  std::string key = with_token ? request.key() : std::string(1, kProbeKey);
  std::string range_end = with_token ? request.range_end() : std::string();
  std::shared_ptr<State> state = state_;
  const absl::Time sent = absl::Now();
  state_->probe.Fetch(
      ctx, std::move(key), std::move(range_end),
      [state, ctx, sent, request = std::move(request),
       done = std::move(done)](absl::StatusOr<::etcdserverpb::ResponseHeader> header) mutable {
        if (!header.ok()) {
          // Permission denied, bad token, no leader...: the Range itself gets
          // etcd's own answer for it. A token-less probe refused for auth
          // means auth was enabled upstream.
          if (ctx.token.empty() && AuthTurnedOn(header.status())) {
            std::vector<State::Waiter> stopped;
            {
              absl::MutexLock lock(&state->mu);
              stopped = state->AuthOnUpstream(header.status());
            }
            State::Resume(stopped, absl::OkStatus());
          }
          Increment(state->misses);
          Forward(std::move(state), ctx, std::move(request), std::nullopt, std::move(done));
          return;
        }
        {
          // Any successful probe is a freshness proof as of `sent`.
          absl::MutexLock lock(&state->mu);
          state->NoteProbe(sent, header->revision());
        }
        if (request.serializable()) {
          Serve(std::move(state), ctx, std::move(request), /*min_revision=*/0,
                /*linearizable=*/false, std::move(done));
          return;
        }
        const int64_t revision = header->revision();
        // Registered before the waiter exists (OnCancel must not run under
        // mu, and must not replace a registration of the call the read is
        // later forwarded as): a cancel that comes first is seen under mu.
        auto cancelled = std::make_shared<std::atomic<bool>>(false);
        uint64_t id = 0;
        {
          absl::MutexLock lock(&state->mu);
          id = state->next_waiter_id++;
        }
        if (ctx.cancel != nullptr) {
          std::weak_ptr<State> weak = state;
          ctx.cancel->OnCancel([weak, cancelled, revision, id] {
            cancelled->store(true);
            std::shared_ptr<State> s = weak.lock();
            if (s == nullptr) return;
            absl::MutexLock lock(&s->mu);
            auto [first, last] = s->waiters.equal_range(revision);
            for (auto it = first; it != last; ++it) {
              if (it->second.id != id) continue;
              s->cancelled.push_back(std::move(it->second));
              s->waiters.erase(it);
              s->kick = true;  // the timer thread completes it
              return;
            }
          });
        }
        {
          absl::MutexLock lock(&state->mu);
          if (!cancelled->load() && state->cache.live() &&
              state->cache.applied_revision() < revision) {
            const absl::Time deadline =
                std::min(absl::Now() + state->options.linearizable_wait, ctx.deadline);
            std::shared_ptr<State> inner_state = state;
            auto resume = [state = std::move(inner_state), ctx, request = std::move(request),
                           revision, done = std::move(done)](absl::Status status) mutable {
              if (!status.ok()) {
                std::move(done)(std::move(status));
                return;
              }
              Serve(std::move(state), ctx, std::move(request), revision,
                    /*linearizable=*/true, std::move(done));
            };
            state->waiters.emplace(revision,
                                   State::Waiter{id, deadline, ctx.cancel, std::move(resume)});
            state->kick = true;
            return;
          }
        }
        if (ctx.cancel != nullptr) ctx.cancel->Clear();
        if (cancelled->load()) {
          std::move(done)(absl::CancelledError("context canceled"));
          return;
        }
        Serve(std::move(state), ctx, std::move(request), revision, /*linearizable=*/true,
              std::move(done));
      });
}

// ----- writes and auth changes -----

namespace {

// Wraps `done` so that a successful write raises W.
template <class StateT, class Response>
api::Done<Response> NoteWrite(std::shared_ptr<StateT> state, api::Done<Response> done) {
  return [state = std::move(state),
          done = std::move(done)](absl::StatusOr<Response> response) mutable {
    if (response.ok()) {
      absl::MutexLock lock(&state->mu);
      state->acknowledged = std::max(state->acknowledged, response->header().revision());
    }
    std::move(done)(std::move(response));
  };
}

// Wraps `done` so that a successful auth change flushes the cache.
template <class StateT, class Response>
api::Done<Response> FlushOnSuccess(std::shared_ptr<StateT> state, api::Done<Response> done) {
  return [state = std::move(state),
          done = std::move(done)](absl::StatusOr<Response> response) mutable {
    if (response.ok()) {
      absl::MutexLock lock(&state->mu);
      state->cache.Flush();
      state->UpdateGauges();
    }
    std::move(done)(std::move(response));
  };
}

}  // namespace

void CachingBackend::NoteWriteAcknowledged(int64_t revision) {
  absl::MutexLock lock(&state_->mu);
  state_->acknowledged = std::max(state_->acknowledged, revision);
}

std::optional<RangeResponse> CachingBackend::TryServeSerializable(const RangeRequest& request) {
  if (!request.serializable() || !RangeCache::Cacheable(request)) return std::nullopt;
  std::optional<RangeResponse> hit;
  {
    // Serve()'s rules for a token-less serializable read, without the fill.
    absl::MutexLock lock(&state_->mu);
    const absl::Time now = absl::Now();
    state_->last_read = now;
    if (state_->ProbeDue(now)) state_->kick = true;
    RangeCache& cache = state_->cache;
    if (cache.live() && cache.applied_revision() >= state_->acknowledged && state_->Fresh(now)) {
      hit = cache.Lookup("", request);
    }
  }
  if (hit.has_value()) Increment(state_->hits);
  return hit;
}

std::optional<uint64_t> CachingBackend::BeginExternalFill(const RangeRequest& request,
                                                          uint64_t max_held_bytes) {
  if (request.serializable() || !RangeCache::Cacheable(request)) return std::nullopt;
  std::optional<FillId> fill;
  std::optional<uint64_t> held;
  {
    absl::MutexLock lock(&state_->mu);
    RangeCache& cache = state_->cache;
    if (!cache.live()) return std::nullopt;
    held = cache.HeldBytes("", request);
    // A small held range is read through a revision probe only when reads
    // overlap (the probe is then shared); a lone read is one round trip
    // straight to etcd instead of two through the chain, and its answer
    // refreshes the entry. A large one stays behind the (count-only) probe.
    if (!held.has_value() ||
        (*held <= max_held_bytes && state_->external_fills.size() < kStraightReads)) {
      fill = cache.BeginFill(request);
      state_->external_fills.emplace(*fill, request);
    }
  }
  if (!held.has_value()) Increment(state_->misses);
  if (held.has_value() && fill.has_value()) Increment(state_->straight_reads);
  return fill;
}

void CachingBackend::FinishExternalFill(uint64_t ticket, RangeResponse response) {
  absl::MutexLock lock(&state_->mu);
  auto it = state_->external_fills.find(ticket);
  if (it == state_->external_fills.end()) return;
  state_->cache.FinishFill(ticket, "", it->second, std::move(response));
  state_->external_fills.erase(it);
  state_->UpdateGauges();
}

void CachingBackend::AbandonExternalFill(uint64_t ticket) {
  absl::MutexLock lock(&state_->mu);
  if (state_->external_fills.erase(ticket) > 0) state_->cache.AbandonFill(ticket);
}

void CachingBackend::FlushForAuthChange() {
  absl::MutexLock lock(&state_->mu);
  state_->cache.Flush();
  state_->UpdateGauges();
}

#define KEEL_CACHE_WRITE(method, Request, Response)                              \
  void CachingBackend::method(const api::CallContext& ctx, Request request,      \
                              api::Done<Response> done) {                        \
    inner().method(ctx, std::move(request), NoteWrite(state_, std::move(done))); \
  }
KEEL_CACHE_WRITE(Put, ::etcdserverpb::PutRequest, ::etcdserverpb::PutResponse)
KEEL_CACHE_WRITE(DeleteRange, ::etcdserverpb::DeleteRangeRequest,
                 ::etcdserverpb::DeleteRangeResponse)
KEEL_CACHE_WRITE(Txn, ::etcdserverpb::TxnRequest, ::etcdserverpb::TxnResponse)
KEEL_CACHE_WRITE(Compact, ::etcdserverpb::CompactionRequest, ::etcdserverpb::CompactionResponse)
KEEL_CACHE_WRITE(LeaseRevoke, ::etcdserverpb::LeaseRevokeRequest,
                 ::etcdserverpb::LeaseRevokeResponse)
KEEL_CACHE_WRITE(Lock, ::v3lockpb::LockRequest, ::v3lockpb::LockResponse)
KEEL_CACHE_WRITE(Unlock, ::v3lockpb::UnlockRequest, ::v3lockpb::UnlockResponse)
KEEL_CACHE_WRITE(Campaign, ::v3electionpb::CampaignRequest, ::v3electionpb::CampaignResponse)
KEEL_CACHE_WRITE(Proclaim, ::v3electionpb::ProclaimRequest, ::v3electionpb::ProclaimResponse)
KEEL_CACHE_WRITE(Resign, ::v3electionpb::ResignRequest, ::v3electionpb::ResignResponse)
#undef KEEL_CACHE_WRITE

#define KEEL_CACHE_AUTH(method, Request, Response)                                    \
  void CachingBackend::method(const api::CallContext& ctx, Request request,           \
                              api::Done<Response> done) {                             \
    inner().method(ctx, std::move(request), FlushOnSuccess(state_, std::move(done))); \
  }
KEEL_CACHE_AUTH(AuthEnable, ::etcdserverpb::AuthEnableRequest, ::etcdserverpb::AuthEnableResponse)
KEEL_CACHE_AUTH(AuthDisable, ::etcdserverpb::AuthDisableRequest,
                ::etcdserverpb::AuthDisableResponse)
KEEL_CACHE_AUTH(UserAdd, ::etcdserverpb::AuthUserAddRequest, ::etcdserverpb::AuthUserAddResponse)
KEEL_CACHE_AUTH(UserDelete, ::etcdserverpb::AuthUserDeleteRequest,
                ::etcdserverpb::AuthUserDeleteResponse)
KEEL_CACHE_AUTH(UserChangePassword, ::etcdserverpb::AuthUserChangePasswordRequest,
                ::etcdserverpb::AuthUserChangePasswordResponse)
KEEL_CACHE_AUTH(UserGrantRole, ::etcdserverpb::AuthUserGrantRoleRequest,
                ::etcdserverpb::AuthUserGrantRoleResponse)
KEEL_CACHE_AUTH(UserRevokeRole, ::etcdserverpb::AuthUserRevokeRoleRequest,
                ::etcdserverpb::AuthUserRevokeRoleResponse)
KEEL_CACHE_AUTH(RoleAdd, ::etcdserverpb::AuthRoleAddRequest, ::etcdserverpb::AuthRoleAddResponse)
KEEL_CACHE_AUTH(RoleDelete, ::etcdserverpb::AuthRoleDeleteRequest,
                ::etcdserverpb::AuthRoleDeleteResponse)
KEEL_CACHE_AUTH(RoleGrantPermission, ::etcdserverpb::AuthRoleGrantPermissionRequest,
                ::etcdserverpb::AuthRoleGrantPermissionResponse)
KEEL_CACHE_AUTH(RoleRevokePermission, ::etcdserverpb::AuthRoleRevokePermissionRequest,
                ::etcdserverpb::AuthRoleRevokePermissionResponse)
#undef KEEL_CACHE_AUTH

// ----- test accessors -----

bool CachingBackend::WaitForLiveForTest(absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  auto live = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) { return state_->cache.live(); };
  return state_->mu.AwaitWithTimeout(absl::Condition(&live), timeout);
}

bool CachingBackend::WaitForFreshForTest(absl::Duration timeout) const {
  const absl::Time end = absl::Now() + timeout;
  while (true) {
    {
      absl::MutexLock lock(&state_->mu);
      // A read's arrival keeps the probes going.
      state_->last_read = absl::Now();
      if (state_->ProbeDue(absl::Now())) state_->kick = true;
      if (state_->cache.live() && state_->Fresh(absl::Now())) return true;
    }
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::Duration CachingBackend::WatchBackoffForTest() const {
  absl::MutexLock lock(&state_->mu);
  return state_->backoff;
}

int CachingBackend::ObserversForTest() const {
  absl::MutexLock lock(&state_->mu);
  return state_->observers;
}

bool CachingBackend::WaitForAppliedForTest(int64_t revision, absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  auto applied = [this, revision]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    return state_->cache.live() && state_->cache.applied_revision() >= revision;
  };
  return state_->mu.AwaitWithTimeout(absl::Condition(&applied), timeout);
}

size_t CachingBackend::EntriesForTest() const {
  absl::MutexLock lock(&state_->mu);
  return state_->cache.size();
}

}  // namespace keel::cache
