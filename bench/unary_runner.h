#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "bench/client.h"
#include "bench/stats.h"

namespace keel::bench {

// One unary call in flight: the generated reader keeps its response and
// status here until the completion queue returns the tag.
struct PendingCall {
  virtual ~PendingCall() = default;
  grpc::Status status;
  int category = 0;     // which report the request counts in
  uint64_t cookie = 0;  // workload-defined (e.g. the key index)
};

// A PendingCall for response type Resp.
template <class Resp>
struct TypedCall : PendingCall {
  Resp resp;
  std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>> reader;
};

// What the runner sends. Thread-safe: Start and Completed run on several
// completion-queue threads at once (per-client state is indexed by `client`).
class Workload {
 public:
  virtual ~Workload() = default;
  // Names of the report categories (one report per name). At least one.
  virtual std::vector<std::string> Categories() const { return {"all"}; }
  // Starts request number `seq` for client loop `client` on connection
  // `conn`: builds it, starts the async call with `ctx` on `cq` and calls
  // Finish(..., tag). Returns the pending call.
  virtual std::unique_ptr<PendingCall> Start(int client, int conn, uint64_t seq,
                                             grpc::ClientContext* ctx, grpc::CompletionQueue* cq,
                                             void* tag) = 0;
  // Called once a call completed (successfully or not) before its latency
  // is recorded; returns an error message to count instead of the latency
  // when the response is a logical failure, or "" when it is fine.
  virtual std::string Completed(int client, PendingCall& call) {
    (void)client;
    (void)call;
    return "";
  }
};

// Result of UnaryRunner::Run: one Summary overall and one per category.
struct RunResult {
  Summary overall;
  std::vector<std::string> category_names;
  std::vector<Summary> categories;
};

// Closed-loop load: --clients loops spread over the connections and the
// completion queues, each with one request in flight, until --total
// requests were started or --duration passed, paced to --rate if set.
class UnaryRunner {
 public:
  // `conns` and `pool` must outlive the runner.
  UnaryRunner(const GlobalOptions& options, Connections& conns, CqPool& pool);
  // Runs `workload` to the end and returns the figures. `total` and `rate`
  // override the options' (for setup phases and the watch put load).
  RunResult Run(Workload& workload, uint64_t total, double rate, absl::Duration duration,
                int clients, bool show_progress);

 private:
  class Loop;
  const GlobalOptions& options_;
  Connections& conns_;
  CqPool& pool_;
};

// Prints a RunResult as text (etcd's layout; per-category blocks after the
// overall one when there are several) or as one JSON object.
void PrintRunResult(const RunResult& r, bool json, const std::string& title);

}  // namespace keel::bench
