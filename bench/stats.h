#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace keel::bench {

// One histogram bucket: requests whose latency is <= `upper_secs` and above the
// previous bucket's bound.
struct HistogramBucket {
  double upper_secs = 0;
  uint64_t count = 0;
};

// A latency percentile: `percent`% of requests took at most `secs`.
struct Percentile {
  double percent = 0;
  double secs = 0;
};

// The figures of one run, computed by Summarize. Times are in seconds.
struct Summary {
  double total_secs = 0;  // wall time of the run
  uint64_t requests = 0;  // successful requests (latency samples)
  double rps = 0;         // requests / total_secs
  double fastest_secs = 0;
  double slowest_secs = 0;
  double average_secs = 0;
  double stddev_secs = 0;
  std::vector<Percentile> percentiles;     // 10 25 50 75 90 95 99 99.9
  std::vector<HistogramBucket> histogram;  // 11 buckets, as etcd's benchmark
  std::map<std::string, uint64_t> errors;  // error message -> count
  uint64_t error_count() const;
};

// The percentiles every report shows (etcd benchmark's list).
const std::vector<double>& ReportedPercentiles();

// Computes the summary of `latencies_secs` (any order) over a run of
// `total` wall time. Pure; an empty sample set gives zero latencies and no
// histogram.
Summary Summarize(std::vector<double> latencies_secs, absl::Duration total,
                  std::map<std::string, uint64_t> errors = {});

// The value below which `percent`% of `sorted` lies, nearest-rank as etcd's
// benchmark computes it (index floor(n * percent / 100), clamped).
// REQUIRES: `sorted` is non-empty and ascending; 0 <= percent <= 100.
double PercentileOfSorted(const std::vector<double>& sorted, double percent);

// Collects latencies and errors from many threads. Thread-safe.
class Recorder {
 public:
  void AddLatency(absl::Duration d);
  void AddError(const std::string& message);
  // Successful samples so far.
  uint64_t successes() const;
  uint64_t errors() const;
  // Moves the samples into a Summary over `total` wall time.
  Summary Finish(absl::Duration total);

 private:
  mutable absl::Mutex mu_;
  std::vector<double> latencies_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  uint64_t error_count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace keel::bench
