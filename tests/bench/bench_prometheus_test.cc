#include "bench/prometheus.h"
#include "gtest/gtest.h"

namespace keel::bench {
namespace {

constexpr char kText[] =
    "# HELP process_cpu_seconds_total Total user and system CPU time.\n"
    "# TYPE process_cpu_seconds_total counter\n"
    "process_cpu_seconds_total 12.5\n"
    "grpc_server_started_total{grpc_method=\"LeaseKeepAlive\","
    "grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 7\n"
    "grpc_server_started_total{grpc_method=\"Watch\","
    "grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 3\n"
    "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"LeaseKeepAlive\","
    "grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 2\n"
    "etcd_debugging_mvcc_watcher_total 1000\n"
    "weird_line_without_value\n"
    "escaped{a=\"x\\\"y\"} 1e3 1700000000\n";

TEST(BenchPrometheus, ParsesSamplesLabelsAndSkipsJunk) {
  std::vector<PromSample> samples = ParsePrometheusText(kText);
  ASSERT_EQ(samples.size(), 6u);
  EXPECT_EQ(samples[0].name, "process_cpu_seconds_total");
  EXPECT_DOUBLE_EQ(samples[0].value, 12.5);
  EXPECT_EQ(samples[1].labels.at("grpc_method"), "LeaseKeepAlive");
  EXPECT_EQ(samples[5].labels.at("a"), "x\"y");
  EXPECT_DOUBLE_EQ(samples[5].value, 1000);
}

TEST(BenchPrometheus, SumsMatchingSamples) {
  std::vector<PromSample> samples = ParsePrometheusText(kText);
  EXPECT_EQ(SumSamples(samples, "grpc_server_started_total"), 10);
  EXPECT_EQ(SumSamples(samples, "grpc_server_started_total", {{"grpc_method", "Watch"}}), 3);
  EXPECT_EQ(SumSamples(samples, "grpc_server_handled_total", {{"grpc_method", "LeaseKeepAlive"}}),
            2);
  EXPECT_FALSE(SumSamples(samples, "grpc_server_handled_total", {{"grpc_method", "Watch"}}));
  EXPECT_FALSE(SumSamples(samples, "absent"));
}

}  // namespace
}  // namespace keel::bench
