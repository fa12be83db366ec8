#include "absl/strings/match.h"
#include "bench/report.h"
#include "gtest/gtest.h"

namespace keel::bench {
namespace {

Summary Sample() {
  return Summarize({0.001, 0.002, 0.003, 0.004}, absl::Seconds(2),
                   {{"rpc error: code = Unavailable desc = x", 2}});
}

TEST(BenchReport, TextFollowsEtcdBenchmarkLayout) {
  const std::string text = FormatText(Sample());
  EXPECT_TRUE(absl::StrContains(text, "Summary:\n  Total:\t2.0000 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  Slowest:\t0.0040 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  Fastest:\t0.0010 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  Average:\t0.0025 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  Stddev:\t0.0011 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  Requests/sec:\t2.0000\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "\nResponse time histogram:\n  0.0010 [1]\t|")) << text;
  EXPECT_TRUE(absl::StrContains(text, "\nLatency distribution:\n  10% in 0.0010 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "  99.9% in 0.0040 secs.\n")) << text;
  EXPECT_TRUE(absl::StrContains(
      text, "\nError distribution:\n  [2]\trpc error: code = Unavailable desc = x\n"))
      << text;
}

TEST(BenchReport, HistogramBarsScaleToTheFullestBucket) {
  Summary s = Summarize({0.001, 0.001, 0.002}, absl::Seconds(1));
  const std::string text = FormatText(s);
  std::string full;
  for (int i = 0; i < 40; ++i) full += "\xe2\x88\x8e";
  EXPECT_TRUE(absl::StrContains(text, "  0.0010 [2]\t|" + full + "\n")) << text;
  EXPECT_FALSE(absl::StrContains(text, "Error distribution")) << text;
}

TEST(BenchReport, JsonHasEveryFigure) {
  nlohmann::json j = ToJson(Sample());
  EXPECT_DOUBLE_EQ(j["total"].get<double>(), 2.0);
  EXPECT_EQ(j["requests"].get<uint64_t>(), 4u);
  EXPECT_DOUBLE_EQ(j["rps"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(j["fastest"].get<double>(), 0.001);
  EXPECT_DOUBLE_EQ(j["slowest"].get<double>(), 0.004);
  EXPECT_DOUBLE_EQ(j["average"].get<double>(), 0.0025);
  EXPECT_TRUE(j.contains("stddev"));
  EXPECT_DOUBLE_EQ(j["percentiles"]["p50"].get<double>(), 0.003);
  EXPECT_TRUE(j["percentiles"].contains("p99.9"));
  EXPECT_EQ(j["histogram"].size(), 11u);
  EXPECT_EQ(j["errors"]["rpc error: code = Unavailable desc = x"].get<uint64_t>(), 2u);
  EXPECT_EQ(j["error_count"].get<uint64_t>(), 2u);
}

TEST(BenchReport, PercentileKeys) {
  EXPECT_EQ(PercentileKey(50), "p50");
  EXPECT_EQ(PercentileKey(99.9), "p99.9");
}

}  // namespace
}  // namespace keel::bench
