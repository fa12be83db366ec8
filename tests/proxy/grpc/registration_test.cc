#include "proxy/grpc/registration.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_backend.h"
#include "tests/testutil/process.h"

namespace keel::proxy::grpcproxy {
namespace {

using etcdserverpb::LeaseGrantRequest;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseKeepAliveResponse;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;

constexpr absl::Duration kWait = absl::Seconds(30);
constexpr char kAdvertise[] = "127.0.0.1:23790";
constexpr char kKey[] = "pfx/127.0.0.1:23790";
constexpr char kValue[] = R"({"Op":0,"Addr":"127.0.0.1:23790","Metadata":"{\"name\":\"host-a\"}"})";

RegistrationOptions Options(int ttl) {
  return RegistrationOptions{"pfx", ttl, kAdvertise, "host-a"};
}

LeaseGrantResponse Granted(int64_t id, int64_t ttl) {
  LeaseGrantResponse response;
  response.set_id(id);
  response.set_ttl(ttl);
  return response;
}

TxnResponse Succeeded() {
  TxnResponse response;
  response.set_succeeded(true);
  return response;
}

LeaseKeepAliveResponse Alive(int64_t id, int64_t ttl) {
  LeaseKeepAliveResponse response;
  response.set_id(id);
  response.set_ttl(ttl);
  return response;
}

// True once `method` was called at least `n` times.
bool WaitForCalls(const testutil::FakeBackend& fake, const std::string& method, size_t n) {
  const absl::Time deadline = absl::Now() + kWait;
  for (size_t seen = 0; absl::Now() < deadline;) {
    seen = fake.CallsTo(method).size();
    if (seen >= n) return true;
    fake.WaitForUnaryCalls(fake.unary_count() + 1, absl::Milliseconds(50));
  }
  return false;
}

void ExpectRegistrationTxn(const testutil::FakeBackend& fake, size_t call, int64_t lease) {
  EXPECT_EQ(fake.Method(call), "Txn");
  TxnRequest txn = fake.Request<TxnRequest>(call);
  EXPECT_EQ(txn.compare_size(), 0);
  EXPECT_EQ(txn.failure_size(), 0);
  ASSERT_EQ(txn.success_size(), 1);
  ASSERT_TRUE(txn.success(0).has_request_put());
  const etcdserverpb::PutRequest& put = txn.success(0).request_put();
  EXPECT_EQ(put.key(), kKey);
  EXPECT_EQ(put.value(), kValue);
  EXPECT_EQ(put.lease(), lease);
  EXPECT_FALSE(put.prev_kv());
  EXPECT_FALSE(put.ignore_value());
  EXPECT_FALSE(put.ignore_lease());
}

TEST(Registration, GrantsPutsAndKeepsAlive) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(42, 6));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(6));
  registration.Start();

  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  ASSERT_EQ(fake.Methods(), (std::vector<std::string>{"LeaseGrant", "Txn"}));
  EXPECT_EQ(fake.Request<LeaseGrantRequest>(0).ttl(), 6);
  EXPECT_EQ(fake.Request<LeaseGrantRequest>(0).id(), 0);
  ExpectRegistrationTxn(fake, 1, 42);
  for (size_t i = 0; i < 2; ++i) {
    testutil::FakeBackend::UnaryCall call = fake.Call(i);
    EXPECT_EQ(call.ctx.token, "");  // proxy-internal: no identity
    EXPECT_NE(call.ctx.deadline, absl::InfiniteFuture());
  }

  // One keepalive at once, then one TTL/3 after each answer: count them.
  std::shared_ptr<testutil::FakeKeepAlive> stream = fake.keepalive(0);
  for (size_t n = 1; n <= 4; ++n) {
    ASSERT_TRUE(stream->WaitForRequests(n, kWait)) << n;
    EXPECT_EQ(stream->Requests()[n - 1].id(), 42);
    stream->Push(Alive(42, 6));
  }
  EXPECT_EQ(fake.CallsTo("LeaseGrant").size(), 1u);
  EXPECT_EQ(fake.keepalive_count(), 1u);
  EXPECT_FALSE(stream->cancelled());

  registration.Stop();
  EXPECT_TRUE(stream->done());
  // The lease is left to expire, as etcd's proxy does.
  EXPECT_TRUE(fake.CallsTo("LeaseRevoke").empty());
  EXPECT_EQ(fake.CallsTo("Txn").size(), 1u);
}

TEST(Registration, ReRegistersAfterKeepAliveReportsTtlZero) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(42, 6));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(6));
  registration.Start();

  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  std::shared_ptr<testutil::FakeKeepAlive> first = fake.keepalive(0);
  ASSERT_TRUE(first->WaitForRequests(1, kWait));
  first->Push(Alive(42, 6));
  ASSERT_TRUE(first->WaitForRequests(2, kWait));
  fake.SetAutoReply("LeaseGrant", Granted(43, 6));
  first->Push(Alive(42, 0));  // the lease is gone

  ASSERT_TRUE(first->WaitForDone(kWait));
  EXPECT_TRUE(first->cancelled());
  ASSERT_TRUE(fake.WaitForKeepAlives(2, kWait));
  EXPECT_EQ(fake.Methods(), (std::vector<std::string>{"LeaseGrant", "Txn", "LeaseGrant", "Txn"}));
  ExpectRegistrationTxn(fake, 3, 43);
  std::shared_ptr<testutil::FakeKeepAlive> second = fake.keepalive(1);
  ASSERT_TRUE(second->WaitForRequests(1, kWait));
  EXPECT_EQ(second->Requests()[0].id(), 43);
}

TEST(Registration, ReRegistersAfterKeepAliveStreamFails) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(42, 6));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(6));
  registration.Start();

  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  fake.keepalive(0)->Finish(absl::UnavailableError("connection reset"));
  ASSERT_TRUE(fake.WaitForKeepAlives(2, kWait));
  EXPECT_EQ(fake.CallsTo("LeaseGrant").size(), 2u);
  EXPECT_EQ(fake.CallsTo("Txn").size(), 2u);
  EXPECT_FALSE(fake.keepalive(0)->cancelled());  // it had already ended
}

TEST(Registration, SilentKeepAliveCountsAsLost) {
  // No keepalive answer for a whole TTL: the lease may have expired, so the
  // proxy registers again (etcd's client behaves the same).
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(42, 1));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(1));
  registration.Start();

  ASSERT_TRUE(fake.WaitForKeepAlives(2, kWait));
  std::shared_ptr<testutil::FakeKeepAlive> first = fake.keepalive(0);
  EXPECT_GE(first->Requests().size(), 1u);
  EXPECT_TRUE(first->WaitForDone(kWait));
  EXPECT_TRUE(first->cancelled());
  EXPECT_GE(fake.CallsTo("LeaseGrant").size(), 2u);
}

TEST(Registration, RetriesFailedGrant) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("LeaseGrant", absl::UnavailableError("no endpoint"));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(6));
  registration.Start();

  ASSERT_TRUE(WaitForCalls(fake, "LeaseGrant", 2));
  EXPECT_EQ(fake.keepalive_count(), 0u);
  fake.SetAutoReply("LeaseGrant", Granted(44, 6));
  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  // The only Txn is the one after the successful grant.
  std::vector<size_t> txns = fake.CallsTo("Txn");
  ASSERT_EQ(txns.size(), 1u);
  ExpectRegistrationTxn(fake, txns[0], 44);
  EXPECT_EQ(fake.Method(txns[0] - 1), "LeaseGrant");
}

TEST(Registration, RetriesFailedTxnWithANewLease) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(45, 6));
  fake.SetAutoFail("Txn", absl::UnavailableError("no endpoint"));
  Registration registration(fake, Options(6));
  registration.Start();

  ASSERT_TRUE(WaitForCalls(fake, "Txn", 2));
  EXPECT_EQ(fake.keepalive_count(), 0u);  // a lease without the key is not kept alive
  EXPECT_GE(fake.CallsTo("LeaseGrant").size(), 2u);
  fake.SetAutoReply("Txn", Succeeded());
  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  ASSERT_TRUE(fake.keepalive(0)->WaitForRequests(1, kWait));
  EXPECT_EQ(fake.keepalive(0)->Requests()[0].id(), 45);
}

TEST(Registration, StopWaitsForTheCallInFlight) {
  testutil::FakeBackend fake;
  Registration registration(fake, Options(6));
  registration.Start();
  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  EXPECT_EQ(fake.Method(0), "LeaseGrant");

  std::atomic<bool> stopped{false};
  std::thread stopper([&registration, &stopped] {
    registration.Stop();
    stopped = true;
  });
  // The grant has not answered, so Stop() cannot have returned: once it has,
  // no callback may reach the registration and the backend may go away.
  EXPECT_FALSE(stopped.load());
  EXPECT_TRUE(testutil::WaitFor(
      [&fake, &stopped] {
        fake.FailAllPending(absl::UnavailableError("no endpoint"));
        return stopped.load();
      },
      std::chrono::seconds(30)));
  stopper.join();
  for (size_t i = 0; i < fake.unary_count(); ++i) EXPECT_TRUE(fake.Call(i).completed) << i;
  EXPECT_EQ(fake.keepalive_count(), 0u);
}

TEST(Registration, StopIsIdempotentAndStartAfterStopDoesNothing) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("LeaseGrant", Granted(42, 6));
  fake.SetAutoReply("Txn", Succeeded());
  Registration registration(fake, Options(6));
  registration.Start();
  registration.Start();
  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  registration.Stop();
  registration.Stop();
  EXPECT_TRUE(fake.keepalive(0)->done());
  registration.Start();
  EXPECT_EQ(fake.CallsTo("LeaseGrant").size(), 1u);
  EXPECT_EQ(fake.keepalive_count(), 1u);
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
