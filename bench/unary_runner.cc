#include "bench/unary_runner.h"

#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "bench/report.h"

namespace keel::bench {

namespace {

// Shared state of one Run.
struct RunState {
  Workload* workload = nullptr;
  Transport* transport = nullptr;
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

// One client loop: one request in flight at a time; all its steps run on
// its queue.
class UnaryRunner::Loop {
 public:
  Loop(RunState& state, int client, int conn)
      : state_(state),
        client_(client),
        conn_(conn),
        queue_(state.transport->QueueFor(client, conn)) {}

  // Called from the thread running Run: the first step runs on the queue.
  void Begin() {
    state_.transport->RunAt(queue_, absl::Now(), [this] { Next(); });
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
        state_.transport->RunAt(queue_, due, [this] { Issue(); });
        return;
      }
    }
    Issue();
  }

  void Issue() {
    request_ = state_.workload->Build(client_, seq_);
    started_ = absl::Now();
    state_.transport->Unary(queue_, conn_, request_.method, std::move(request_.body),
                            absl::InfiniteDuration(),
                            [this](const grpc::Status& status, std::string_view response) {
                              Completed(status, response);
                            });
  }

  void Completed(const grpc::Status& status, std::string_view response) {
    const absl::Duration latency = absl::Now() - started_;
    const std::string error = status.ok() ? state_.workload->Completed(client_, request_, response)
                                          : GrpcErrorText(status);
    Recorder& cat = *state_.categories[static_cast<size_t>(request_.category)];
    if (error.empty()) {
      state_.overall.AddLatency(latency);
      cat.AddLatency(latency);
    } else {
      state_.overall.AddError(error);
      cat.AddError(error);
    }
    state_.completed.fetch_add(1, std::memory_order_relaxed);
    Next();
  }

  void Finish() {
    absl::MutexLock lock(&state_.mu);
    --state_.active_loops;
  }

  RunState& state_;
  const int client_;
  const int conn_;
  const int queue_;
  uint64_t seq_ = 0;
  absl::Time started_;
  Request request_;
};

UnaryRunner::UnaryRunner(const GlobalOptions& options, Transport& transport)
    : options_(options), transport_(transport) {}

RunResult UnaryRunner::Run(Workload& workload, uint64_t total, double rate, absl::Duration duration,
                           int clients, bool show_progress) {
  RunState state;
  state.workload = &workload;
  state.transport = &transport_;
  state.total = total;
  state.rate = rate;
  state.by_time = duration > absl::ZeroDuration();
  const std::vector<std::string> names = workload.Categories();
  for (size_t i = 0; i < names.size(); ++i)
    state.categories.push_back(std::make_unique<Recorder>());
  if (clients < 1) clients = 1;

  std::vector<std::unique_ptr<Loop>> loops;
  for (int i = 0; i < clients; ++i) {
    loops.push_back(std::make_unique<Loop>(state, i, i % transport_.conns()));
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
