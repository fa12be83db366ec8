#include "common/metrics.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace keel::common {
namespace {

// Sample lines ("name{labels} value") of a rendering, keyed by the part
// before the value.
std::map<std::string, std::string> Samples(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = line.substr(space + 1);
  }
  return out;
}

TEST(MetricsRegistry, RendersPrometheusTextFormat) {
  MetricsRegistry registry;
  registry.GetCounter("keel_requests_total", "Requests.", {{"method", "GET"}})->Increment(3);
  registry.GetCounter("keel_requests_total", "Requests.", {{"method", "DELETE"}})->Increment();
  registry.GetGauge("keel_active", "Active things.")->Set(-2);
  EXPECT_EQ(registry.RenderText(),
            "# HELP keel_active Active things.\n"
            "# TYPE keel_active gauge\n"
            "keel_active -2\n"
            "# HELP keel_requests_total Requests.\n"
            "# TYPE keel_requests_total counter\n"
            "keel_requests_total{method=\"DELETE\"} 1\n"
            "keel_requests_total{method=\"GET\"} 3\n");
}

TEST(MetricsRegistry, SameNameAndLabelsGiveSameObject) {
  MetricsRegistry registry;
  Counter* a = registry.GetCounter("c_total", "c", {{"x", "1"}});
  Counter* b = registry.GetCounter("c_total", "c", {{"x", "1"}});
  Counter* c = registry.GetCounter("c_total", "c", {{"x", "2"}});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  Gauge* g1 = registry.GetGauge("g", "g");
  Gauge* g2 = registry.GetGauge("g", "g");
  EXPECT_EQ(g1, g2);
  g1->Add(5);
  g2->Add(-2);
  EXPECT_EQ(g1->Value(), 3);
}

TEST(MetricsRegistry, SortsLabelsAndEscapesValues) {
  MetricsRegistry registry;
  registry
      .GetCounter("m_total", "Help with \\ and\nnewline.",
                  {{"z", "last"}, {"a", "q\"uote\\back\nline"}})
      ->Increment(7);
  EXPECT_EQ(registry.RenderText(),
            "# HELP m_total Help with \\\\ and\\nnewline.\n"
            "# TYPE m_total counter\n"
            "m_total{a=\"q\\\"uote\\\\back\\nline\",z=\"last\"} 7\n");
}

TEST(MetricsRegistry, CallbackValuesUseGoFloatFormat) {
  MetricsRegistry registry;
  const std::map<std::string, double> values = {
      {"a", 1795236420.0}, {"b", 123456.0},  {"c", 0.5},
      {"d", 0.0001},       {"e", 0.00001},   {"f", std::numeric_limits<double>::quiet_NaN()},
      {"g", INFINITY},     {"h", -INFINITY}, {"i", 0.0},
      {"j", 1234567.0},    {"k", 2.5e-9},    {"l", -3.25}};
  for (const auto& [label, v] : values) {
    registry.AddCallbackGauge("v", "values", [v = v] { return v; }, {{"k", label}});
  }
  std::map<std::string, std::string> samples = Samples(registry.RenderText());
  EXPECT_EQ(samples["v{k=\"a\"}"], "1.79523642e+09");
  EXPECT_EQ(samples["v{k=\"b\"}"], "123456");
  EXPECT_EQ(samples["v{k=\"c\"}"], "0.5");
  EXPECT_EQ(samples["v{k=\"d\"}"], "0.0001");
  EXPECT_EQ(samples["v{k=\"e\"}"], "1e-05");
  EXPECT_EQ(samples["v{k=\"f\"}"], "NaN");
  EXPECT_EQ(samples["v{k=\"g\"}"], "+Inf");
  EXPECT_EQ(samples["v{k=\"h\"}"], "-Inf");
  EXPECT_EQ(samples["v{k=\"i\"}"], "0");
  EXPECT_EQ(samples["v{k=\"j\"}"], "1.234567e+06");
  EXPECT_EQ(samples["v{k=\"k\"}"], "2.5e-09");
  EXPECT_EQ(samples["v{k=\"l\"}"], "-3.25");
}

TEST(MetricsRegistry, CallbackIsReadAtRenderTime) {
  MetricsRegistry registry;
  double value = 1;
  registry.AddCallbackGauge("live", "live value", [&value] { return value; });
  EXPECT_EQ(Samples(registry.RenderText())["live"], "1");
  value = 2;
  EXPECT_EQ(Samples(registry.RenderText())["live"], "2");
  registry.AddCallbackCounter("live_total", "live count", [] { return 42.0; });
  const std::string text = registry.RenderText();
  EXPECT_NE(text.find("# TYPE live_total counter\nlive_total 42\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, ConcurrentIncrementsAreCounted) {
  MetricsRegistry registry;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  // Registered before the threads start, so every concurrent render below
  // has something to show (the threads may not have run yet).
  registry.GetCounter("hits_total", "hits");
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&registry, t] {
      Counter* c = registry.GetCounter("hits_total", "hits");
      Gauge* g = registry.GetGauge("level", "level", {{"t", std::to_string(t % 2)}});
      for (int i = 0; i < kPerThread; ++i) {
        c->Increment();
        g->Add(1);
      }
    });
  }
  // Rendering concurrently with updates must be safe.
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(registry.RenderText().empty());
  for (std::thread& t : threads) t.join();
  std::map<std::string, std::string> samples = Samples(registry.RenderText());
  EXPECT_EQ(samples["hits_total"], std::to_string(kThreads * kPerThread));
  EXPECT_EQ(samples["level{t=\"0\"}"], std::to_string(kThreads / 2 * kPerThread));
}

TEST(MetricsRegistryDeathTest, TypeConflictAborts) {
  MetricsRegistry registry;
  registry.GetCounter("x_total", "x");
  EXPECT_DEATH(registry.GetGauge("x_total", "x"), "registered as counter");
  EXPECT_DEATH(registry.GetCounter("bad-name", "x"), "invalid metric name");
  EXPECT_DEATH(registry.GetCounter("ok_total", "x", {{"bad-label", "v"}}), "invalid label name");
}

TEST(AddProcessMetrics, ReportsThisProcess) {
  MetricsRegistry registry;
  AddProcessMetrics(registry);
  const std::string text = registry.RenderText();
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# HELP process_open_fds Number of open file descriptors.\n"
                      "# TYPE process_open_fds gauge\n"),
            std::string::npos)
      << text;
  std::map<std::string, std::string> samples = Samples(text);
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                           "process_start_time_seconds"}) {
    ASSERT_TRUE(samples.count(name)) << name << "\n" << text;
    EXPECT_NE(samples[name], "NaN") << name;
  }
  EXPECT_GE(std::stod(samples["process_cpu_seconds_total"]), 0.0);
  EXPECT_GT(std::stod(samples["process_resident_memory_bytes"]), 1024.0 * 1024);
  EXPECT_GE(std::stod(samples["process_virtual_memory_bytes"]),
            std::stod(samples["process_resident_memory_bytes"]));
  EXPECT_GE(std::stod(samples["process_open_fds"]), 3.0);
  EXPECT_GE(std::stod(samples["process_max_fds"]), std::stod(samples["process_open_fds"]));
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double start = std::stod(samples["process_start_time_seconds"]);
  EXPECT_LE(start, now + 2);        // boot time is whole seconds
  EXPECT_GT(start, now - 86400.0);  // this test process started recently
}

}  // namespace
}  // namespace keel::common
