#include "bench/server_metrics.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "bench/commands.h"

namespace keel::bench {

namespace {

std::optional<double> OpenStreams(const std::vector<PromSample>& samples,
                                  const std::string& method) {
  std::optional<double> started =
      SumSamples(samples, "grpc_server_started_total", {{"grpc_method", method}});
  std::optional<double> handled =
      SumSamples(samples, "grpc_server_handled_total", {{"grpc_method", method}});
  if (!started) return std::nullopt;
  return *started - handled.value_or(0);
}

}  // namespace

ServerMetrics ExtractServerMetrics(const std::vector<PromSample>& samples) {
  ServerMetrics m;
  m.cpu_seconds = SumSamples(samples, "process_cpu_seconds_total");
  m.rss_bytes = SumSamples(samples, "process_resident_memory_bytes");
  m.watch_streams = OpenStreams(samples, "Watch");
  m.watchers = SumSamples(samples, "etcd_debugging_mvcc_watcher_total");
  m.keepalive_streams = OpenStreams(samples, "LeaseKeepAlive");
  return m;
}

std::optional<ServerMetrics> ScrapeServerMetrics(const std::string& url) {
  absl::StatusOr<std::string> body = HttpGet(url, absl::Seconds(5));
  if (!body.ok()) {
    std::fprintf(stderr, "keel-bench: cannot scrape %s: %s\n", url.c_str(),
                 std::string(body.status().message()).c_str());
    return std::nullopt;
  }
  return ExtractServerMetrics(ParsePrometheusText(*body));
}

std::string FormatServerMetrics(const ServerMetrics& before, const ServerMetrics& after,
                                uint64_t ops) {
  std::string out = "\nServer metrics:\n";
  auto line = [&](const char* what, const std::optional<double>& v) {
    if (v) absl::StrAppendFormat(&out, "  %s:\t%.0f\n", what, *v);
  };
  line("Watch streams open", after.watch_streams);
  line("Watchers", after.watchers);
  line("LeaseKeepAlive streams open", after.keepalive_streams);
  if (after.rss_bytes) absl::StrAppendFormat(&out, "  RSS:\t%.1f MB\n", *after.rss_bytes / 1e6);
  if (before.cpu_seconds && after.cpu_seconds) {
    const double cpu = *after.cpu_seconds - *before.cpu_seconds;
    absl::StrAppendFormat(&out, "  CPU:\t%.2f secs.\n", cpu);
    if (ops > 0) {
      absl::StrAppendFormat(&out, "  CPU per op:\t%.1f us\n", cpu * 1e6 / static_cast<double>(ops));
    }
  }
  return out;
}

nlohmann::json ServerMetricsJson(const ServerMetrics& before, const ServerMetrics& after,
                                 uint64_t ops) {
  nlohmann::json j = nlohmann::json::object();
  auto put = [&](const char* key, const std::optional<double>& v) {
    if (v) j[key] = *v;
  };
  put("watch_streams", after.watch_streams);
  put("watchers", after.watchers);
  put("keepalive_streams", after.keepalive_streams);
  put("rss_bytes", after.rss_bytes);
  if (before.cpu_seconds && after.cpu_seconds) {
    const double cpu = *after.cpu_seconds - *before.cpu_seconds;
    j["cpu_seconds"] = cpu;
    if (ops > 0) j["cpu_us_per_op"] = cpu * 1e6 / static_cast<double>(ops);
  }
  return j;
}

}  // namespace keel::bench
