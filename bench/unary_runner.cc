#include "bench/unary_runner.h"

#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "bench/report.h"

namespace keel::bench {

namespace {

// Shared state of one Run.
struct RunState {
  Workload* workload = nullptr;
  Connections* conns = nullptr;
  uint64_t total = 0;
  double rate = 0;
  absl::Time start;
  absl::Time deadline = absl::InfiniteFuture();
  bool by_time = false;
  std::atomic<uint64_t> next_seq{0};
  std::atomic<uint64_t> completed{0};
  Recorder overall;
  std::vector<std::unique_ptr<Recorder>> categories;
  absl::Mutex mu;
  int active_loops ABSL_GUARDED_BY(mu) = 0;
};

}  // namespace

// One client loop: one request in flight at a time; bound to one queue.
class UnaryRunner::Loop : public Tagged {
 public:
  Loop(RunState& state, int client, int conn, grpc::CompletionQueue* cq)
      : state_(state), client_(client), conn_(conn), cq_(cq) {}

  // Called from the thread running Run: hands the first step to the queue's
  // thread, so that a call never completes before `call_` is assigned.
  void Begin() {
    waiting_alarm_ = true;
    alarm_.Set(cq_, absl::ToChronoTime(absl::Now()), this);
  }

  void Proceed(bool ok) override {
    if (waiting_alarm_) {
      waiting_alarm_ = false;
      if (!begun_) {
        begun_ = true;
        Next();
      } else {
        Issue();
      }
      return;
    }
    const absl::Duration latency = absl::Now() - started_;
    if (!ok && call_->status.ok()) {
      call_->status = grpc::Status(grpc::StatusCode::UNKNOWN, "call failed");
    }
    std::string error;
    if (!call_->status.ok()) {
      error = GrpcErrorText(call_->status);
    } else {
      error = state_.workload->Completed(client_, *call_);
    }
    Recorder& cat = *state_.categories[static_cast<size_t>(call_->category)];
    if (error.empty()) {
      state_.overall.AddLatency(latency);
      cat.AddLatency(latency);
    } else {
      state_.overall.AddError(error);
      cat.AddError(error);
    }
    state_.completed.fetch_add(1, std::memory_order_relaxed);
    call_.reset();
    ctx_.reset();
    Next();
  }

 private:
  void Next() {
    const absl::Time now = absl::Now();
    if (state_.by_time && now >= state_.deadline) return Finish();
    seq_ = state_.next_seq.fetch_add(1, std::memory_order_relaxed);
    if (!state_.by_time && seq_ >= state_.total) return Finish();
    if (state_.rate > 0) {
      const absl::Time due = state_.start + absl::Seconds(static_cast<double>(seq_) / state_.rate);
      if (due > now) {
        if (state_.by_time && due >= state_.deadline) return Finish();
        waiting_alarm_ = true;
        alarm_.Set(cq_, absl::ToChronoTime(due), this);
        return;
      }
    }
    Issue();
  }

  void Issue() {
    ctx_ = std::make_unique<grpc::ClientContext>();
    state_.conns->Prepare(ctx_.get());
    started_ = absl::Now();
    call_ = state_.workload->Start(client_, conn_, seq_, ctx_.get(), cq_, this);
  }

  void Finish() {
    absl::MutexLock lock(&state_.mu);
    --state_.active_loops;
  }

  RunState& state_;
  const int client_;
  const int conn_;
  grpc::CompletionQueue* const cq_;
  uint64_t seq_ = 0;
  bool waiting_alarm_ = false;
  bool begun_ = false;
  grpc::Alarm alarm_;
  absl::Time started_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<PendingCall> call_;
};

UnaryRunner::UnaryRunner(const GlobalOptions& options, Connections& conns, CqPool& pool)
    : options_(options), conns_(conns), pool_(pool) {}

RunResult UnaryRunner::Run(Workload& workload, uint64_t total, double rate, absl::Duration duration,
                           int clients, bool show_progress) {
  RunState state;
  state.workload = &workload;
  state.conns = &conns_;
  state.total = total;
  state.rate = rate;
  state.by_time = duration > absl::ZeroDuration();
  const std::vector<std::string> names = workload.Categories();
  for (size_t i = 0; i < names.size(); ++i)
    state.categories.push_back(std::make_unique<Recorder>());
  if (clients < 1) clients = 1;

  std::vector<std::unique_ptr<Loop>> loops;
  for (int i = 0; i < clients; ++i) {
    loops.push_back(std::make_unique<Loop>(state, i, i % conns_.size(), pool_.cq(i)));
  }
  {
    absl::MutexLock lock(&state.mu);
    state.active_loops = clients;
  }
  state.start = absl::Now();
  if (state.by_time) state.deadline = state.start + duration;
  {
    ProgressBar bar(show_progress && options_.progress, [&] {
      if (state.by_time) {
        return absl::ToDoubleSeconds(absl::Now() - state.start) / absl::ToDoubleSeconds(duration);
      }
      return total == 0 ? 1.0
                        : static_cast<double>(state.completed.load()) / static_cast<double>(total);
    });
    for (auto& loop : loops) loop->Begin();
    absl::MutexLock lock(&state.mu);
    state.mu.Await(absl::Condition(
        +[](int* active) { return *active == 0; }, &state.active_loops));
  }
  const absl::Duration elapsed = absl::Now() - state.start;
  RunResult r;
  r.overall = state.overall.Finish(elapsed);
  r.category_names = names;
  for (auto& cat : state.categories) r.categories.push_back(cat->Finish(elapsed));
  return r;
}

void PrintRunResult(const RunResult& r, bool json, const std::string& title) {
  if (json) {
    nlohmann::json j = ToJson(r.overall);
    j["name"] = title;
    if (r.categories.size() > 1) {
      for (size_t i = 0; i < r.categories.size(); ++i) {
        j[r.category_names[i]] = ToJson(r.categories[i]);
      }
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s", FormatText(r.overall).c_str());
    if (r.categories.size() > 1) {
      for (size_t i = 0; i < r.categories.size(); ++i) {
        std::printf("\n%s requests:%s", r.category_names[i].c_str(),
                    FormatText(r.categories[i]).c_str());
      }
    }
  }
  std::fflush(stdout);
}

}  // namespace keel::bench
