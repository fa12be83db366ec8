#include <thread>
#include <vector>

#include "bench/stats.h"
#include "gtest/gtest.h"

namespace keel::bench {
namespace {

TEST(BenchStats, EmptyRunHasZeroFiguresAndKeepsErrors) {
  Summary s = Summarize({}, absl::Seconds(2), {{"boom", 3}});
  EXPECT_EQ(s.requests, 0u);
  EXPECT_EQ(s.rps, 0);
  EXPECT_TRUE(s.histogram.empty());
  EXPECT_TRUE(s.percentiles.empty());
  EXPECT_EQ(s.error_count(), 3u);
}

TEST(BenchStats, MinMaxAverageStddevAndRate) {
  Summary s = Summarize({0.004, 0.001, 0.003, 0.002}, absl::Seconds(2));
  EXPECT_EQ(s.requests, 4u);
  EXPECT_DOUBLE_EQ(s.rps, 2.0);
  EXPECT_DOUBLE_EQ(s.fastest_secs, 0.001);
  EXPECT_DOUBLE_EQ(s.slowest_secs, 0.004);
  EXPECT_DOUBLE_EQ(s.average_secs, 0.0025);
  // Population stddev of 1,2,3,4 ms is sqrt(1.25) ms.
  EXPECT_NEAR(s.stddev_secs, 0.001118034, 1e-9);
}

TEST(BenchStats, PercentilesUseNearestRankLikeEtcd) {
  std::vector<double> v;
  for (int i = 1; i <= 1000; ++i) v.push_back(i / 1000.0);
  // index floor(n * p / 100): p50 of 1..1000 ms is element 500, i.e. 501 ms.
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 50), 0.501);
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 10), 0.101);
  // 99.9% must not round down a rank through floating point.
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 99.9), 1.0);
  EXPECT_DOUBLE_EQ(PercentileOfSorted(v, 100), 1.0);
  EXPECT_DOUBLE_EQ(PercentileOfSorted({0.5}, 99), 0.5);

  Summary s = Summarize(v, absl::Seconds(1));
  ASSERT_EQ(s.percentiles.size(), 8u);
  EXPECT_EQ(s.percentiles[2].percent, 50);
  EXPECT_DOUBLE_EQ(s.percentiles[2].secs, 0.501);
  EXPECT_EQ(s.percentiles[7].percent, 99.9);
}

TEST(BenchStats, HistogramHasElevenBucketsCoveringEverySample) {
  std::vector<double> v = {0.0, 0.0, 0.05, 0.1, 0.1, 0.1};
  Summary s = Summarize(v, absl::Seconds(1));
  ASSERT_EQ(s.histogram.size(), 11u);
  EXPECT_DOUBLE_EQ(s.histogram.front().upper_secs, 0.0);
  EXPECT_DOUBLE_EQ(s.histogram.back().upper_secs, 0.1);
  uint64_t sum = 0;
  for (const HistogramBucket& b : s.histogram) sum += b.count;
  EXPECT_EQ(sum, v.size());
  EXPECT_EQ(s.histogram[0].count, 2u);  // the two zeros
  EXPECT_EQ(s.histogram[5].count, 1u);  // 0.05 lands on the 5th bound
  EXPECT_EQ(s.histogram[9].count + s.histogram[10].count, 3u);
}

TEST(BenchStats, AllEqualSamplesGoInTheFirstBucket) {
  Summary s = Summarize({0.002, 0.002, 0.002}, absl::Seconds(1));
  ASSERT_EQ(s.histogram.size(), 11u);
  EXPECT_EQ(s.histogram[0].count, 3u);
  EXPECT_DOUBLE_EQ(s.stddev_secs, 0);
}

TEST(BenchStats, RecorderCollectsFromManyThreads) {
  Recorder r;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&r] {
      for (int i = 0; i < 1000; ++i) r.AddLatency(absl::Microseconds(100));
      r.AddError("rpc error: code = Unavailable desc = down");
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(r.successes(), 4000u);
  EXPECT_EQ(r.errors(), 4u);
  Summary s = r.Finish(absl::Seconds(4));
  EXPECT_EQ(s.requests, 4000u);
  EXPECT_DOUBLE_EQ(s.rps, 1000);
  EXPECT_EQ(s.errors.at("rpc error: code = Unavailable desc = down"), 4u);
  EXPECT_NEAR(s.average_secs, 0.0001, 1e-12);
  // Finish drains the recorder.
  EXPECT_EQ(r.successes(), 0u);
}

}  // namespace
}  // namespace keel::bench
