#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bench/prometheus.h"
#include "nlohmann/json.hpp"

namespace keel::bench {

// Figures read from a server's /metrics (etcd's names; keel exports the
// same). Absent metrics stay nullopt.
struct ServerMetrics {
  std::optional<double> cpu_seconds;        // process_cpu_seconds_total
  std::optional<double> rss_bytes;          // process_resident_memory_bytes
  std::optional<double> watch_streams;      // open Watch streams (started - handled)
  std::optional<double> watchers;           // etcd_debugging_mvcc_watcher_total
  std::optional<double> keepalive_streams;  // open LeaseKeepAlive streams
};

// Extracts ServerMetrics from parsed samples. Pure.
ServerMetrics ExtractServerMetrics(const std::vector<PromSample>& samples);

// Scrapes `url` (http only); nullopt and a warning on stderr on failure.
std::optional<ServerMetrics> ScrapeServerMetrics(const std::string& url);

// Renders before/after scrapes: stream counts and CPU seconds spent (and per
// operation when `ops` > 0). Text for the report, or JSON.
std::string FormatServerMetrics(const ServerMetrics& before, const ServerMetrics& after,
                                uint64_t ops);
nlohmann::json ServerMetricsJson(const ServerMetrics& before, const ServerMetrics& after,
                                 uint64_t ops);

}  // namespace keel::bench
