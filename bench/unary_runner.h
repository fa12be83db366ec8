#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "bench/client.h"
#include "bench/stats.h"
#include "bench/transport.h"

namespace keel::bench {

// One request a Workload built.
struct Request {
  const char* method = nullptr;  // a gRPC path (bench/transport.h)
  std::string body;              // the serialized request message
  int category = 0;              // which report the request counts in
  uint64_t cookie = 0;           // workload-defined (e.g. the key index)
};

// What the runner sends. Thread-safe: Build and Completed run on several
// queue threads at once (per-client state is indexed by `client`).
class Workload {
 public:
  virtual ~Workload() = default;
  // Names of the report categories (one report per name). At least one.
  virtual std::vector<std::string> Categories() const { return {"all"}; }
  // Builds request number `seq` of client loop `client`.
  virtual Request Build(int client, uint64_t seq) = 0;
  // Called once a call succeeded, with its serialized response, before its
  // latency is recorded (`request.body` has been sent: it is empty here).
  // Returns an error message to count instead of the latency when the
  // response is a logical failure, or "" when it is fine.
  virtual std::string Completed(int client, const Request& request, std::string_view response) {
    (void)client;
    (void)request;
    (void)response;
    return "";
  }
};

// Result of UnaryRunner::Run: one Summary overall and one per category.
struct RunResult {
  Summary overall;
  std::vector<std::string> category_names;
  std::vector<Summary> categories;
};

// Closed-loop load: --clients loops spread over the connections (and the
// transport's queues), each with one request in flight, until --total
// requests were started or --duration passed, paced to --rate if set.
class UnaryRunner {
 public:
  // `transport` must outlive the runner.
  UnaryRunner(const GlobalOptions& options, Transport& transport);
  // Runs `workload` to the end and returns the figures. `total` and `rate`
  // override the options' (for setup phases and the watch put load).
  RunResult Run(Workload& workload, uint64_t total, double rate, absl::Duration duration,
                int clients, bool show_progress);

 private:
  class Loop;
  const GlobalOptions& options_;
  Transport& transport_;
};

// Prints a RunResult as text (etcd's layout; per-category blocks after the
// overall one when there are several) or as one JSON object.
void PrintRunResult(const RunResult& r, bool json, const std::string& title);

}  // namespace keel::bench
