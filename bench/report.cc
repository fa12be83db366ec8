#include "bench/report.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace keel::bench {

namespace {

// The bar character of etcd's benchmark histogram.
constexpr const char* kBar = "\xe2\x88\x8e";  // U+220E
constexpr int kBarWidth = 40;

std::string Bar(uint64_t count, uint64_t max) {
  std::string out;
  if (max == 0) return out;
  const uint64_t len = count * kBarWidth / max;
  for (uint64_t i = 0; i < len; ++i) out += kBar;
  return out;
}

}  // namespace

std::string PercentileKey(double p) { return absl::StrCat("p", p); }

std::string FormatText(const Summary& s) {
  std::string out = "\nSummary:\n";
  absl::StrAppendFormat(&out, "  Total:\t%4.4f secs.\n", s.total_secs);
  absl::StrAppendFormat(&out, "  Slowest:\t%4.4f secs.\n", s.slowest_secs);
  absl::StrAppendFormat(&out, "  Fastest:\t%4.4f secs.\n", s.fastest_secs);
  absl::StrAppendFormat(&out, "  Average:\t%4.4f secs.\n", s.average_secs);
  absl::StrAppendFormat(&out, "  Stddev:\t%4.4f secs.\n", s.stddev_secs);
  absl::StrAppendFormat(&out, "  Requests/sec:\t%4.4f\n", s.rps);
  absl::StrAppendFormat(&out, "  Requests:\t%d\n", s.requests);
  if (!s.histogram.empty()) {
    out += "\nResponse time histogram:\n";
    uint64_t max = 0;
    for (const HistogramBucket& b : s.histogram) max = std::max(max, b.count);
    for (const HistogramBucket& b : s.histogram) {
      absl::StrAppendFormat(&out, "  %4.4f [%d]\t|%s\n", b.upper_secs, b.count, Bar(b.count, max));
    }
  }
  if (!s.percentiles.empty()) {
    out += "\nLatency distribution:\n";
    for (const Percentile& p : s.percentiles) {
      absl::StrAppendFormat(&out, "  %s%% in %4.4f secs.\n", absl::StrCat(p.percent), p.secs);
    }
  }
  if (!s.errors.empty()) {
    out += "\nError distribution:\n";
    for (const auto& [message, count] : s.errors) {
      absl::StrAppendFormat(&out, "  [%d]\t%s\n", count, message);
    }
  }
  return out;
}

nlohmann::json ToJson(const Summary& s) {
  nlohmann::json j;
  j["total"] = s.total_secs;
  j["requests"] = s.requests;
  j["rps"] = s.rps;
  j["average"] = s.average_secs;
  j["fastest"] = s.fastest_secs;
  j["slowest"] = s.slowest_secs;
  j["stddev"] = s.stddev_secs;
  nlohmann::json pct = nlohmann::json::object();
  for (const Percentile& p : s.percentiles) pct[PercentileKey(p.percent)] = p.secs;
  j["percentiles"] = pct;
  nlohmann::json hist = nlohmann::json::array();
  for (const HistogramBucket& b : s.histogram) {
    hist.push_back({{"upper", b.upper_secs}, {"count", b.count}});
  }
  j["histogram"] = hist;
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [message, count] : s.errors) errors[message] = count;
  j["errors"] = errors;
  j["error_count"] = s.error_count();
  return j;
}

}  // namespace keel::bench
