#include <cstdio>
#include <deque>
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
  GrantWorkload(Connections& c, int64_t ttl) : conns_(c), ttl_(ttl) {}
  std::unique_ptr<PendingCall> Start(int, int conn, uint64_t, grpc::ClientContext* ctx,
                                     grpc::CompletionQueue* cq, void* tag) override {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(ttl_);
    auto call = std::make_unique<TypedCall<etcdserverpb::LeaseGrantResponse>>();
    call->reader = conns_.lease(conn).AsyncLeaseGrant(ctx, req, cq);
    call->reader->Finish(&call->resp, &call->status, tag);
    return call;
  }
  std::string Completed(int, PendingCall& call) override {
    auto& resp = static_cast<TypedCall<etcdserverpb::LeaseGrantResponse>&>(call).resp;
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
  Connections& conns_;
  int64_t ttl_;
  absl::Mutex mu_;
  std::vector<int64_t> ids_ ABSL_GUARDED_BY(mu_);
};

// Revokes the given leases.
class RevokeWorkload : public Workload {
 public:
  RevokeWorkload(Connections& c, std::vector<int64_t> ids) : conns_(c), ids_(std::move(ids)) {}
  std::unique_ptr<PendingCall> Start(int, int conn, uint64_t seq, grpc::ClientContext* ctx,
                                     grpc::CompletionQueue* cq, void* tag) override {
    etcdserverpb::LeaseRevokeRequest req;
    req.set_id(ids_[seq % ids_.size()]);
    auto call = std::make_unique<TypedCall<etcdserverpb::LeaseRevokeResponse>>();
    call->reader = conns_.lease(conn).AsyncLeaseRevoke(ctx, req, cq);
    call->reader->Finish(&call->resp, &call->status, tag);
    return call;
  }

 private:
  Connections& conns_;
  std::vector<int64_t> ids_;
};

// Shared progress of the keepalive phase. Thread-safe (atomics, Recorder).
struct KeepaliveState {
  bool by_time = false;
  uint64_t total = 0;
  absl::Time deadline = absl::InfiniteFuture();
  absl::Duration interval;
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
// --interval. One write in flight; confined to its queue's thread.
class KeepaliveStream {
 public:
  KeepaliveStream(Connections& conns, int conn, grpc::CompletionQueue* cq,
                  std::vector<int64_t> leases, KeepaliveState& state)
      : conns_(conns), conn_(conn), cq_(cq), state_(state) {
    for (int64_t id : leases) ready_.push_back(id);
    for (Op* op : {&started_op_, &write_op_, &read_op_, &finish_op_, &alarm_op_}) op->stream = this;
    started_op_.fn = &KeepaliveStream::OnStarted;
    write_op_.fn = &KeepaliveStream::OnWritten;
    read_op_.fn = &KeepaliveStream::OnRead;
    finish_op_.fn = &KeepaliveStream::OnFinished;
    alarm_op_.fn = &KeepaliveStream::OnAlarm;
  }

  void Start() {
    conns_.Prepare(&ctx_);
    rw_ = conns_.lease(conn_).PrepareAsyncLeaseKeepAlive(&ctx_, cq_);
    rw_->StartCall(&started_op_);
  }
  void Cancel() {
    cancelled_.store(true);
    ctx_.TryCancel();
  }
  size_t outstanding() const { return outstanding_.load(); }
  const std::string& error() const { return error_; }

 private:
  struct Op : Tagged {
    KeepaliveStream* stream = nullptr;
    void (KeepaliveStream::*fn)(bool) = nullptr;
    void Proceed(bool ok) override { (stream->*fn)(ok); }
  };

  void OnStarted(bool ok) {
    if (!ok) {
      rw_->Finish(&status_, &finish_op_);
      return;
    }
    rw_->Read(&resp_, &read_op_);
    WriteNext();
  }

  void WriteNext() {
    if (writing_ || ready_.empty() || cancelled_.load()) return;
    if (!state_.MaySend()) {
      ready_.clear();
      return;
    }
    const int64_t id = ready_.front();
    ready_.pop_front();
    sent_at_[id] = absl::Now();
    outstanding_.fetch_add(1);
    req_.set_id(id);
    writing_ = true;
    rw_->Write(req_, &write_op_);
  }

  void OnWritten(bool ok) {
    writing_ = false;
    if (ok) WriteNext();
  }

  void OnRead(bool ok) {
    if (!ok) {
      rw_->Finish(&status_, &finish_op_);
      return;
    }
    const absl::Time now = absl::Now();
    auto it = sent_at_.find(resp_.id());
    if (it != sent_at_.end()) {
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
        WriteNext();
      } else {
        delayed_.push_back({now + state_.interval, resp_.id()});
        ArmAlarm();
      }
    }
    rw_->Read(&resp_, &read_op_);
  }

  void ArmAlarm() {
    if (alarm_armed_ || delayed_.empty() || cancelled_.load()) return;
    alarm_armed_ = true;
    alarm_.Set(cq_, absl::ToChronoTime(delayed_.front().first), &alarm_op_);
  }

  void OnAlarm(bool) {
    alarm_armed_ = false;
    const absl::Time now = absl::Now();
    while (!delayed_.empty() && delayed_.front().first <= now) {
      ready_.push_back(delayed_.front().second);
      delayed_.pop_front();
    }
    WriteNext();
    ArmAlarm();
  }

  void OnFinished(bool) {
    if (!cancelled_.load()) {
      error_ = status_.ok() ? "keepalive stream closed by the server" : GrpcErrorText(status_);
    }
    if (alarm_armed_) alarm_.Cancel();
    state_.finished.fetch_add(1);
  }

  Connections& conns_;
  int conn_;
  grpc::CompletionQueue* cq_;
  KeepaliveState& state_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<etcdserverpb::LeaseKeepAliveRequest,
                                                etcdserverpb::LeaseKeepAliveResponse>>
      rw_;
  etcdserverpb::LeaseKeepAliveRequest req_;
  etcdserverpb::LeaseKeepAliveResponse resp_;
  grpc::Status status_;
  std::deque<int64_t> ready_;
  std::deque<std::pair<absl::Time, int64_t>> delayed_;  // due times ascend: fixed interval
  std::unordered_map<int64_t, absl::Time> sent_at_;
  std::atomic<size_t> outstanding_{0};
  bool writing_ = false;
  bool alarm_armed_ = false;
  grpc::Alarm alarm_;
  std::atomic<bool> cancelled_{false};
  std::string error_;
  Op started_op_, write_op_, read_op_, finish_op_, alarm_op_;
};

}  // namespace

absl::Status RunLeaseKeepalive(const GlobalOptions& g, const LeaseOptions& o) {
  if (o.leases < 1 || o.streams < 1 || o.ttl < 1) {
    return absl::InvalidArgumentError("--leases, --streams and --ttl must be at least 1");
  }
  absl::StatusOr<std::unique_ptr<Connections>> conns = Connections::Dial(g);
  if (!conns.ok()) return conns.status();
  CqPool pool(g.threads);
  UnaryRunner runner(g, **conns, pool);

  // Grant the leases with --clients concurrent requests.
  GrantWorkload grants(**conns, o.ttl);
  const absl::Time grant_start = absl::Now();
  RunResult granted = runner.Run(grants, static_cast<uint64_t>(o.leases), 0, absl::ZeroDuration(),
                                 g.clients, false);
  const absl::Duration grant_time = absl::Now() - grant_start;
  std::vector<int64_t> ids = grants.TakeIds();
  if (ids.size() != static_cast<size_t>(o.leases)) {
    pool.Shutdown();
    const std::string why =
        granted.overall.errors.empty() ? "unknown error" : granted.overall.errors.begin()->first;
    return absl::UnavailableError(
        absl::StrCat("granted only ", ids.size(), " of ", o.leases, " leases: ", why));
  }

  KeepaliveState state;
  state.by_time = g.duration > absl::ZeroDuration();
  state.total = g.total;
  state.interval = o.interval;
  std::vector<std::vector<int64_t>> shares(static_cast<size_t>(o.streams));
  for (size_t i = 0; i < ids.size(); ++i) shares[i % shares.size()].push_back(ids[i]);
  std::vector<std::unique_ptr<KeepaliveStream>> streams;
  for (int s = 0; s < o.streams; ++s) {
    streams.push_back(std::make_unique<KeepaliveStream>(**conns, s % (*conns)->size(), pool.cq(s),
                                                        std::move(shares[static_cast<size_t>(s)]),
                                                        state));
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

  RevokeWorkload revokes(**conns, ids);
  RunResult revoked = runner.Run(revokes, ids.size(), 0, absl::ZeroDuration(), g.clients, false);
  pool.Shutdown();

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
