#include "proxy/tcp/endpoint_picker.h"

#include <map>
#include <random>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace keel::proxy::tcp {
namespace {

constexpr uint64_t kSeed = 20261121;

Endpoint Static(const std::string& host) { return Endpoint{{host, 2379}, 0, 0, ""}; }
Endpoint Srv(const std::string& host, uint16_t priority, uint16_t weight) {
  return Endpoint{{host, 2379}, priority, weight, "http"};
}

EndpointSet MakeSet(std::vector<Endpoint> endpoints, std::vector<bool> active = {}) {
  EndpointSet set;
  if (active.empty()) active.assign(endpoints.size(), true);
  set.endpoints = std::move(endpoints);
  set.active = std::move(active);
  return set;
}

// Every index exactly once.
void ExpectPermutation(const std::vector<size_t>& order, size_t n) {
  ASSERT_EQ(order.size(), n);
  std::set<size_t> seen(order.begin(), order.end());
  EXPECT_EQ(seen.size(), n);
  for (size_t i : order) EXPECT_LT(i, n);
}

TEST(PickOrder, EmptySetGivesEmptyOrder) {
  std::mt19937_64 rng(kSeed);
  EXPECT_TRUE(PickOrder(EndpointSet{}, 0, rng).empty());
}

TEST(PickOrder, StaticRoundRobinIsExactlyEven) {  // proxy.md section 4, gateway scenario 1
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Static("a"), Static("b"), Static("c")});
  std::map<size_t, int> first;
  for (uint64_t ticket = 0; ticket < 30; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    ++first[order[0]];
  }
  EXPECT_EQ(first[0], 10);
  EXPECT_EQ(first[1], 10);
  EXPECT_EQ(first[2], 10);
}

TEST(PickOrder, StaticRoundRobinFollowsConfigOrder) {
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Static("a"), Static("b"), Static("c")});
  EXPECT_EQ(PickOrder(set, 0, rng), (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(PickOrder(set, 1, rng), (std::vector<size_t>{1, 2, 0}));
  EXPECT_EQ(PickOrder(set, 5, rng), (std::vector<size_t>{2, 0, 1}));
}

TEST(PickOrder, InactiveSkippedButListedLast) {  // gateway scenario 2
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Static("a"), Static("b"), Static("c")}, {true, false, true});
  std::map<size_t, int> first;
  for (uint64_t ticket = 0; ticket < 20; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    EXPECT_EQ(order.back(), 1u) << "ticket " << ticket;
    ++first[order[0]];
  }
  EXPECT_EQ(first[0], 10);
  EXPECT_EQ(first[2], 10);
  EXPECT_EQ(first.count(1), 0u);
}

TEST(PickOrder, AllInactiveStillListsAllRoundRobin) {  // gateway scenario 4
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Static("a"), Static("b"), Static("c")}, {false, false, false});
  std::map<size_t, int> first;
  for (uint64_t ticket = 0; ticket < 9; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    ++first[order[0]];
  }
  EXPECT_EQ(first[0], 3);
  EXPECT_EQ(first[1], 3);
  EXPECT_EQ(first[2], 3);
}

TEST(PickOrder, LowerPriorityClassFirst) {  // gateway scenario 7
  std::mt19937_64 rng(kSeed);
  // Class 1 listed first in config order, class 0 second.
  const EndpointSet set = MakeSet({Srv("c", 1, 0), Srv("a", 0, 10), Srv("b", 0, 30)});
  for (uint64_t ticket = 0; ticket < 1000; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    EXPECT_NE(order[0], 0u);
    EXPECT_NE(order[1], 0u);
    EXPECT_EQ(order[2], 0u);  // the next class follows the whole first class
  }
}

TEST(PickOrder, NextClassWhenFirstClassInactive) {  // gateway scenario 7, A and B dead
  std::mt19937_64 rng(kSeed);
  const EndpointSet set =
      MakeSet({Srv("a", 0, 10), Srv("b", 0, 30), Srv("c", 1, 0)}, {false, false, true});
  for (uint64_t ticket = 0; ticket < 100; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    EXPECT_EQ(order[0], 2u);
  }
}

TEST(PickOrder, WeightsGiveRatioOneToThree) {  // gateway scenario 7 (RFC 2782)
  std::mt19937_64 rng(kSeed);
  SCOPED_TRACE("seed " + std::to_string(kSeed));
  const EndpointSet set = MakeSet({Srv("a", 0, 10), Srv("b", 0, 30), Srv("c", 1, 0)});
  int a = 0;
  int b = 0;
  for (uint64_t ticket = 0; ticket < 40000; ++ticket) {
    const size_t first = PickOrder(set, ticket, rng)[0];
    ASSERT_NE(first, 2u);
    (first == 0 ? a : b)++;
  }
  const double ratio = static_cast<double>(b) / a;
  EXPECT_NEAR(ratio, 3.0, 3.0 * 0.02) << "a=" << a << " b=" << b;
}

TEST(PickOrder, DrawCoversEveryWeightExactlyOnce) {
  // Weights 1 and 1: with the off-by-one of etcd the first would win 2/2 of the
  // slots; drawn in [1, sum] each wins half.
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Srv("a", 0, 1), Srv("b", 0, 1)});
  int a = 0;
  for (uint64_t ticket = 0; ticket < 10000; ++ticket) {
    if (PickOrder(set, ticket, rng)[0] == 0) ++a;
  }
  EXPECT_GT(a, 4700);
  EXPECT_LT(a, 5300);
}

TEST(PickOrder, WeightZeroMemberGetsAboutOnePercent) {
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Srv("a", 0, 10), Srv("b", 0, 30), Srv("z", 0, 0)});
  int zero_first = 0;
  for (uint64_t ticket = 0; ticket < 40000; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    if (order[0] == 2) {
      ++zero_first;
    } else {
      EXPECT_EQ(order[2], 2u);  // otherwise after the weighted members
    }
  }
  EXPECT_GT(zero_first, 300);  // 1 % of 40,000 = 400
  EXPECT_LT(zero_first, 500);
}

TEST(PickOrder, AllWeightZeroClassIsRoundRobinWithinClass) {
  std::mt19937_64 rng(kSeed);
  const EndpointSet set = MakeSet({Srv("a", 0, 0), Srv("x", 1, 0), Srv("b", 0, 0)});
  std::map<size_t, int> first;
  for (uint64_t ticket = 0; ticket < 10; ++ticket) {
    const std::vector<size_t> order = PickOrder(set, ticket, rng);
    ExpectPermutation(order, 3);
    EXPECT_EQ(order[2], 1u);
    ++first[order[0]];
  }
  EXPECT_EQ(first[0], 5);
  EXPECT_EQ(first[2], 5);
}

TEST(PickOrder, SameSeedSameOrder) {
  const EndpointSet set = MakeSet({Srv("a", 0, 10), Srv("b", 0, 30), Srv("c", 0, 5)});
  std::mt19937_64 rng1(kSeed);
  std::mt19937_64 rng2(kSeed);
  for (uint64_t ticket = 0; ticket < 100; ++ticket) {
    EXPECT_EQ(PickOrder(set, ticket, rng1), PickOrder(set, ticket, rng2));
  }
}

}  // namespace
}  // namespace keel::proxy::tcp
