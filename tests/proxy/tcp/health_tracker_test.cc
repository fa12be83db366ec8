#include "proxy/tcp/health_tracker.h"

#include <string>

#include "gtest/gtest.h"

namespace keel::proxy::tcp {
namespace {

constexpr uint64_t kSeed = 7;

Endpoint Ep(const std::string& host, int port = 2379) { return Endpoint{{host, port}, 0, 0, ""}; }

absl::Time T0() { return absl::FromUnixSeconds(1'000'000); }

HealthTracker::Options Opts(absl::Duration retry, absl::Duration initial) {
  HealthTracker::Options o;
  o.retry_delay = retry;
  o.initial_backoff = initial;
  return o;
}

TEST(HealthTracker, StartsAllActiveWithNoProbes) {
  HealthTracker t({Ep("a"), Ep("b")}, {}, kSeed);
  auto snap = t.Snapshot();
  ASSERT_EQ(snap->endpoints.size(), 2u);
  EXPECT_EQ(snap->active, (std::vector<bool>{true, true}));
  EXPECT_EQ(t.NextProbe(), absl::InfiniteFuture());
  EXPECT_TRUE(t.DueProbes(T0()).empty());
}

TEST(HealthTracker, FailureDeactivatesOnceAndPublishes) {
  HealthTracker t({Ep("a"), Ep("b")}, {}, kSeed);
  auto before = t.Snapshot();
  EXPECT_TRUE(t.ReportFailure(1, T0()));
  EXPECT_FALSE(t.ReportFailure(1, T0()));  // already down: no second "deactivated"
  auto after = t.Snapshot();
  EXPECT_GT(after->generation, before->generation);
  EXPECT_EQ(after->active, (std::vector<bool>{true, false}));
  EXPECT_EQ(before->active, (std::vector<bool>{true, true}));  // old snapshot unchanged
  EXPECT_FALSE(t.IsActive(1));
}

TEST(HealthTracker, ProbeDueOnceThenSuccessReactivates) {
  HealthTracker t({Ep("a")}, Opts(absl::Seconds(5), absl::Milliseconds(100)), kSeed);
  ASSERT_TRUE(t.ReportFailure(0, T0()));
  const absl::Time next = t.NextProbe();
  EXPECT_GE(next, T0() + absl::Milliseconds(80));
  EXPECT_LE(next, T0() + absl::Milliseconds(120));
  EXPECT_TRUE(t.DueProbes(next - absl::Milliseconds(1)).empty());
  EXPECT_EQ(t.DueProbes(next), (std::vector<size_t>{0}));
  EXPECT_TRUE(t.DueProbes(next + absl::Seconds(10)).empty());  // handed out once
  EXPECT_EQ(t.NextProbe(), absl::InfiniteFuture());
  EXPECT_TRUE(t.ReportSuccess(0, next));
  EXPECT_TRUE(t.IsActive(0));
  EXPECT_FALSE(t.ReportSuccess(0, next));
  EXPECT_EQ(t.NextProbe(), absl::InfiniteFuture());
}

TEST(HealthTracker, BackoffDoublesWithJitterAndIsCapped) {
  const absl::Duration retry = absl::Seconds(2);
  const absl::Duration initial = absl::Milliseconds(100);
  HealthTracker t({Ep("a")}, Opts(retry, initial), kSeed);
  absl::Time now = T0();
  ASSERT_TRUE(t.ReportFailure(0, now));
  absl::Duration base = initial;
  bool saw_jitter = false;
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const absl::Duration interval = t.NextProbe() - now;
    EXPECT_EQ(interval, t.ProbeInterval(0));
    EXPECT_GE(interval, base * 0.8);
    EXPECT_LE(interval, std::min(base * 1.2, retry));
    EXPECT_LE(interval, retry);
    if (interval != base && interval != retry) saw_jitter = true;
    now = t.NextProbe();
    ASSERT_EQ(t.DueProbes(now), (std::vector<size_t>{0}));
    EXPECT_FALSE(t.ReportFailure(0, now));  // stays inactive: no change to publish
    base = std::min(base * 2, retry);
  }
  EXPECT_TRUE(saw_jitter);
  // After many rounds the interval sits at the cap (jitter only shortens it).
  EXPECT_LE(t.NextProbe() - now, retry);
  EXPECT_GE(t.NextProbe() - now, retry * 0.8);
}

TEST(HealthTracker, SuccessResetsBackoff) {
  HealthTracker t({Ep("a")}, Opts(absl::Minutes(1), absl::Milliseconds(100)), kSeed);
  absl::Time now = T0();
  ASSERT_TRUE(t.ReportFailure(0, now));
  for (int i = 0; i < 5; ++i) {
    now = t.NextProbe();
    ASSERT_EQ(t.DueProbes(now).size(), 1u);
    t.ReportFailure(0, now);
  }
  EXPECT_GT(t.NextProbe() - now, absl::Seconds(2));
  now = t.NextProbe();
  ASSERT_EQ(t.DueProbes(now).size(), 1u);
  ASSERT_TRUE(t.ReportSuccess(0, now));
  ASSERT_TRUE(t.ReportFailure(0, now));
  EXPECT_LE(t.NextProbe() - now, absl::Milliseconds(120));
}

TEST(HealthTracker, DataPathFailureOfInactiveEndpointKeepsSchedule) {
  HealthTracker t({Ep("a")}, Opts(absl::Minutes(1), absl::Milliseconds(100)), kSeed);
  ASSERT_TRUE(t.ReportFailure(0, T0()));
  const absl::Time next = t.NextProbe();
  EXPECT_FALSE(t.ReportFailure(0, T0() + absl::Milliseconds(10)));
  EXPECT_EQ(t.NextProbe(), next);
}

TEST(HealthTracker, DataPathSuccessReactivatesBeforeProbe) {
  HealthTracker t({Ep("a")}, {}, kSeed);
  ASSERT_TRUE(t.ReportFailure(0, T0()));
  EXPECT_TRUE(t.ReportSuccess(0, T0() + absl::Milliseconds(1)));
  EXPECT_EQ(t.NextProbe(), absl::InfiniteFuture());
  EXPECT_TRUE(t.DueProbes(T0() + absl::Hours(1)).empty());
}

TEST(HealthTracker, RetryDelayCapsFirstInterval) {
  HealthTracker t({Ep("a")}, Opts(absl::Milliseconds(50), absl::Milliseconds(100)), kSeed);
  ASSERT_TRUE(t.ReportFailure(0, T0()));
  EXPECT_LE(t.NextProbe() - T0(), absl::Milliseconds(50));
}

TEST(HealthTracker, SetEndpointsKeepsState) {
  HealthTracker t({Ep("a"), Ep("b"), Ep("c")}, {}, kSeed);
  ASSERT_TRUE(t.ReportFailure(1, T0()));
  const absl::Time next = t.NextProbe();
  const uint64_t gen = t.Snapshot()->generation;
  // b stays (now with SRV weight), a goes, d is new.
  Endpoint b = Ep("b");
  b.weight = 5;
  t.SetEndpoints({Ep("d"), b, Ep("c")}, T0());
  auto snap = t.Snapshot();
  EXPECT_GT(snap->generation, gen);
  ASSERT_EQ(snap->endpoints.size(), 3u);
  EXPECT_EQ(snap->endpoints[1].weight, 5);
  EXPECT_EQ(snap->active, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(t.NextProbe(), next);
  EXPECT_EQ(t.IndexOf(Ep("c")), std::optional<size_t>(2));
  EXPECT_EQ(t.IndexOf(Ep("a")), std::nullopt);
  EXPECT_EQ(t.DueProbes(next), (std::vector<size_t>{1}));
}

TEST(HealthTracker, SetEndpointsSameListDoesNotBumpGeneration) {
  HealthTracker t({Ep("a"), Ep("b")}, {}, kSeed);
  const uint64_t gen = t.Snapshot()->generation;
  t.SetEndpoints({Ep("a"), Ep("b")}, T0());
  EXPECT_EQ(t.Snapshot()->generation, gen);
  t.SetEndpoints({Ep("b"), Ep("a")}, T0());
  EXPECT_GT(t.Snapshot()->generation, gen);
}

TEST(HealthTracker, SameSeedSameSchedule) {
  HealthTracker t1({Ep("a")}, {}, kSeed);
  HealthTracker t2({Ep("a")}, {}, kSeed);
  t1.ReportFailure(0, T0());
  t2.ReportFailure(0, T0());
  EXPECT_EQ(t1.NextProbe(), t2.NextProbe());
}

}  // namespace
}  // namespace keel::proxy::tcp
