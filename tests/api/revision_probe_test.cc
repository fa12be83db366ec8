#include "api/revision_probe.h"

#include <optional>
#include <string>
#include <vector>

#include "api/errors.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_backend.h"

namespace keel::api {
namespace {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::ResponseHeader;

constexpr absl::Duration kWait = absl::Seconds(30);

RangeResponse AtRevision(int64_t revision) {
  RangeResponse response;
  response.mutable_header()->set_cluster_id(11);
  response.mutable_header()->set_member_id(22);
  response.mutable_header()->set_raft_term(3);
  response.mutable_header()->set_revision(revision);
  return response;
}

// Collects one Fetch result.
struct Result {
  std::optional<absl::StatusOr<ResponseHeader>> value;
  Done<ResponseHeader> Callback() {
    return [this](absl::StatusOr<ResponseHeader> header) { value = std::move(header); };
  }
};

TEST(RevisionProbeTest, SendsOneLinearizableCountOnlyRangeWithTheCallersContext) {
  testutil::FakeBackend fake;
  RevisionProbe probe(fake);
  CallContext ctx;
  ctx.token = "tok";
  ctx.require_leader = true;
  Result result;
  probe.Fetch(ctx, "a", "b", result.Callback());

  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  EXPECT_EQ(fake.Method(0), "Range");
  RangeRequest sent = fake.Request<RangeRequest>(0);
  EXPECT_EQ(sent.key(), "a");
  EXPECT_EQ(sent.range_end(), "b");
  EXPECT_EQ(sent.limit(), 1);
  EXPECT_TRUE(sent.count_only());
  EXPECT_FALSE(sent.serializable());
  EXPECT_EQ(fake.Call(0).ctx.token, "tok");
  EXPECT_TRUE(fake.Call(0).ctx.require_leader);

  EXPECT_FALSE(result.value.has_value());
  fake.Reply(0, AtRevision(42));
  ASSERT_TRUE(result.value.has_value());
  ASSERT_TRUE(result.value->ok());
  EXPECT_EQ((*result.value)->revision(), 42);
  EXPECT_EQ((*result.value)->cluster_id(), 11u);
  EXPECT_EQ((*result.value)->member_id(), 22u);
  EXPECT_EQ((*result.value)->raft_term(), 3u);
}

TEST(RevisionProbeTest, CallersArrivingDuringAProbeShareTheNextOne) {
  testutil::FakeBackend fake;
  RevisionProbe probe(fake);
  Result first;
  probe.Fetch(CallContext{}, "k", "", first.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));

  std::vector<Result> later(5);
  for (Result& r : later) probe.Fetch(CallContext{}, "k", "", r.Callback());
  // The in-flight probe may predate them: none of them may use its answer.
  EXPECT_EQ(fake.unary_count(), 1u);
  fake.Reply(0, AtRevision(7));
  ASSERT_TRUE(first.value.has_value());
  EXPECT_EQ((*first.value)->revision(), 7);
  for (Result& r : later) EXPECT_FALSE(r.value.has_value());

  // One more probe serves all five.
  ASSERT_TRUE(fake.WaitForUnaryCalls(2, kWait));
  EXPECT_EQ(fake.unary_count(), 2u);
  fake.Reply(1, AtRevision(9));
  for (Result& r : later) {
    ASSERT_TRUE(r.value.has_value());
    EXPECT_EQ((*r.value)->revision(), 9);
  }

  // Nothing in flight now: the next caller gets a fresh probe at once.
  Result again;
  probe.Fetch(CallContext{}, "k", "", again.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(3, kWait));
  fake.Reply(2, AtRevision(10));
  EXPECT_EQ((*again.value)->revision(), 10);
}

TEST(RevisionProbeTest, DifferentTokensOrRangesDoNotShare) {
  testutil::FakeBackend fake;
  RevisionProbe probe(fake);
  CallContext alice;
  alice.token = "alice";
  CallContext bob;
  bob.token = "bob";
  Result a, b, c;
  probe.Fetch(alice, "k", "", a.Callback());
  probe.Fetch(bob, "k", "", b.Callback());
  probe.Fetch(alice, "other", "", c.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(3, kWait));
  EXPECT_EQ(fake.Call(1).ctx.token, "bob");
  EXPECT_EQ(fake.Request<RangeRequest>(2).key(), "other");
}

TEST(RevisionProbeTest, UpstreamErrorsReachEveryWaiterUnchanged) {
  testutil::FakeBackend fake;
  RevisionProbe probe(fake);
  Result first, second;
  probe.Fetch(CallContext{}, "k", "", first.Callback());
  probe.Fetch(CallContext{}, "k", "", second.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  fake.Fail(0, EtcdStatus(EtcdError::kPermissionDenied));
  ASSERT_TRUE(first.value.has_value());
  EXPECT_EQ(first.value->status(), EtcdStatus(EtcdError::kPermissionDenied));
  ASSERT_TRUE(fake.WaitForUnaryCalls(2, kWait));
  fake.Fail(1, EtcdStatus(EtcdError::kNoLeader));
  ASSERT_TRUE(second.value.has_value());
  EXPECT_EQ(second.value->status(), EtcdStatus(EtcdError::kNoLeader));
}

TEST(RevisionProbeTest, CompletionsAfterTheProbeIsDestroyedAreSafe) {
  testutil::FakeBackend fake;
  Result first, second;
  {
    RevisionProbe probe(fake);
    probe.Fetch(CallContext{}, "k", "", first.Callback());
    probe.Fetch(CallContext{}, "k", "", second.Callback());
    ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  }
  fake.Reply(0, AtRevision(5));
  EXPECT_EQ((*first.value)->revision(), 5);
  ASSERT_TRUE(fake.WaitForUnaryCalls(2, kWait));
  fake.Reply(1, AtRevision(6));
  EXPECT_EQ((*second.value)->revision(), 6);
}

// After Close(): the callers waiting for the next probe get CANCELLED at
// once, the completing probe sends no further Range, and a new Fetch sends
// nothing either.
TEST(RevisionProbeTest, CloseSendsNoNewRangeAndCancelsWaiters) {
  testutil::FakeBackend fake;
  RevisionProbe probe(fake);
  Result first;
  probe.Fetch(CallContext{}, "k", "", first.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  Result waiting;
  probe.Fetch(CallContext{}, "k", "", waiting.Callback());
  probe.Close();
  ASSERT_TRUE(waiting.value.has_value());
  EXPECT_EQ(waiting.value->status().code(), absl::StatusCode::kCancelled);
  Result late;
  probe.Fetch(CallContext{}, "k", "", late.Callback());
  ASSERT_TRUE(late.value.has_value());
  EXPECT_EQ(late.value->status().code(), absl::StatusCode::kCancelled);
  // The probe already sent completes normally and sends nothing more.
  fake.Reply(0, AtRevision(9));
  ASSERT_TRUE(first.value.has_value());
  ASSERT_TRUE(first.value->ok());
  EXPECT_EQ((*first.value)->revision(), 9);
  EXPECT_EQ(fake.unary_count(), 1u);
}

}  // namespace
}  // namespace keel::api
