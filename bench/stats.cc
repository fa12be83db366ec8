#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace keel::bench {

uint64_t Summary::error_count() const {
  uint64_t n = 0;
  for (const auto& [message, count] : errors) n += count;
  return n;
}

const std::vector<double>& ReportedPercentiles() {
  static const std::vector<double> kPercentiles = {10, 25, 50, 75, 90, 95, 99, 99.9};
  return kPercentiles;
}

double PercentileOfSorted(const std::vector<double>& sorted, double percent) {
  const size_t n = sorted.size();
  // Integer arithmetic on tenths of a percent avoids 99.9 * n rounding down
  // one rank because of binary floating point.
  const auto tenths = static_cast<uint64_t>(std::llround(percent * 10));
  size_t index = static_cast<size_t>(static_cast<uint64_t>(n) * tenths / 1000);
  if (index >= n) index = n - 1;
  return sorted[index];
}

Summary Summarize(std::vector<double> latencies, absl::Duration total,
                  std::map<std::string, uint64_t> errors) {
  Summary s;
  s.total_secs = absl::ToDoubleSeconds(total);
  s.requests = latencies.size();
  s.errors = std::move(errors);
  if (s.total_secs > 0) s.rps = static_cast<double>(s.requests) / s.total_secs;
  if (latencies.empty()) return s;

  std::sort(latencies.begin(), latencies.end());
  s.fastest_secs = latencies.front();
  s.slowest_secs = latencies.back();
  double sum = 0;
  for (double v : latencies) sum += v;
  s.average_secs = sum / static_cast<double>(latencies.size());
  double sq = 0;
  for (double v : latencies) sq += (v - s.average_secs) * (v - s.average_secs);
  s.stddev_secs = std::sqrt(sq / static_cast<double>(latencies.size()));

  for (double p : ReportedPercentiles()) {
    s.percentiles.push_back({p, PercentileOfSorted(latencies, p)});
  }

  // Ten equal-width buckets from fastest to slowest plus one ending at the
  // slowest, as etcd's benchmark (after hey) draws them.
  constexpr int kBuckets = 10;
  const double width = (s.slowest_secs - s.fastest_secs) / kBuckets;
  for (int i = 0; i < kBuckets; ++i) {
    s.histogram.push_back({s.fastest_secs + width * i, 0});
  }
  s.histogram.push_back({s.slowest_secs, 0});
  size_t bucket = 0;
  for (double v : latencies) {
    while (v > s.histogram[bucket].upper_secs && bucket + 1 < s.histogram.size()) ++bucket;
    ++s.histogram[bucket].count;
  }
  return s;
}

void Recorder::AddLatency(absl::Duration d) {
  const double secs = absl::ToDoubleSeconds(d);
  absl::MutexLock lock(&mu_);
  latencies_.push_back(secs);
}

void Recorder::AddError(const std::string& message) {
  absl::MutexLock lock(&mu_);
  ++errors_[message];
  ++error_count_;
}

uint64_t Recorder::successes() const {
  absl::MutexLock lock(&mu_);
  return latencies_.size();
}

uint64_t Recorder::errors() const {
  absl::MutexLock lock(&mu_);
  return error_count_;
}

Summary Recorder::Finish(absl::Duration total) {
  std::vector<double> latencies;
  std::map<std::string, uint64_t> errors;
  {
    absl::MutexLock lock(&mu_);
    latencies.swap(latencies_);
    errors.swap(errors_);
    error_count_ = 0;
  }
  return Summarize(std::move(latencies), total, std::move(errors));
}

}  // namespace keel::bench
