#include "coalesce/lease_coalescing_backend.h"

#include <algorithm>
#include <deque>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/errors.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::LeaseKeepAliveRequest;
using ::etcdserverpb::LeaseKeepAliveResponse;

// Reopen backoff while upstream streams keep failing without answering.
constexpr absl::Duration kMinBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);

}  // namespace

// One coalesced client stream. Every field but the constants is guarded by
// the backend's mu_ (a member mutex cannot name it in an annotation).
struct LeaseCoalescingBackend::Client {
  Client(api::StreamObserver<LeaseKeepAliveResponse>* o, Lane* l) : observer(o), lane(l) {}

  api::StreamObserver<LeaseKeepAliveResponse>* const observer;
  // The lane (core and upstream stream) of the client's require_leader flag.
  Lane* const lane;
  ClientId id = 0;
  // Known to its lane's core and in its clients (false once ended).
  bool registered = true;
  // Replies not yet delivered; with the core's pending requests bounded by
  // kMaxClientBacklog.
  std::deque<LeaseKeepAliveResponse> queue;
  // ReadNext() calls not yet used by a reply.
  int credits = 0;
  // OnDone with this status once the queue is delivered (a half-close that
  // got every reply: OK; require-leader clients: `etcdserver: no leader`).
  std::optional<absl::Status> finish;
  // OnDone with this status at once, queue dropped (Cancel()/the handle's
  // destruction: CANCELLED; backlog overflow: RESOURCE_EXHAUSTED).
  std::optional<absl::Status> abort;
  // A thread is delivering to the observer (callbacks never overlap).
  bool delivering = false;
  // OnDone has been (or is being) delivered: nothing more for the observer.
  bool done = false;
};

// Receives the callbacks of upstream stream `up` (which owns it).
class LeaseCoalescingBackend::UpstreamObserver final
    : public api::StreamObserver<LeaseKeepAliveResponse> {
 public:
  UpstreamObserver(LeaseCoalescingBackend* backend, Upstream* up) : backend_(backend), up_(up) {}
  void OnResponse(LeaseKeepAliveResponse response) override;
  // The last thing it does is hand the stream to the worker to free: nothing
  // of this observer is touched after that.
  void OnDone(absl::Status status) override;

 private:
  LeaseCoalescingBackend* const backend_;
  Upstream* const up_;
};

// One upstream stream generation of one lane: the observer and the handle.
// Fields other than the constants are guarded by mu_.
struct LeaseCoalescingBackend::Upstream {
  Upstream(LeaseCoalescingBackend* backend, Lane* l, UpstreamId upstream_id)
      : lane(l), id(upstream_id), observer(backend, this) {}

  Lane* const lane;
  const UpstreamId id;
  UpstreamObserver observer;
  // Set once inner.LeaseKeepAlive has returned, never changed after.
  std::unique_ptr<api::LeaseKeepAliveStream> handle;
  // OnDone has started: no more writes, not counted as open.
  bool ended = false;
};

void LeaseCoalescingBackend::UpstreamObserver::OnResponse(LeaseKeepAliveResponse response) {
  backend_->UpstreamResponse(*up_, response);
}

void LeaseCoalescingBackend::UpstreamObserver::OnDone(absl::Status status) {
  backend_->UpstreamDone(*up_, status);
}

// The clients of one require_leader flag, their core and their upstream
// streams. Guarded by the backend's mu_.
struct LeaseCoalescingBackend::Lane {
  explicit Lane(bool rl) : require_leader(rl) {}

  // Upstream streams of this lane are opened with this flag.
  const bool require_leader;
  LeaseCoalescer core;
  // Registered (not yet finished or ended) clients.
  std::map<ClientId, std::shared_ptr<Client>> clients;
  // Upstream streams whose OnDone has not returned yet (at most one of them
  // not ended).
  std::map<UpstreamId, std::shared_ptr<Upstream>> upstreams;
  // A reopen the worker makes at `reopen_at`.
  std::optional<UpstreamId> reopen;
  absl::Time reopen_at;
  // Delay before the next upstream open: zero after a reply, then 50 ms
  // doubling to 2 s with every open.
  absl::Duration backoff = absl::ZeroDuration();
  // In a failure streak (warned once; an upstream reply ends it).
  bool failing = false;
  // Require-leader clients were ended for `etcdserver: no leader` (warned
  // once; an upstream reply ends it).
  bool no_leader = false;
};

// The caller's handle on a coalesced client stream.
class LeaseCoalescingBackend::ClientHandle final : public api::LeaseKeepAliveStream {
 public:
  ClientHandle(LeaseCoalescingBackend* backend, std::shared_ptr<Client> client)
      : backend_(backend), client_(std::move(client)) {}
  // The front may destroy the handle inside the observer's OnDone; by then
  // the stream is done and ClientCancel does nothing.
  ~ClientHandle() override { backend_->ClientCancel(client_); }

  void ReadNext() override { backend_->ClientReadNext(client_); }
  void Cancel() override { backend_->ClientCancel(client_); }
  void Write(LeaseKeepAliveRequest request) override {
    backend_->ClientWrite(client_, request.id());
  }
  void WritesDone() override { backend_->ClientWritesDone(client_); }

 private:
  LeaseCoalescingBackend* const backend_;
  const std::shared_ptr<Client> client_;
};

// What to do once mu_ is released, in this order: log, write upstream, open,
// deliver to clients.
struct LeaseCoalescingBackend::Effects {
  struct Log {
    spdlog::level::level_enum level;
    const char* msg;
    nlohmann::json fields;
  };
  std::vector<Log> logs;
  std::vector<std::pair<std::shared_ptr<Upstream>, int64_t>> writes;
  std::vector<std::pair<Lane*, UpstreamId>> opens;
  std::vector<std::shared_ptr<Client>> pumps;
};

LeaseCoalescingBackend::LeaseCoalescingBackend(api::Backend& inner,
                                               common::MetricsRegistry* metrics)
    : api::ForwardingBackend(inner),
      own_metrics_(metrics == nullptr ? std::make_unique<common::MetricsRegistry>() : nullptr),
      metrics_(metrics != nullptr ? metrics : own_metrics_.get()),
      log_(common::Logger("grpc-proxy")) {
  client_streams_ = metrics_->GetGauge("keel_lease_keepalive_client_streams",
                                       "Client LeaseKeepAlive streams served by the coalescer.");
  upstream_streams_ = metrics_->GetGauge(
      "keel_lease_keepalive_upstream_streams",
      "Upstream LeaseKeepAlive streams open for coalesced clients (one per require-leader flag).");
  client_requests_ = metrics_->GetCounter("keel_lease_keepalive_client_requests_total",
                                          "Keep-alive requests received on coalesced streams.");
  upstream_requests_ = metrics_->GetCounter("keel_lease_keepalive_upstream_requests_total",
                                            "Keep-alive requests written to the upstream stream.");
  {
    absl::MutexLock lock(&mu_);
    lanes_[0] = std::make_unique<Lane>(/*rl=*/false);
    lanes_[1] = std::make_unique<Lane>(/*rl=*/true);
  }
  worker_ = std::thread([this] { WorkerLoop(); });
}

LeaseCoalescingBackend::~LeaseCoalescingBackend() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& lane : lanes_) lane->reopen.reset();
    worker_cv_.Signal();
  }
  worker_.join();

  // No reopen happens any more; cancel what is open and wait until every
  // upstream OnDone has returned.
  std::vector<std::shared_ptr<Upstream>> live;
  {
    absl::MutexLock lock(&mu_);
    auto opened = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return opening_ == 0; };
    mu_.Await(absl::Condition(&opened));
    for (auto& lane : lanes_) {
      for (auto& [id, up] : lane->upstreams) live.push_back(up);
    }
  }
  for (auto& up : live) up->handle->Cancel();
  std::vector<std::shared_ptr<Upstream>> retired;
  std::map<ClientId, std::shared_ptr<Client>> clients[2];
  {
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return lanes_[0]->upstreams.empty() && lanes_[1]->upstreams.empty();
    };
    mu_.Await(absl::Condition(&ended));
    retired.swap(retired_);
    for (int i = 0; i < 2; ++i) clients[i].swap(lanes_[i]->clients);
  }
  // Handles and observers are freed here, outside mu_ and after every OnDone.
}

std::unique_ptr<api::LeaseKeepAliveStream> LeaseCoalescingBackend::LeaseKeepAlive(
    const api::CallContext& ctx, api::StreamObserver<LeaseKeepAliveResponse>* observer) {
  std::shared_ptr<Client> client;
  {
    absl::MutexLock lock(&mu_);
    Lane& lane = *lanes_[ctx.require_leader ? 1 : 0];
    client = std::make_shared<Client>(observer, &lane);
    client->id = next_client_++;
    lane.core.AddClient(client->id);
    lane.clients.emplace(client->id, client);
  }
  client_streams_->Add(1);
  return std::make_unique<ClientHandle>(this, std::move(client));
}

void LeaseCoalescingBackend::ClientWrite(std::shared_ptr<Client> client, int64_t lease_id) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    if (!client->registered) return;
    client_requests_->Increment();
    Lane& lane = *client->lane;
    if (client->queue.size() + lane.core.Pending(client->id) >= kMaxClientBacklog) {
      Abort(*client, absl::ResourceExhaustedError(absl::StrCat(
                         "lease keep-alive stream ended: more than ", kMaxClientBacklog,
                         " keep-alive requests unanswered or replies unread")));
      fx.pumps.push_back(client);
    } else {
      Apply(lane, lane.core.OnClientRequest(client->id, lease_id), /*open_inline=*/true, fx);
    }
  }
  Run(fx);
}

void LeaseCoalescingBackend::ClientWritesDone(std::shared_ptr<Client> client) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    if (!client->registered) return;
    Lane& lane = *client->lane;
    Apply(lane, lane.core.OnClientHalfClose(client->id), /*open_inline=*/true, fx);
  }
  Run(fx);
}

void LeaseCoalescingBackend::ClientReadNext(std::shared_ptr<Client> client) {
  {
    absl::MutexLock lock(&mu_);
    if (client->done) return;
    ++client->credits;
  }
  Pump(std::move(client));
}

void LeaseCoalescingBackend::ClientCancel(std::shared_ptr<Client> client) {
  {
    absl::MutexLock lock(&mu_);
    if (client->done || client->abort.has_value()) return;
    Abort(*client, absl::CancelledError("context canceled"));
  }
  Pump(std::move(client));
}

void LeaseCoalescingBackend::UpstreamResponse(Upstream& up,
                                              const LeaseKeepAliveResponse& response) {
  Effects fx;
  api::LeaseKeepAliveStream* handle = nullptr;
  {
    absl::MutexLock lock(&mu_);
    Lane& lane = *up.lane;
    lane.backoff = absl::ZeroDuration();
    if (lane.failing || lane.no_leader) {
      lane.failing = false;
      lane.no_leader = false;
      fx.logs.push_back({spdlog::level::info,
                         "lease keep-alive upstream stream recovered",
                         {{"require-leader", lane.require_leader}}});
    }
    Apply(lane, lane.core.OnUpstreamResponse(up.id, response), /*open_inline=*/false, fx);
    handle = up.handle.get();
  }
  // The next upstream reply may come at once; our clients' queues absorb it.
  // (The stream, and so the handle, lives until after our OnDone.)
  if (handle != nullptr) handle->ReadNext();
  Run(fx);
}

void LeaseCoalescingBackend::UpstreamDone(Upstream& up, const absl::Status& status) {
  Effects fx;
  Lane& lane = *up.lane;
  {
    absl::MutexLock lock(&mu_);
    up.ended = true;
    UpdateUpstreamGauge();
    if (!stopping_) {
      // etcd ends every require-leader stream when its member has no leader;
      // the require-leader clients get the same end (after the replies they
      // are owed).
      if (lane.require_leader &&
          api::ParseEtcdError(status) == std::optional(api::EtcdError::kNoLeader)) {
        std::vector<std::shared_ptr<Client>> ended;
        for (auto& [id, client] : lane.clients) ended.push_back(client);
        for (std::shared_ptr<Client>& client : ended) {
          client->finish = status;
          ForgetClient(*client);
          fx.pumps.push_back(std::move(client));
        }
        // Once until a reply comes again: clients that retry would
        // otherwise log one line per attempt.
        if (!ended.empty() && !lane.no_leader) {
          lane.no_leader = true;
          fx.logs.push_back({spdlog::level::warn,
                             "etcd has no leader; ending require-leader keep-alive streams",
                             {{"client-streams", ended.size()}}});
        }
      }
      // Requests in flight on the lost stream are re-sent on the next one.
      std::vector<Action> actions = lane.core.OnUpstreamLost(up.id);
      const bool reopening = std::any_of(actions.begin(), actions.end(), [](const Action& a) {
        return std::holds_alternative<OpenUpstream>(a);
      });
      if (reopening && !lane.failing) {
        lane.failing = true;
        fx.logs.push_back(
            {spdlog::level::warn,
             "lease keep-alive upstream stream failed; reopening it",
             {{"error", status.ToString()}, {"require-leader", lane.require_leader}}});
      }
      Apply(lane, std::move(actions), /*open_inline=*/false, fx);
    }
  }
  Run(fx);
  // Our OnDone is over but for returning: the worker may free the stream.
  absl::MutexLock lock(&mu_);
  auto it = lane.upstreams.find(up.id);
  retired_.push_back(std::move(it->second));
  lane.upstreams.erase(it);
  worker_cv_.Signal();
}

void LeaseCoalescingBackend::Apply(Lane& lane, std::vector<Action> actions, bool open_inline,
                                   Effects& fx) {
  for (Action& action : actions) {
    if (auto* open = std::get_if<OpenUpstream>(&action)) {
      if (stopping_) continue;
      const absl::Duration delay = lane.backoff;
      lane.backoff = lane.backoff == absl::ZeroDuration() ? kMinBackoff
                                                          : std::min(2 * lane.backoff, kMaxBackoff);
      if (delay == absl::ZeroDuration() && open_inline) {
        fx.opens.emplace_back(&lane, open->upstream);
      } else {
        lane.reopen = open->upstream;
        lane.reopen_at = absl::Now() + delay;
        worker_cv_.Signal();
      }
    } else if (auto* send = std::get_if<SendUpstream>(&action)) {
      // A stream that is gone (or not ours yet) is skipped: the core re-sends
      // the request on the next stream.
      auto it = lane.upstreams.find(send->upstream);
      if (it == lane.upstreams.end() || it->second->handle == nullptr || it->second->ended) {
        continue;
      }
      upstream_requests_->Increment();
      fx.writes.emplace_back(it->second, send->lease_id);
    } else if (auto* reply = std::get_if<Reply>(&action)) {
      auto it = lane.clients.find(reply->client);
      if (it == lane.clients.end()) continue;
      it->second->queue.push_back(std::move(reply->response));
      fx.pumps.push_back(it->second);
    } else if (auto* finish = std::get_if<FinishClient>(&action)) {
      auto it = lane.clients.find(finish->client);
      if (it == lane.clients.end()) continue;
      std::shared_ptr<Client> client = it->second;
      client->finish = absl::OkStatus();
      ForgetClient(*client);
      fx.pumps.push_back(std::move(client));
    }
  }
}

void LeaseCoalescingBackend::Run(Effects& fx) {
  for (Effects::Log& line : fx.logs) common::LogEvent(*log_, line.level, line.msg, line.fields);
  for (auto& [up, lease_id] : fx.writes) {
    LeaseKeepAliveRequest request;
    request.set_id(lease_id);
    up->handle->Write(std::move(request));
  }
  for (auto& [lane, id] : fx.opens) OpenUpstreamNow(*lane, id);
  for (std::shared_ptr<Client>& client : fx.pumps) Pump(std::move(client));
}

void LeaseCoalescingBackend::OpenUpstreamNow(Lane& lane, UpstreamId id) {
  auto up = std::make_shared<Upstream>(this, &lane, id);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    lane.upstreams.emplace(id, up);
    ++opening_;
    UpdateUpstreamGauge();
  }
  // No token: etcd does not check auth on keep-alives, and the stream is
  // shared by every client of the lane.
  api::CallContext ctx;
  ctx.require_leader = lane.require_leader;
  std::unique_ptr<api::LeaseKeepAliveStream> handle = inner().LeaseKeepAlive(ctx, &up->observer);
  api::LeaseKeepAliveStream* stream = handle.get();
  {
    absl::MutexLock lock(&mu_);
    up->handle = std::move(handle);
  }
  stream->ReadNext();
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    // Stale (ignored by the core) if the stream already ended.
    Apply(lane, lane.core.OnUpstreamOpened(id), /*open_inline=*/true, fx);
  }
  Run(fx);
  // Last: the destructor waits for this before it cancels the streams.
  absl::MutexLock lock(&mu_);
  --opening_;
}

void LeaseCoalescingBackend::Pump(std::shared_ptr<Client> client) {
  mu_.Lock();
  if (client->delivering || client->done) {
    mu_.Unlock();
    return;
  }
  client->delivering = true;
  while (true) {
    std::optional<LeaseKeepAliveResponse> response;
    std::optional<absl::Status> status;
    if (client->abort.has_value()) {
      status = *client->abort;
    } else if (client->credits > 0 && !client->queue.empty()) {
      response = std::move(client->queue.front());
      client->queue.pop_front();
      --client->credits;
    } else if (client->queue.empty() && client->finish.has_value()) {
      status = *client->finish;
    } else {
      client->delivering = false;
      mu_.Unlock();
      return;
    }
    if (status.has_value()) {
      // Decided under the lock: no other thread delivers to this client again.
      client->done = true;
      client->delivering = false;
      client->queue.clear();
    }
    mu_.Unlock();
    if (response.has_value()) {
      client->observer->OnResponse(std::move(*response));
      mu_.Lock();
      continue;
    }
    // The observer (and our handle with it) may be destroyed inside OnDone.
    client->observer->OnDone(std::move(*status));
    return;
  }
}

void LeaseCoalescingBackend::Abort(Client& client, absl::Status status) {
  client.abort = std::move(status);
  client.queue.clear();
  ForgetClient(client);
}

void LeaseCoalescingBackend::ForgetClient(Client& client) {
  if (!client.registered) return;
  client.registered = false;
  client.lane->core.RemoveClient(client.id);
  client.lane->clients.erase(client.id);
  client_streams_->Add(-1);
}

void LeaseCoalescingBackend::UpdateUpstreamGauge() {
  int64_t open = 0;
  for (auto& lane : lanes_) {
    for (auto& [id, up] : lane->upstreams) open += up->ended ? 0 : 1;
  }
  upstream_streams_->Set(open);
}

void LeaseCoalescingBackend::WorkerLoop() {
  mu_.Lock();
  while (true) {
    if (!retired_.empty()) {
      std::vector<std::shared_ptr<Upstream>> retired;
      retired.swap(retired_);
      mu_.Unlock();
      retired.clear();  // destroys the handles outside mu_
      mu_.Lock();
      continue;
    }
    if (stopping_) break;
    Lane* due = nullptr;
    absl::Time next = absl::InfiniteFuture();
    const absl::Time now = absl::Now();
    for (auto& lane : lanes_) {
      if (!lane->reopen.has_value()) continue;
      if (now >= lane->reopen_at) {
        due = lane.get();
        break;
      }
      next = std::min(next, lane->reopen_at);
    }
    if (due != nullptr) {
      const UpstreamId id = *due->reopen;
      due->reopen.reset();
      mu_.Unlock();
      OpenUpstreamNow(*due, id);
      mu_.Lock();
      continue;
    }
    if (next != absl::InfiniteFuture()) {
      worker_cv_.WaitWithDeadline(&mu_, next);
    } else {
      worker_cv_.Wait(&mu_);
    }
  }
  mu_.Unlock();
}

}  // namespace keel::coalesce
