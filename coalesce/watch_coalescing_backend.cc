#include "coalesce/watch_coalescing_backend.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "api/errors.h"
#include "api/revision_probe.h"
#include "coalesce/watch_coalescer.h"
#include "common/logging.h"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;

constexpr absl::Duration kFirstBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
// The wait before the next try after `failures` failures in a row (>= 1).
absl::Duration Backoff(int failures) {
  return std::min(kMaxBackoff, kFirstBackoff * (int64_t{1} << std::min(failures - 1, 10)));
}
// An upstream stream that lived this long before failing was healthy: its
// loss starts no backoff (nor does one that delivered events or progress).
constexpr absl::Duration kHealthyAfter = absl::Seconds(10);
// A revision probe not answered by then fails: a progress request is
// answered from what is known; a create's probe is sent again after a
// backoff while etcd cannot answer it (the core's rule), so the create, and
// its client's later requests behind it, wait until etcd can.
constexpr absl::Duration kProbeTimeout = absl::Seconds(5);
// Resyncs, and creates waiting for etcd, are logged at most once per this
// interval.
constexpr absl::Duration kResyncLogInterval = absl::Seconds(10);

// Runs functions at given times on one thread of its own (the backoffs of
// reopens and of probe retries). Thread-safe. Stop() drops what has not run yet.
class Timer {
 public:
  Timer() : thread_([this] { Run(); }) {}
  ~Timer() { Stop(); }
  void At(absl::Time when, std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    tasks_.emplace(when, std::move(fn));
    added_ = true;
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopped_ = true;
      tasks_.clear();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        while (true) {
          if (stopped_) return;
          const absl::Time now = absl::Now();
          if (!tasks_.empty() && tasks_.begin()->first <= now) break;
          const absl::Time wake = tasks_.empty() ? absl::InfiniteFuture() : tasks_.begin()->first;
          added_ = false;
          auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_ || added_; };
          mu_.AwaitWithDeadline(absl::Condition(&woken), wake);
        }
        fn = std::move(tasks_.begin()->second);
        tasks_.erase(tasks_.begin());
      }
      fn();
    }
  }

  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool added_ ABSL_GUARDED_BY(mu_) = false;  // a task came in: recompute the wake-up
  std::multimap<absl::Time, std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace

// The shared state behind WatchCoalescingBackend: revision-probe completions
// and metric callbacks may outlive the decorator, so they hold it by
// shared_ptr and find it shut down.
class WatchCoalescingImpl : public std::enable_shared_from_this<WatchCoalescingImpl> {
 public:
  explicit WatchCoalescingImpl(api::Backend& inner)
      : inner_(inner), probe_(inner), log_(common::Logger("watch")) {}

  void RegisterMetrics(common::MetricsRegistry& m);
  std::unique_ptr<api::WatchStream> OpenClient(const api::CallContext& ctx,
                                               api::StreamObserver<WatchResponse>* observer);
  void Shutdown();

  // Client handle side.
  void ClientWrite(WatchClientId id, WatchRequest request);
  void ClientReadNext(WatchClientId id);
  void ClientFinish(WatchClientId id, absl::Status status);

 private:
  // The observer of one upstream Watch stream. Owned by shared_ptr: its
  // OnDone keeps it (and the impl) alive until it has returned, so dropping
  // the map entry never frees it while OnDone still runs.
  class Upstream final : public api::StreamObserver<WatchResponse>,
                         public std::enable_shared_from_this<Upstream> {
   public:
    Upstream(WatchCoalescingImpl* impl, UpstreamStreamId sid, std::string token, bool rl)
        : impl_(impl), sid_(sid), token_(std::move(token)), require_leader_(rl) {}
    void OnResponse(WatchResponse response) override {
      impl_->UpstreamResponse(sid_, std::move(response));
    }
    void OnDone(absl::Status status) override {
      const std::shared_ptr<Upstream> self = shared_from_this();
      const std::shared_ptr<WatchCoalescingImpl> impl = impl_->shared_from_this();
      impl->UpstreamDone(sid_, std::move(status));
    }

    WatchCoalescingImpl* const impl_;
    const UpstreamStreamId sid_;
    const std::string token_;
    const bool require_leader_;
    // Guarded by impl_->mu_.
    std::shared_ptr<api::WatchStream> handle;
    bool closing = false;   // we cancelled it
    bool healthy = false;   // etcd sent events or progress on it
    bool returned = false;  // its OnDone has run: the entry may go
    bool opening = true;    // inner.Watch() has not returned yet
    absl::Time opened_at = absl::InfiniteFuture();
  };
  struct ClientState {
    api::StreamObserver<WatchResponse>* observer = nullptr;
    std::string token;
    bool require_leader = false;
    int credits = 0;
    bool delivering = false;
    std::optional<absl::Status> finish;
  };

  void Enqueue(std::vector<WatchAction> actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (WatchAction& a : actions) outbox_.push_back(std::move(a));
    NoteResyncs();
  }
  // Executes queued actions in the order the core returned them, one thread
  // at a time (upstream writes must keep their order).
  void Drain();
  void Execute(WatchAction& action);
  // Delivers what client `id` has credit for (after adding `add_credits`),
  // or its end; one thread at a time per client.
  void Pump(WatchClientId id, int add_credits = 0);
  void OpenUpstream(UpstreamStreamId sid, std::string token, bool require_leader);
  void UpstreamResponse(UpstreamStreamId sid, WatchResponse response);
  void UpstreamDone(UpstreamStreamId sid, absl::Status status);
  // Sends `probe`'s read now; its result goes to ProbeDone.
  void FetchRevision(WatchProbe probe);
  void ProbeDone(ProbeId probe, absl::StatusOr<::etcdserverpb::ResponseHeader> result);
  // Logs new resyncs of the core (rate-limited).
  void NoteResyncs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs that creates wait for etcd (rate-limited like resyncs).
  void NoteProbeRetry(const WatchProbe& probe) ABSL_LOCKS_EXCLUDED(mu_);

  api::Backend& inner_;
  api::RevisionProbe probe_;
  const std::shared_ptr<spdlog::logger> log_;
  Timer timer_;
  absl::Mutex mu_;
  WatchCoalescer core_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  WatchClientId next_client_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<WatchClientId, ClientState> clients_ ABSL_GUARDED_BY(mu_);
  std::map<UpstreamStreamId, std::shared_ptr<Upstream>> upstreams_ ABSL_GUARDED_BY(mu_);
  // Upstream streams whose open waits for its backoff: true once the core
  // closed it meanwhile (it is then never opened).
  std::map<UpstreamStreamId, bool> delayed_ ABSL_GUARDED_BY(mu_);
  // Consecutive failed upstream streams per (token, require_leader); no
  // entry once a stream of that identity was healthy or was closed by us.
  std::map<std::pair<std::string, bool>, int> failures_ ABSL_GUARDED_BY(mu_);
  uint64_t resyncs_logged_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_resync_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_probe_retry_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::deque<WatchAction> outbox_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

// The client's handle on its coalesced Watch stream.
class ClientHandle final : public api::WatchStream {
 public:
  ClientHandle(std::shared_ptr<WatchCoalescingImpl> impl, WatchClientId id)
      : impl_(std::move(impl)), id_(id) {}
  ~ClientHandle() override { Cancel(); }
  void ReadNext() override { impl_->ClientReadNext(id_); }
  void Cancel() override {
    impl_->ClientFinish(id_, absl::CancelledError("watch stream cancelled"));
  }
  void Write(WatchRequest request) override { impl_->ClientWrite(id_, std::move(request)); }
  // A half-closed stream keeps its watchers and keeps receiving (etcd #8492).
  void WritesDone() override {}

 private:
  std::shared_ptr<WatchCoalescingImpl> impl_;
  const WatchClientId id_;
};

}  // namespace

void WatchCoalescingImpl::RegisterMetrics(common::MetricsRegistry& m) {
  std::shared_ptr<WatchCoalescingImpl> self = shared_from_this();
  auto read = [self](auto get) {
    return [self, get]() -> double {
      absl::MutexLock lock(&self->mu_);
      return static_cast<double>(get(self->core_));
    };
  };
  m.AddCallbackGauge("keel_watch_client_watchers", "Client watchers open through the proxy.",
                     read([](const WatchCoalescer& c) { return c.client_watchers(); }));
  m.AddCallbackGauge("keel_watch_upstream_watchers",
                     "Upstream watchers (coalesced groups and dedicated catch-up watchers).",
                     read([](const WatchCoalescer& c) { return c.upstream_watchers(); }));
  m.AddCallbackGauge("keel_watch_upstream_streams", "Upstream Watch streams open.",
                     read([](const WatchCoalescer& c) { return c.upstream_streams(); }));
  m.AddCallbackCounter("keel_watch_resyncs_total",
                       "Client watchers given a dedicated upstream watcher to catch up.",
                       read([](const WatchCoalescer& c) { return c.resyncs_total(); }));
  m.AddCallbackCounter(
      "keel_watch_create_probe_retries_total",
      "Revision probes of watch creates sent again because etcd could not answer (no quorum, "
      "unreachable); the creates wait.",
      read([](const WatchCoalescer& c) { return c.probe_retries_total(); }));
  m.AddCallbackGauge("etcd_grpc_proxy_watchers_coalescing_total",
                     "Total number of current watchers coalescing",
                     read([](const WatchCoalescer& c) { return c.watchers_coalescing(); }));
  m.AddCallbackCounter("etcd_grpc_proxy_events_coalescing_total",
                       "Total number of events coalescing",
                       read([](const WatchCoalescer& c) { return c.events_coalescing_total(); }));
}

std::unique_ptr<api::WatchStream> WatchCoalescingImpl::OpenClient(
    const api::CallContext& ctx, api::StreamObserver<WatchResponse>* observer) {
  WatchClientId id;
  {
    absl::MutexLock lock(&mu_);
    id = next_client_++;
    ClientState c;
    c.observer = observer;
    c.token = ctx.token;
    c.require_leader = ctx.require_leader;
    if (shut_down_) c.finish = absl::CancelledError("watch stream cancelled");
    clients_.emplace(id, std::move(c));
    if (!shut_down_) core_.AddClient(id, ctx.token, ctx.require_leader);
  }
  // A stream opened during shutdown ends at once (on its first ReadNext).
  return std::make_unique<ClientHandle>(shared_from_this(), id);
}

void WatchCoalescingImpl::ClientWrite(WatchClientId id, WatchRequest request) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_ || clients_.count(id) == 0) return;
    Enqueue(core_.OnClientRequest(id, request));
  }
  Drain();
}

void WatchCoalescingImpl::ClientReadNext(WatchClientId id) { Pump(id, /*add_credits=*/1); }

void WatchCoalescingImpl::ClientFinish(WatchClientId id, absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    auto it = clients_.find(id);
    if (it == clients_.end() || it->second.finish.has_value()) return;
    it->second.finish = std::move(status);
    if (!shut_down_) Enqueue(core_.RemoveClient(id));
  }
  Drain();
  Pump(id);
}

void WatchCoalescingImpl::Pump(WatchClientId id, int add_credits) {
  // One lock per response: the credit, the claim to deliver and the first
  // response are taken together (a reader taking responses one by one
  // goes through here once per response).
  bool claimed = false;
  while (true) {
    api::StreamObserver<WatchResponse>* observer;
    std::optional<WatchCoalescer::TakenResponse> response;
    std::optional<absl::Status> done;
    bool drain = false;
    {
      absl::MutexLock lock(&mu_);
      auto it = clients_.find(id);
      if (it == clients_.end()) return;
      ClientState& c = it->second;
      if (!claimed) {
        c.credits += add_credits;
        // Whoever delivers sees the credit on its next turn.
        if (c.delivering) return;
        c.delivering = claimed = true;
      }
      observer = c.observer;
      if (c.finish.has_value()) {
        done = std::move(*c.finish);
        clients_.erase(it);
      } else if (c.credits > 0 && !shut_down_) {
        auto [r, actions] = core_.PopResponse(id);
        Enqueue(std::move(actions));
        if (r.has_value()) {
          --c.credits;
          response = std::move(r);
        }
      }
      if (!done.has_value() && !response.has_value()) c.delivering = false;
      // Actions queued while another thread drains are taken by it.
      drain = !outbox_.empty() && !draining_;
    }
    if (drain) Drain();
    if (done.has_value()) {
      observer->OnDone(std::move(*done));
      return;
    }
    if (!response.has_value()) return;
    observer->OnResponse(std::move(*response).Build());
  }
}

void WatchCoalescingImpl::Drain() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return;
    draining_ = true;
  }
  while (true) {
    WatchAction action;
    {
      absl::MutexLock lock(&mu_);
      if (outbox_.empty() || shut_down_) {
        if (shut_down_) outbox_.clear();
        draining_ = false;
        return;
      }
      action = std::move(outbox_.front());
      outbox_.pop_front();
    }
    Execute(action);
  }
}

void WatchCoalescingImpl::Execute(WatchAction& action) {
  if (auto* p = std::get_if<WatchProbe>(&action)) {
    if (p->retry == 0) {
      FetchRevision(std::move(*p));
    } else {
      NoteProbeRetry(*p);
      // A create waiting for etcd: 50 ms doubling to 2 s between tries.
      timer_.At(
          absl::Now() + Backoff(p->retry),
          [self = shared_from_this(), probe = std::move(*p)]() { self->FetchRevision(probe); });
    }
  } else if (auto* o = std::get_if<WatchOpenUpstream>(&action)) {
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      auto fit = failures_.find({o->token, o->require_leader});
      const int f = fit == failures_.end() ? 0 : fit->second;
      delay = f == 0 ? absl::ZeroDuration() : Backoff(f);
    }
    if (delay == absl::ZeroDuration()) {
      OpenUpstream(o->stream, std::move(o->token), o->require_leader);
    } else {
      {
        absl::MutexLock lock(&mu_);
        delayed_[o->stream] = false;
      }
      timer_.At(absl::Now() + delay, [self = shared_from_this(), sid = o->stream, token = o->token,
                                      rl = o->require_leader]() {
        self->OpenUpstream(sid, token, rl);
        self->Drain();
      });
    }
  } else if (auto* s = std::get_if<WatchSendUpstream>(&action)) {
    std::shared_ptr<api::WatchStream> handle;
    {
      absl::MutexLock lock(&mu_);
      auto it = upstreams_.find(s->stream);
      if (it != upstreams_.end()) handle = it->second->handle;
    }
    if (handle != nullptr) handle->Write(std::move(s->request));
  } else if (auto* c = std::get_if<WatchCloseUpstream>(&action)) {
    std::shared_ptr<api::WatchStream> handle;
    {
      absl::MutexLock lock(&mu_);
      auto it = upstreams_.find(c->stream);
      if (it != upstreams_.end()) {
        // Without a handle yet (inner.Watch still running), OpenUpstream
        // cancels it when Watch returns.
        it->second->closing = true;
        handle = it->second->handle;
      } else if (auto dit = delayed_.find(c->stream); dit != delayed_.end()) {
        dit->second = true;  // never opened
      }
    }
    if (handle != nullptr) handle->Cancel();
  } else if (auto* w = std::get_if<WatchWake>(&action)) {
    Pump(w->client);
  } else if (auto* e = std::get_if<WatchEndClient>(&action)) {
    {
      absl::MutexLock lock(&mu_);
      auto it = clients_.find(e->client);
      if (it == clients_.end() || it->second.finish.has_value()) return;
      KEEL_LOG_EVENT(*log_, spdlog::level::warn, "watch client stream ended",
                     {{"reason", std::string(e->status.message())}});
      it->second.finish = std::move(e->status);
    }
    Pump(e->client);
  }
}

void WatchCoalescingImpl::FetchRevision(WatchProbe probe) {
  api::CallContext ctx;
  ctx.token = std::move(probe.token);
  ctx.require_leader = probe.require_leader;
  ctx.deadline = absl::Now() + kProbeTimeout;
  probe_.Fetch(ctx, std::move(probe.key), std::move(probe.range_end),
               [self = shared_from_this(),
                id = probe.probe](absl::StatusOr<::etcdserverpb::ResponseHeader> result) {
                 self->ProbeDone(id, std::move(result));
               });
}

void WatchCoalescingImpl::OpenUpstream(UpstreamStreamId sid, std::string token,
                                       bool require_leader) {
  Upstream* up;
  {
    absl::MutexLock lock(&mu_);
    if (auto dit = delayed_.find(sid); dit != delayed_.end()) {
      const bool closed = dit->second;
      delayed_.erase(dit);
      if (closed) return;  // every watcher of it left during the backoff
    }
    if (shut_down_) return;
    for (auto it = upstreams_.begin(); it != upstreams_.end();) {
      const bool gone = it->second->returned && !it->second->opening;
      it = gone ? upstreams_.erase(it) : std::next(it);
    }
    auto owned = std::make_shared<Upstream>(this, sid, token, require_leader);
    up = owned.get();
    upstreams_[sid] = std::move(owned);
  }
  api::CallContext ctx;
  ctx.token = std::move(token);
  ctx.require_leader = require_leader;
  std::shared_ptr<api::WatchStream> handle = inner_.Watch(ctx, up);
  bool cancel = false;
  {
    absl::MutexLock lock(&mu_);
    if (!up->returned) up->handle = handle;
    up->opening = false;
    up->opened_at = absl::Now();
    if (shut_down_ || up->returned || up->closing) {
      cancel = true;
    } else {
      Enqueue(core_.OnUpstreamOpened(sid));
    }
  }
  if (cancel) {
    handle->Cancel();
    return;
  }
  handle->ReadNext();
}

void WatchCoalescingImpl::UpstreamResponse(UpstreamStreamId sid, WatchResponse response) {
  std::shared_ptr<api::WatchStream> handle;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    auto it = upstreams_.find(sid);
    if (it == upstreams_.end()) return;
    Upstream& up = *it->second;
    if (!up.healthy && !response.created() && !response.canceled()) {
      // Events or progress: the stream works (a `created` alone does not
      // prove it; a stream failing right after it must keep backing off).
      up.healthy = true;
      auto fit = failures_.find({up.token_, up.require_leader_});
      if (fit != failures_.end()) {
        KEEL_LOG_EVENT(*log_, spdlog::level::info, "upstream watch stream recovered",
                       {{"failed-attempts", fit->second}});
        failures_.erase(fit);
      }
    }
    handle = up.handle;
    Enqueue(core_.OnUpstreamResponse(sid, std::move(response)));
  }
  Drain();
  if (handle != nullptr) handle->ReadNext();
}

void WatchCoalescingImpl::UpstreamDone(UpstreamStreamId sid, absl::Status status) {
  std::shared_ptr<api::WatchStream> handle;
  std::vector<WatchClientId> finish;
  {
    absl::MutexLock lock(&mu_);
    Upstream* up = upstreams_.at(sid).get();
    handle = std::move(up->handle);
    const std::pair<std::string, bool> identity{up->token_, up->require_leader_};
    if (up->closing) failures_.erase(identity);  // nothing of it is wanted now
    if (!shut_down_ && !up->closing) {
      if (up->healthy || absl::Now() - up->opened_at >= kHealthyAfter) {
        failures_.erase(identity);
        KEEL_LOG_EVENT(*log_, spdlog::level::warn,
                       "upstream watch stream lost; re-creating its watchers",
                       {{"error", status.ToString()}});
      } else if (++failures_[identity] == 1) {
        KEEL_LOG_EVENT(*log_, spdlog::level::warn,
                       "upstream watch stream failing; retrying with backoff",
                       {{"error", status.ToString()}});
      }
      // etcd ends every require-leader stream when its member loses the
      // leader; the clients of that identity get the same end.
      if (up->require_leader_ &&
          api::ParseEtcdError(status) == std::optional(api::EtcdError::kNoLeader)) {
        for (auto& [id, c] : clients_) {
          if (c.require_leader && c.token == up->token_ && !c.finish.has_value()) {
            c.finish = status;
            Enqueue(core_.RemoveClient(id));
            finish.push_back(id);
          }
        }
      }
      Enqueue(core_.OnUpstreamLost(sid));
    }
  }
  Drain();
  handle.reset();
  for (WatchClientId id : finish) Pump(id);
  absl::MutexLock lock(&mu_);
  upstreams_.at(sid)->returned = true;
}

void WatchCoalescingImpl::ProbeDone(ProbeId probe,
                                    absl::StatusOr<::etcdserverpb::ResponseHeader> result) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    Enqueue(core_.OnProbeResult(probe, result));
  }
  Drain();
}

void WatchCoalescingImpl::NoteResyncs() {
  const uint64_t total = core_.resyncs_total();
  if (total <= resyncs_logged_) return;
  const absl::Time now = absl::Now();
  if (now - last_resync_log_ < kResyncLogInterval) return;
  KEEL_LOG_EVENT(*log_, spdlog::level::warn,
                 "watchers resynced on upstream watchers of their own (slow client or history "
                 "too short)",
                 {{"resyncs", total - resyncs_logged_}, {"resyncs-total", total}});
  resyncs_logged_ = total;
  last_resync_log_ = now;
}

void WatchCoalescingImpl::NoteProbeRetry(const WatchProbe& probe) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (now - last_probe_retry_log_ < kResyncLogInterval) return;
  KEEL_LOG_EVENT(*log_, spdlog::level::warn,
                 "watch creates wait: etcd could not answer their revision probe, trying again",
                 {{"error", probe.error}, {"retry", probe.retry}});
  last_probe_retry_log_ = now;
}

void WatchCoalescingImpl::Shutdown() {
  std::vector<WatchClientId> clients;
  std::vector<std::shared_ptr<api::WatchStream>> handles;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    core_.Clear();
    delayed_.clear();
    failures_.clear();
    for (auto& [id, c] : clients_) {
      if (!c.finish.has_value()) c.finish = absl::CancelledError("watch stream cancelled");
      clients.push_back(id);
    }
    for (auto& [sid, up] : upstreams_) {
      up->closing = true;
      if (up->handle != nullptr) handles.push_back(up->handle);
    }
  }
  // No new upstream Range from a probe completing from now on; its waiters
  // get CANCELLED into ProbeDone, which finds shut_down_.
  probe_.Close();
  for (WatchClientId id : clients) Pump(id);
  for (auto& h : handles) h->Cancel();
  handles.clear();
  // No reopen after this: a pending one finds shut_down_.
  timer_.Stop();
  absl::MutexLock lock(&mu_);
  auto all_returned = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [sid, up] : upstreams_) {
      if (!up->returned) return false;
    }
    return true;
  };
  mu_.Await(absl::Condition(&all_returned));
  upstreams_.clear();
}

WatchCoalescingBackend::WatchCoalescingBackend(api::Backend& inner,
                                               common::MetricsRegistry* metrics)
    : ForwardingBackend(inner), impl_(std::make_shared<WatchCoalescingImpl>(inner)) {
  if (metrics != nullptr) impl_->RegisterMetrics(*metrics);
}

WatchCoalescingBackend::~WatchCoalescingBackend() { impl_->Shutdown(); }

std::unique_ptr<api::WatchStream> WatchCoalescingBackend::Watch(
    const api::CallContext& ctx, api::StreamObserver<WatchResponse>* observer) {
  return impl_->OpenClient(ctx, observer);
}

}  // namespace keel::coalesce
