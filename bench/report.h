#pragma once

#include <string>

#include "bench/stats.h"
#include "nlohmann/json.hpp"

namespace keel::bench {

// Renders `s` in etcd benchmark's text layout: "Summary:" block, "Response
// time histogram:", "Latency distribution:" and, when there were errors,
// "Error distribution:" with lines "  [N]\tmessage". Pure.
std::string FormatText(const Summary& s);

// One JSON object: total, requests, rps, average/fastest/slowest/stddev
// (seconds), percentiles {"p50": secs, ...}, histogram [{upper, count}],
// errors {message: count}, error_count. Pure.
nlohmann::json ToJson(const Summary& s);

// The key used for percentile `p` in ToJson: 50 -> "p50", 99.9 -> "p99.9".
std::string PercentileKey(double p);

}  // namespace keel::bench
