#include <algorithm>
#include <cstdio>
#include <deque>
#include <random>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/commands.h"
#include "bench/report.h"
#include "bench/server_metrics.h"
#include "bench/unary_runner.h"

namespace keel::bench {

namespace {

// Grants leases and collects their IDs.
class GrantWorkload : public Workload {
 public:
  explicit GrantWorkload(int64_t ttl) {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    body_ = req.SerializeAsString();
  }
  Request Build(int, uint64_t) override { return {kLeaseGrantMethod, body_}; }
  std::string Completed(int, const Request&, std::string_view response) override {
    etcdserverpb::LeaseGrantResponse resp;
    if (!resp.ParseFromArray(response.data(), static_cast<int>(response.size()))) {
      return "undecodable LeaseGrantResponse";
    }
    if (!resp.error().empty()) return resp.error();
    absl::MutexLock lock(&mu_);
    ids_.push_back(resp.id());
    return "";
  }
  std::vector<int64_t> TakeIds() {
    absl::MutexLock lock(&mu_);
    return std::move(ids_);
  }

 private:
  std::string body_;
  absl::Mutex mu_;
  std::vector<int64_t> ids_ ABSL_GUARDED_BY(mu_);
};

// Revokes the given leases.
class RevokeWorkload : public Workload {
 public:
  explicit RevokeWorkload(std::vector<int64_t> ids) : ids_(std::move(ids)) {}
  Request Build(int, uint64_t seq) override {
    etcdserverpb::LeaseRevokeRequest req;
    req.set_id(ids_[seq % ids_.size()]);
    return {kLeaseRevokeMethod, req.SerializeAsString()};
  }

 private:
  std::vector<int64_t> ids_;
};

// Shared progress of the keepalive phase. Thread-safe (atomics, Recorder).
struct KeepaliveState {
  bool by_time = false;
  uint64_t total = 0;
  absl::Time deadline = absl::InfiniteFuture();
  absl::Duration interval;
  bool spread = false;
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> replied{0};
  std::atomic<int64_t> finished{0};
  Recorder latency;

  // Claims the right to send one more keepalive.
  bool MaySend() {
    if (by_time) return absl::Now() < deadline;
    return sent.fetch_add(1) < total;
  }
};

// One LeaseKeepAlive stream keeping its leases alive: each lease has at most
// one request outstanding; after its reply it is sent again at once or after
// --interval. Confined to its queue's thread but for Start, Cancel and
// outstanding(); must outlive the transport's Shutdown.
class KeepaliveStream : private StreamCall::Handler {
 public:
  // `index` tells the streams apart (it seeds --spread's offsets).
  KeepaliveStream(Transport& transport, int index, int conn, int queue, std::vector<int64_t> leases,
                  KeepaliveState& state)
      : transport_(transport), index_(index), conn_(conn), queue_(queue), state_(state) {
    for (int64_t id : leases) ready_.push_back(id);
  }

  void Start() {
    transport_.RunAt(queue_, absl::Now(), [this] {
      if (cancelled_.load()) {  // cancelled before it was opened
        state_.finished.fetch_add(1);
        return;
      }
      call_ = transport_.OpenStream(queue_, conn_, kLeaseKeepAliveMethod, this);
      if (state_.spread && state_.interval > absl::ZeroDuration()) {
        // First keepalives at uniformly random points of the first interval.
        std::mt19937_64 rng(0x7370726561640000ULL + static_cast<uint64_t>(index_));
        std::uniform_real_distribution<double> offset(0, absl::ToDoubleSeconds(state_.interval));
        const absl::Time start = absl::Now();
        std::vector<std::pair<absl::Time, int64_t>> first;
        for (int64_t id : ready_) first.push_back({start + absl::Seconds(offset(rng)), id});
        ready_.clear();
        std::sort(first.begin(), first.end());
        delayed_.assign(first.begin(), first.end());
        ArmTimer();
        return;
      }
      SendReady();
    });
  }
  void Cancel() {
    cancelled_.store(true);
    transport_.RunAt(queue_, absl::Now(), [this] {
      if (call_ != nullptr) call_->Cancel();
    });
  }
  size_t outstanding() const { return outstanding_.load(); }
  const std::string& error() const { return error_; }

 private:
  void SendReady() {
    if (ended_ || cancelled_.load()) return;
    etcdserverpb::LeaseKeepAliveRequest req;
    while (!ready_.empty()) {
      if (!state_.MaySend()) {
        ready_.clear();
        return;
      }
      const int64_t id = ready_.front();
      ready_.pop_front();
      sent_at_[id] = absl::Now();
      outstanding_.fetch_add(1);
      req.set_id(id);
      call_->Write(req.SerializeAsString());
    }
  }

  void OnMessage(std::string_view message) override {
    const absl::Time now = absl::Now();
    if (!resp_.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
      state_.latency.AddError("undecodable LeaseKeepAliveResponse");
      return;
    }
    auto it = sent_at_.find(resp_.id());
    if (it == sent_at_.end()) return;
    if (resp_.ttl() <= 0) {
      state_.latency.AddError("keepalive reply with TTL <= 0 (lease not found or expired)");
    } else {
      state_.latency.AddLatency(now - it->second);
    }
    sent_at_.erase(it);
    outstanding_.fetch_sub(1);
    state_.replied.fetch_add(1);
    if (state_.interval <= absl::ZeroDuration()) {
      ready_.push_back(resp_.id());
      SendReady();
    } else {
      delayed_.push_back({now + state_.interval, resp_.id()});
      ArmTimer();
    }
  }

  // One timer at a time, for the earliest delayed lease.
  void ArmTimer() {
    if (timer_armed_ || delayed_.empty() || ended_ || cancelled_.load()) return;
    timer_armed_ = true;
    transport_.RunAt(queue_, delayed_.front().first, [this] { OnTimer(); });
  }

  void OnTimer() {
    timer_armed_ = false;
    const absl::Time now = absl::Now();
    while (!delayed_.empty() && delayed_.front().first <= now) {
      ready_.push_back(delayed_.front().second);
      delayed_.pop_front();
    }
    SendReady();
    ArmTimer();
  }

  void OnEnd(const grpc::Status& status) override {
    ended_ = true;
    if (!cancelled_.load()) {
      error_ = status.ok() ? "keepalive stream closed by the server" : GrpcErrorText(status);
    }
    state_.finished.fetch_add(1);
  }

  Transport& transport_;
  const int index_;
  const int conn_;
  const int queue_;
  KeepaliveState& state_;
  std::unique_ptr<StreamCall> call_;
  etcdserverpb::LeaseKeepAliveResponse resp_;
  std::deque<int64_t> ready_;
  std::deque<std::pair<absl::Time, int64_t>> delayed_;  // due times ascend: fixed interval
  std::unordered_map<int64_t, absl::Time> sent_at_;
  std::atomic<size_t> outstanding_{0};
  bool timer_armed_ = false;
  bool ended_ = false;
  std::atomic<bool> cancelled_{false};
  std::string error_;
};

}  // namespace

absl::Status RunLeaseKeepalive(const GlobalOptions& g, const LeaseOptions& o) {
  if (o.leases < 1 || o.streams < 1 || o.ttl < 1) {
    return absl::InvalidArgumentError("--leases, --streams and --ttl must be at least 1");
  }
  absl::StatusOr<std::unique_ptr<Transport>> transport = Transport::Dial(g);
  if (!transport.ok()) return transport.status();
  UnaryRunner runner(g, **transport);

  // Grant the leases with --clients concurrent requests.
  GrantWorkload grants(o.ttl);
  const absl::Time grant_start = absl::Now();
  RunResult granted = runner.Run(grants, static_cast<uint64_t>(o.leases), 0, absl::ZeroDuration(),
                                 g.clients, false);
  const absl::Duration grant_time = absl::Now() - grant_start;
  std::vector<int64_t> ids = grants.TakeIds();
  if (ids.size() != static_cast<size_t>(o.leases)) {
    (*transport)->Shutdown();
    const std::string why =
        granted.overall.errors.empty() ? "unknown error" : granted.overall.errors.begin()->first;
    return absl::UnavailableError(
        absl::StrCat("granted only ", ids.size(), " of ", o.leases, " leases: ", why));
  }

  KeepaliveState state;
  state.by_time = g.duration > absl::ZeroDuration();
  state.total = g.total;
  state.interval = o.interval;
  state.spread = o.spread;
  std::vector<std::vector<int64_t>> shares(static_cast<size_t>(o.streams));
  for (size_t i = 0; i < ids.size(); ++i) shares[i % shares.size()].push_back(ids[i]);
  std::vector<std::unique_ptr<KeepaliveStream>> streams;
  for (int s = 0; s < o.streams; ++s) {
    const int conn = s % (*transport)->conns();
    streams.push_back(
        std::make_unique<KeepaliveStream>(**transport, s, conn, (*transport)->QueueFor(s, conn),
                                          std::move(shares[static_cast<size_t>(s)]), state));
  }
  std::optional<ServerMetrics> before;
  if (!o.metrics_url.empty()) before = ScrapeServerMetrics(o.metrics_url);
  const absl::Time start = absl::Now();
  if (state.by_time) state.deadline = start + g.duration;
  const absl::Duration grace = absl::Seconds(std::max<int64_t>(10, o.ttl));
  std::string stuck;
  std::optional<ServerMetrics> after;
  {
    ProgressBar bar(g.progress, [&] {
      if (state.by_time) {
        return absl::ToDoubleSeconds(absl::Now() - start) / absl::ToDoubleSeconds(g.duration);
      }
      return static_cast<double>(state.replied.load()) / static_cast<double>(state.total);
    });
    for (auto& s : streams) s->Start();
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      if (state.finished.load() > 0) break;  // a stream died: report it
      const absl::Time now = absl::Now();
      const bool sending_over =
          state.by_time ? now >= state.deadline : state.sent.load() >= state.total;
      if (!sending_over) continue;
      size_t outstanding = 0;
      for (auto& s : streams) outstanding += s->outstanding();
      if (outstanding == 0) break;
      const absl::Time end = state.by_time ? state.deadline : now;
      if (now > end + grace) {
        stuck = absl::StrCat(outstanding, " keepalives not answered");
        break;
      }
    }
    if (before) after = ScrapeServerMetrics(o.metrics_url);
  }
  const absl::Duration elapsed = absl::Now() - start;
  for (auto& s : streams) s->Cancel();
  const absl::Time close_deadline = absl::Now() + absl::Seconds(10);
  while (state.finished.load() < o.streams && absl::Now() < close_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (auto& s : streams) {
    if (!s->error().empty()) state.latency.AddError(s->error());
  }
  if (!stuck.empty()) state.latency.AddError(stuck);
  Summary summary = state.latency.Finish(elapsed);

  RevokeWorkload revokes(ids);
  RunResult revoked = runner.Run(revokes, ids.size(), 0, absl::ZeroDuration(), g.clients, false);
  (*transport)->Shutdown();

  if (g.json) {
    nlohmann::json j = ToJson(summary);
    j["name"] = "lease-keepalive";
    j["leases"] = o.leases;
    j["streams"] = o.streams;
    j["grant_secs"] = absl::ToDoubleSeconds(grant_time);
    j["revoke_errors"] = revoked.overall.error_count();
    if (before && after) j["server"] = ServerMetricsJson(*before, *after, summary.requests);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("Leases:\t%d on %d streams (granted in %.4f secs.)\n", o.leases, o.streams,
                absl::ToDoubleSeconds(grant_time));
    std::printf("\nKeepalive replies:%s", FormatText(summary).c_str());
    if (before && after) {
      std::printf("%s", FormatServerMetrics(*before, *after, summary.requests).c_str());
    }
    if (revoked.overall.error_count() > 0) {
      std::printf("\nRevoke errors:\t%llu\n",
                  static_cast<unsigned long long>(revoked.overall.error_count()));
    }
  }
  std::fflush(stdout);
  if (summary.requests == 0 && summary.error_count() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no keepalive answered: ", summary.errors.begin()->first));
  }
  return absl::OkStatus();
}

}  // namespace keel::bench
