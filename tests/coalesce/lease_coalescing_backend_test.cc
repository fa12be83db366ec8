// LeaseCoalescingBackend over testutil::FakeBackend: the glue around the pure
// core (one upstream stream per require_leader flag, routing, flow control,
// half-close, cancel, upstream loss, no-leader end, backlog bound, logging,
// upstream lifetime, destruction).

#include "coalesce/lease_coalescing_backend.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "api/errors.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "spdlog/sinks/ostream_sink.h"
#include "tests/testutil/text.h"
#include "tests/testutil/fake_backend.h"
#include "tests/testutil/process.h"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::LeaseKeepAliveRequest;
using ::etcdserverpb::LeaseKeepAliveResponse;
using ::keel::testutil::FakeBackend;
using ::keel::testutil::FakeKeepAlive;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(30);

LeaseKeepAliveRequest Ask(int64_t lease_id) {
  LeaseKeepAliveRequest r;
  r.set_id(lease_id);
  return r;
}

LeaseKeepAliveResponse Answer(int64_t lease_id, int64_t ttl, int64_t revision = 7) {
  LeaseKeepAliveResponse r;
  r.mutable_header()->set_cluster_id(11);
  r.mutable_header()->set_member_id(22);
  r.mutable_header()->set_raft_term(3);
  r.mutable_header()->set_revision(revision);
  r.set_id(lease_id);
  r.set_ttl(ttl);
  return r;
}

// One client stream: the observer, and the handle it holds. By default it
// asks for the next response (ReadNext) as soon as one arrived, like the
// front; with auto_read = false the test grants each ReadNext itself.
class TestClient : public api::StreamObserver<LeaseKeepAliveResponse> {
 public:
  explicit TestClient(bool auto_read = true) : auto_read_(auto_read) {}
  ~TestClient() override { handle_.reset(); }

  void Open(api::Backend& backend, api::CallContext ctx = {}) {
    handle_ = backend.LeaseKeepAlive(ctx, this);
    if (auto_read_) handle_->ReadNext();
  }
  api::LeaseKeepAliveStream& handle() { return *handle_; }
  void Close() { handle_.reset(); }

  void OnResponse(LeaseKeepAliveResponse response) override {
    {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(done_.has_value()) << "response after OnDone";
      responses_.push_back(std::move(response));
    }
    if (auto_read_) handle_->ReadNext();
  }
  void OnDone(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(done_.has_value()) << "OnDone ran twice";
    done_ = std::move(status);
  }

  // True once `n` responses arrived; false after kWait.
  bool WaitResponses(size_t n) {
    absl::MutexLock lock(&mu_);
    auto ready = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return responses_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
  }
  // OnDone's status, waiting up to kWait for it.
  std::optional<absl::Status> WaitDone() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
    return done_;
  }
  std::vector<LeaseKeepAliveResponse> responses() {
    absl::MutexLock lock(&mu_);
    return responses_;
  }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return responses_.size();
  }
  bool done() {
    absl::MutexLock lock(&mu_);
    return done_.has_value();
  }

 private:
  const bool auto_read_;
  std::unique_ptr<api::LeaseKeepAliveStream> handle_;
  absl::Mutex mu_;
  std::vector<LeaseKeepAliveResponse> responses_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
};

// The fake first, the decorator over it, clients last (destroyed first).
class LeaseCoalescingBackendTest : public ::testing::Test {
 protected:
  // The upstream stream `i`, once it has `requests` requests.
  std::shared_ptr<FakeKeepAlive> Upstream(size_t i, size_t requests) {
    EXPECT_TRUE(fake_.WaitForKeepAlives(i + 1, kWait));
    std::shared_ptr<FakeKeepAlive> up = fake_.keepalive(i);
    if (up != nullptr) {
      EXPECT_TRUE(up->WaitForRequests(requests, kWait));
    }
    return up;
  }
  int64_t Gauge(const std::string& name) { return metrics_.GetGauge(name, "")->Value(); }
  uint64_t Counter(const std::string& name) { return metrics_.GetCounter(name, "")->Value(); }

  FakeBackend fake_;
  common::MetricsRegistry metrics_;
  std::optional<LeaseCoalescingBackend> backend_{std::in_place, fake_, &metrics_};
};

TEST_F(LeaseCoalescingBackendTest, ManyClientsShareOneUpstreamStreamAndGetTheirOwnReplies) {
  constexpr int kClients = 10;
  std::vector<std::unique_ptr<TestClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<TestClient>());
    clients.back()->Open(*backend_);
  }
  // Clients 0..4 keep lease 100 alive, 5..9 lease 200.
  for (int i = 0; i < kClients; ++i) clients[i]->handle().Write(Ask(i < 5 ? 100 : 200));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 2);
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(fake_.keepalive_count(), 1u);
  std::vector<LeaseKeepAliveRequest> sent = up->Requests();
  ASSERT_EQ(sent.size(), 2u);  // one per lease: the others wait for its reply
  EXPECT_EQ(sent[0].id(), 100);
  EXPECT_EQ(sent[1].id(), 200);
  EXPECT_TRUE(up->ctx().token.empty());
  EXPECT_FALSE(up->ctx().require_leader);

  up->Push(Answer(200, 30, /*revision=*/9));
  for (int i = 5; i < kClients; ++i) ASSERT_TRUE(clients[i]->WaitResponses(1)) << i;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(clients[i]->count(), 0u) << i;
  up->Push(Answer(100, 20));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(clients[i]->WaitResponses(1)) << i;
  for (int i = 0; i < kClients; ++i) {
    std::vector<LeaseKeepAliveResponse> got = clients[i]->responses();
    ASSERT_EQ(got.size(), 1u) << i;
    EXPECT_EQ(got[0].id(), i < 5 ? 100 : 200);
    EXPECT_EQ(got[0].ttl(), i < 5 ? 20 : 30);
    EXPECT_EQ(got[0].header().cluster_id(), 11u);
    EXPECT_EQ(got[0].header().member_id(), 22u);
    EXPECT_EQ(got[0].header().raft_term(), 3u);
    EXPECT_EQ(got[0].header().revision(), i < 5 ? 7 : 9);
  }

  // A second round: one more upstream request per lease, same stream.
  for (int i = 0; i < kClients; ++i) clients[i]->handle().Write(Ask(i < 5 ? 100 : 200));
  ASSERT_TRUE(up->WaitForRequests(4, kWait));
  up->Push(Answer(100, 19));
  up->Push(Answer(200, 29));
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(clients[i]->WaitResponses(2)) << i;
  EXPECT_EQ(fake_.keepalive_count(), 1u);
  EXPECT_EQ(up->Requests().size(), 4u);
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), kClients);
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 1);
  EXPECT_EQ(Counter("keel_lease_keepalive_client_requests_total"), 2u * kClients);
  EXPECT_EQ(Counter("keel_lease_keepalive_upstream_requests_total"), 4u);

  clients.clear();
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), 0);
}

TEST_F(LeaseCoalescingBackendTest, OneReplyPerReadNext) {
  TestClient client(/*auto_read=*/false);
  client.Open(*backend_);
  for (int i = 0; i < 3; ++i) client.handle().Write(Ask(5));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(5, 10));
  // The upstream reply answered all three requests, but none is delivered
  // without a ReadNext.
  ASSERT_TRUE(up->WaitForReadNext(2, kWait));  // the glue asked for the next upstream reply
  EXPECT_EQ(client.count(), 0u);
  client.handle().ReadNext();
  ASSERT_TRUE(client.WaitResponses(1));
  EXPECT_EQ(client.count(), 1u);
  client.handle().ReadNext();
  client.handle().ReadNext();
  ASSERT_TRUE(client.WaitResponses(3));
  // A spare credit delivers the next reply as soon as it exists, not before.
  client.handle().ReadNext();
  EXPECT_EQ(client.count(), 3u);
  client.handle().Write(Ask(5));
  ASSERT_TRUE(up->WaitForRequests(2, kWait));
  EXPECT_EQ(client.count(), 3u);
  up->Push(Answer(5, 9));
  ASSERT_TRUE(client.WaitResponses(4));
  for (const LeaseKeepAliveResponse& r : client.responses()) EXPECT_EQ(r.id(), 5);
  EXPECT_LE(up->max_credits(), 1);
}

TEST_F(LeaseCoalescingBackendTest, HalfCloseGetsOwedRepliesThenOk) {
  TestClient closer;
  TestClient other;
  closer.Open(*backend_);
  other.Open(*backend_);
  closer.handle().Write(Ask(1));
  closer.handle().Write(Ask(2));
  closer.handle().WritesDone();
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 2);
  ASSERT_NE(up, nullptr);
  // Ignored after the half-close: never sent, never answered.
  closer.handle().Write(Ask(3));
  other.handle().Write(Ask(1));
  up->Push(Answer(1, 10));
  ASSERT_TRUE(closer.WaitResponses(1));
  ASSERT_TRUE(other.WaitResponses(1));
  EXPECT_FALSE(closer.done());
  up->Push(Answer(2, 10));
  std::optional<absl::Status> status = closer.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok()) << *status;
  std::vector<LeaseKeepAliveResponse> got = closer.responses();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].id(), 1);
  EXPECT_EQ(got[1].id(), 2);
  EXPECT_EQ(up->Requests().size(), 2u);
  EXPECT_FALSE(other.done());

  // Half-close with nothing pending: OK at once.
  TestClient idle;
  idle.Open(*backend_);
  idle.handle().WritesDone();
  status = idle.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok()) << *status;
  EXPECT_EQ(idle.count(), 0u);
}

TEST_F(LeaseCoalescingBackendTest, HalfClosedRepliesWaitForReadNextBeforeOk) {
  TestClient client(/*auto_read=*/false);
  client.Open(*backend_);
  client.handle().Write(Ask(4));
  client.handle().WritesDone();
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(4, 10));
  ASSERT_TRUE(up->WaitForReadNext(2, kWait));
  EXPECT_FALSE(client.done());  // the reply is still owed
  client.handle().ReadNext();
  std::optional<absl::Status> status = client.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok()) << *status;
  EXPECT_EQ(client.count(), 1u);
}

TEST_F(LeaseCoalescingBackendTest, CancelEndsOnlyThatClient) {
  TestClient cancelled;
  TestClient other;
  TestClient released;
  cancelled.Open(*backend_);
  other.Open(*backend_);
  released.Open(*backend_);
  cancelled.handle().Write(Ask(8));
  other.handle().Write(Ask(8));
  released.handle().Write(Ask(8));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);

  cancelled.handle().Cancel();
  std::optional<absl::Status> status = cancelled.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code(), absl::StatusCode::kCancelled) << *status;
  cancelled.handle().Cancel();       // idempotent: OnDone ran once (the observer checks)
  cancelled.handle().Write(Ask(8));  // ignored after the end
  cancelled.handle().ReadNext();

  released.Close();  // destroying the handle cancels too
  status = released.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code(), absl::StatusCode::kCancelled) << *status;

  up->Push(Answer(8, 10));
  ASSERT_TRUE(other.WaitResponses(1));
  EXPECT_EQ(cancelled.count(), 0u);
  EXPECT_EQ(released.count(), 0u);
  EXPECT_FALSE(other.done());
  EXPECT_FALSE(up->cancelled());  // the shared upstream stream stays open
  EXPECT_EQ(up->Requests().size(), 1u);
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), 1);
}

TEST_F(LeaseCoalescingBackendTest, LostUpstreamIsReopenedAndPendingRequestsAnswered) {
  TestClient a;
  TestClient b;
  a.Open(*backend_);
  b.Open(*backend_);
  a.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> first = Upstream(0, 1);
  ASSERT_NE(first, nullptr);
  first->Push(Answer(1, 10));
  ASSERT_TRUE(a.WaitResponses(1));

  a.handle().Write(Ask(1));
  b.handle().Write(Ask(2));
  ASSERT_TRUE(first->WaitForRequests(3, kWait));
  first->Finish(absl::UnavailableError("connection reset"));

  // Reopened at once (the lost stream had answered); both leases re-sent.
  std::shared_ptr<FakeKeepAlive> second = Upstream(1, 2);
  ASSERT_NE(second, nullptr);
  std::vector<LeaseKeepAliveRequest> resent = second->Requests();
  ASSERT_EQ(resent.size(), 2u);
  EXPECT_EQ(resent[0].id(), 1);
  EXPECT_EQ(resent[1].id(), 2);
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 1);
  second->Push(Answer(2, 20));
  second->Push(Answer(1, 10));
  ASSERT_TRUE(a.WaitResponses(2));
  ASSERT_TRUE(b.WaitResponses(1));
  EXPECT_EQ(a.responses()[1].id(), 1);
  EXPECT_EQ(b.responses()[0].id(), 2);
  EXPECT_FALSE(a.done());
  EXPECT_FALSE(b.done());

  // Streams that keep failing without answering are reopened (with backoff)
  // until one answers; the waiting request is answered by it.
  a.handle().Write(Ask(1));
  ASSERT_TRUE(second->WaitForRequests(3, kWait));
  second->Finish(absl::UnavailableError("gone"));
  for (size_t i = 2; i < 5; ++i) {
    std::shared_ptr<FakeKeepAlive> failing = Upstream(i, 1);
    ASSERT_NE(failing, nullptr);
    EXPECT_EQ(failing->Requests()[0].id(), 1);
    failing->Finish(absl::UnavailableError("connection refused"));
  }
  std::shared_ptr<FakeKeepAlive> last = Upstream(5, 1);
  ASSERT_NE(last, nullptr);
  last->Push(Answer(1, 8));
  ASSERT_TRUE(a.WaitResponses(3));
  EXPECT_EQ(a.responses()[2].ttl(), 8);
  EXPECT_EQ(b.count(), 1u);
  EXPECT_EQ(fake_.keepalive_count(), 6u);
}

TEST_F(LeaseCoalescingBackendTest, LostIdleUpstreamIsReopenedOnDemand) {
  TestClient a;
  a.Open(*backend_);
  a.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> first = Upstream(0, 1);
  ASSERT_NE(first, nullptr);
  first->Push(Answer(1, 10));
  ASSERT_TRUE(a.WaitResponses(1));
  first->Finish(absl::UnavailableError("etcd restarted"));
  ASSERT_TRUE(first->WaitForDone(kWait));
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 0);
  EXPECT_EQ(fake_.keepalive_count(), 1u);  // nothing waits: not reopened

  a.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> second = Upstream(1, 1);
  ASSERT_NE(second, nullptr);
  second->Push(Answer(1, 9));
  ASSERT_TRUE(a.WaitResponses(2));
  EXPECT_EQ(a.responses()[1].ttl(), 9);
}

TEST_F(LeaseCoalescingBackendTest, ExpiredOrUnknownLeaseAnswersTtlZero) {
  TestClient a;
  TestClient b;
  a.Open(*backend_);
  b.Open(*backend_);
  a.handle().Write(Ask(66));
  b.handle().Write(Ask(66));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(66, -1));
  ASSERT_TRUE(a.WaitResponses(1));
  ASSERT_TRUE(b.WaitResponses(1));
  EXPECT_EQ(a.responses()[0].ttl(), 0);
  EXPECT_EQ(b.responses()[0].ttl(), 0);
  EXPECT_EQ(b.responses()[0].id(), 66);
}

api::CallContext RequireLeader() {
  api::CallContext ctx;
  ctx.require_leader = true;
  ctx.token = "tok";
  return ctx;
}

// clientv3 (etcdctl, concurrency.Session, Kubernetes) always opens its
// keep-alive stream with "hasleader": those streams are coalesced too, on
// their own upstream stream opened with require_leader.
TEST_F(LeaseCoalescingBackendTest, RequireLeaderClientsShareOneRequireLeaderUpstreamStream) {
  constexpr int kClients = 50;
  std::vector<std::unique_ptr<TestClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<TestClient>());
    clients.back()->Open(*backend_, RequireLeader());
  }
  for (auto& c : clients) c->handle().Write(Ask(3));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  EXPECT_TRUE(up->ctx().require_leader);
  EXPECT_TRUE(up->ctx().token.empty());
  up->Push(Answer(3, -1));
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(clients[i]->WaitResponses(1)) << i;
  for (auto& c : clients) {
    EXPECT_EQ(c->responses()[0].id(), 3);
    EXPECT_EQ(c->responses()[0].ttl(), 0);  // etcd's server answers TTL 0
  }
  EXPECT_EQ(fake_.keepalive_count(), 1u);
  EXPECT_EQ(up->Requests().size(), 1u);
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), kClients);
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 1);

  // A client without require_leader gets the other shared stream.
  TestClient plain;
  plain.Open(*backend_);
  plain.handle().Write(Ask(3));
  std::shared_ptr<FakeKeepAlive> shared = Upstream(1, 1);
  ASSERT_NE(shared, nullptr);
  EXPECT_FALSE(shared->ctx().require_leader);
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 2);
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), kClients + 1);
  // A second round of the require-leader clients stays on their stream.
  for (auto& c : clients) c->handle().Write(Ask(3));
  ASSERT_TRUE(up->WaitForRequests(2, kWait));
  up->Push(Answer(3, 10));
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(clients[i]->WaitResponses(2)) << i;
  EXPECT_EQ(plain.count(), 0u);
  EXPECT_EQ(fake_.keepalive_count(), 2u);
}

TEST_F(LeaseCoalescingBackendTest, NoLeaderEndsEveryRequireLeaderClientAndNoOtherClient) {
  TestClient waiting;
  TestClient idle;
  TestClient unread(/*auto_read=*/false);
  TestClient plain;
  waiting.Open(*backend_, RequireLeader());
  idle.Open(*backend_, RequireLeader());
  unread.Open(*backend_, RequireLeader());
  plain.Open(*backend_);
  unread.handle().Write(Ask(5));
  std::shared_ptr<FakeKeepAlive> leader_up = Upstream(0, 1);
  ASSERT_NE(leader_up, nullptr);
  ASSERT_TRUE(leader_up->ctx().require_leader);
  leader_up->Push(Answer(5, 10));  // owed to `unread`, which has not asked to read it
  ASSERT_TRUE(leader_up->WaitForReadNext(2, kWait));
  waiting.handle().Write(Ask(6));
  plain.handle().Write(Ask(6));
  std::shared_ptr<FakeKeepAlive> plain_up = Upstream(1, 1);
  ASSERT_NE(plain_up, nullptr);
  ASSERT_FALSE(plain_up->ctx().require_leader);
  ASSERT_TRUE(leader_up->WaitForRequests(2, kWait));

  const absl::Status no_leader = api::EtcdStatus(api::EtcdError::kNoLeader);
  leader_up->Finish(no_leader);
  for (TestClient* c : {&waiting, &idle}) {
    std::optional<absl::Status> status = c->WaitDone();
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, no_leader);
    EXPECT_EQ(c->count(), 0u);
  }
  // The reply it was owed comes first, then the same end.
  EXPECT_FALSE(unread.done());
  unread.handle().ReadNext();
  std::optional<absl::Status> status = unread.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, no_leader);
  ASSERT_EQ(unread.count(), 1u);
  EXPECT_EQ(unread.responses()[0].ttl(), 10);

  // Not reopened for the ended clients; the other stream is untouched.
  EXPECT_EQ(fake_.keepalive_count(), 2u);
  EXPECT_FALSE(plain_up->cancelled());
  EXPECT_FALSE(plain.done());
  plain_up->Push(Answer(6, 20));
  ASSERT_TRUE(plain.WaitResponses(1));
  EXPECT_EQ(plain.responses()[0].ttl(), 20);
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), 1);

  // Writes on an ended stream are ignored; a new require-leader client opens
  // a new require-leader stream.
  waiting.handle().Write(Ask(6));
  TestClient later;
  later.Open(*backend_, RequireLeader());
  later.handle().Write(Ask(7));
  std::shared_ptr<FakeKeepAlive> again = Upstream(2, 1);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->ctx().require_leader);
  EXPECT_EQ(again->Requests()[0].id(), 7);
  again->Push(Answer(7, 9));
  ASSERT_TRUE(later.WaitResponses(1));
}

TEST_F(LeaseCoalescingBackendTest, OtherRequireLeaderUpstreamFailuresReopen) {
  TestClient client;
  client.Open(*backend_, RequireLeader());
  client.handle().Write(Ask(4));
  std::shared_ptr<FakeKeepAlive> first = Upstream(0, 1);
  ASSERT_NE(first, nullptr);
  first->Finish(absl::UnavailableError("connection reset"));
  std::shared_ptr<FakeKeepAlive> second = Upstream(1, 1);
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->ctx().require_leader);
  second->Push(Answer(4, 10));
  ASSERT_TRUE(client.WaitResponses(1));
  EXPECT_FALSE(client.done());
}

// A client that writes but never reads (or writes through a long outage) is
// ended once its backlog passes the bound; others go on.
TEST_F(LeaseCoalescingBackendTest, BacklogOverflowEndsThatClientWithResourceExhausted) {
  constexpr size_t kMax = LeaseCoalescingBackend::kMaxClientBacklog;
  TestClient hog(/*auto_read=*/false);
  TestClient other;
  hog.Open(*backend_);
  other.Open(*backend_);
  constexpr size_t kAnswered = 600;
  for (size_t i = 0; i < kAnswered; ++i) hog.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(1, 10));  // answers all 600: queued, unread
  ASSERT_TRUE(up->WaitForReadNext(2, kWait));
  for (size_t i = kAnswered; i < kMax; ++i) hog.handle().Write(Ask(2));  // pending upstream
  EXPECT_FALSE(hog.done());
  other.handle().Write(Ask(1));
  ASSERT_TRUE(up->WaitForRequests(3, kWait));

  hog.handle().Write(Ask(2));  // one more than the bound
  std::optional<absl::Status> status = hog.WaitDone();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code(), absl::StatusCode::kResourceExhausted) << *status;
  EXPECT_NE(status->message().find(std::to_string(kMax)), std::string::npos) << *status;
  EXPECT_EQ(hog.count(), 0u);
  hog.handle().ReadNext();  // nothing more after the end
  EXPECT_EQ(hog.count(), 0u);

  up->Push(Answer(1, 9));
  ASSERT_TRUE(other.WaitResponses(1));
  EXPECT_FALSE(other.done());
  EXPECT_FALSE(up->cancelled());
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), 1);
  EXPECT_EQ(Counter("keel_lease_keepalive_client_requests_total"), kMax + 2);
}

TEST_F(LeaseCoalescingBackendTest, ReadingClientWithinTheBoundIsNeverEnded) {
  constexpr size_t kMax = LeaseCoalescingBackend::kMaxClientBacklog;
  TestClient reader;
  reader.Open(*backend_);
  std::shared_ptr<FakeKeepAlive> up;
  // Three times the bound in total, but never more than the bound at once.
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < kMax; ++i) reader.handle().Write(Ask(1));
    up = Upstream(0, static_cast<size_t>(round) + 1);
    ASSERT_NE(up, nullptr);
    up->Push(Answer(1, 10));
    ASSERT_TRUE(reader.WaitResponses((round + 1) * kMax));
  }
  EXPECT_FALSE(reader.done());
}

// Records when an upstream handle (and so the stream our observer belongs
// to) is destroyed.
class HandleTrackingBackend : public api::ForwardingBackend {
 public:
  using api::ForwardingBackend::ForwardingBackend;

  struct Track {
    absl::Mutex mu;
    bool destroyed ABSL_GUARDED_BY(mu) = false;
  };
  class Handle : public api::LeaseKeepAliveStream {
   public:
    Handle(std::unique_ptr<api::LeaseKeepAliveStream> inner, std::shared_ptr<Track> track)
        : inner_(std::move(inner)), track_(std::move(track)) {}
    ~Handle() override {
      absl::MutexLock lock(&track_->mu);
      track_->destroyed = true;
    }
    void ReadNext() override { inner_->ReadNext(); }
    void Cancel() override { inner_->Cancel(); }
    void Write(LeaseKeepAliveRequest r) override { inner_->Write(std::move(r)); }
    void WritesDone() override { inner_->WritesDone(); }

   private:
    std::unique_ptr<api::LeaseKeepAliveStream> inner_;
    std::shared_ptr<Track> track_;
  };

  std::unique_ptr<api::LeaseKeepAliveStream> LeaseKeepAlive(
      const api::CallContext& ctx, api::StreamObserver<LeaseKeepAliveResponse>* observer) override {
    auto track = std::make_shared<Track>();
    {
      absl::MutexLock lock(&mu_);
      tracks_.push_back(track);
    }
    return std::make_unique<Handle>(inner().LeaseKeepAlive(ctx, observer), track);
  }
  std::shared_ptr<Track> track(size_t i) {
    absl::MutexLock lock(&mu_);
    return i < tracks_.size() ? tracks_[i] : nullptr;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::shared_ptr<Track>> tracks_ ABSL_GUARDED_BY(mu_);
};

// A client whose OnDone waits a while for `until` and records whether it
// became true meanwhile.
class SlowDoneClient : public TestClient {
 public:
  explicit SlowDoneClient(std::function<bool()> until) : until_(std::move(until)) {}
  void OnDone(absl::Status status) override {
    const bool seen = testutil::WaitFor(until_, std::chrono::milliseconds(1500));
    {
      absl::MutexLock lock(&mu_);
      seen_ = seen;
    }
    TestClient::OnDone(std::move(status));
  }
  bool seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  std::function<bool()> until_;
  absl::Mutex mu_;
  bool seen_ ABSL_GUARDED_BY(mu_) = false;
};

// api/backend.h: an observer must stay alive until its OnDone has returned.
TEST(LeaseCoalescingBackendUpstreamLifetime, UpstreamIsFreedOnlyAfterItsOnDoneReturned) {
  FakeBackend fake;
  HandleTrackingBackend tracking(fake);
  LeaseCoalescingBackend backend(tracking, nullptr);
  std::shared_ptr<HandleTrackingBackend::Track> track;
  auto destroyed = [&track] {
    absl::MutexLock lock(&track->mu);
    return track->destroyed;
  };
  // Its OnDone runs inside the upstream stream's OnDone (the no-leader end)
  // and gives the worker thread time to free that stream meanwhile: it must
  // not.
  SlowDoneClient client(destroyed);
  client.Open(backend, RequireLeader());
  client.handle().Write(Ask(1));
  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  track = tracking.track(0);
  ASSERT_NE(track, nullptr);
  ASSERT_TRUE(fake.keepalive(0)->WaitForRequests(1, kWait));
  fake.keepalive(0)->Finish(api::EtcdStatus(api::EtcdError::kNoLeader));
  ASSERT_TRUE(client.WaitDone().has_value());
  EXPECT_FALSE(client.seen()) << "upstream stream freed inside its own OnDone";
  // Freed (by the worker) once its OnDone has returned.
  EXPECT_TRUE(testutil::WaitFor(destroyed, std::chrono::seconds(30)));
}

// One warning per failure streak (not per retry), info when it recovers.
TEST_F(LeaseCoalescingBackendTest, UpstreamFailureStreakLogsOneWarningAndRecovery) {
  std::ostringstream out;
  common::SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  const std::string failed = "lease keep-alive upstream stream failed; reopening it";
  const std::string recovered = "lease keep-alive upstream stream recovered";
  TestClient a;
  a.Open(*backend_);
  a.handle().Write(Ask(1));
  // Every log line is written on the thread that ends the stream (this one).
  for (size_t i = 0; i < 4; ++i) {
    std::shared_ptr<FakeKeepAlive> up = Upstream(i, 1);
    ASSERT_NE(up, nullptr);
    up->Finish(absl::UnavailableError("connection refused"));
    ASSERT_TRUE(up->WaitForDone(kWait));
  }
  std::shared_ptr<FakeKeepAlive> up = Upstream(4, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(1, 10));
  ASSERT_TRUE(a.WaitResponses(1));
  // A new streak warns again.
  a.handle().Write(Ask(1));
  ASSERT_TRUE(up->WaitForRequests(2, kWait));
  up->Finish(absl::UnavailableError("connection reset"));
  ASSERT_TRUE(up->WaitForDone(kWait));
  std::shared_ptr<FakeKeepAlive> next = Upstream(5, 1);
  ASSERT_NE(next, nullptr);
  next->Push(Answer(1, 10));
  ASSERT_TRUE(a.WaitResponses(2));
  a.Close();
  ASSERT_TRUE(a.WaitDone().has_value());
  backend_.reset();
  common::SetLogSinkForTest(nullptr);

  const std::string log = out.str();
  EXPECT_EQ(testutil::CountOf(log, failed), 2u) << log;
  EXPECT_EQ(testutil::CountOf(log, recovered), 2u) << log;
  EXPECT_NE(log.find("connection refused"), std::string::npos) << log;
  EXPECT_NE(log.find("connection reset"), std::string::npos) << log;
  EXPECT_NE(log.find("\"level\":\"warn\""), std::string::npos) << log;
  EXPECT_LT(log.find(failed), log.find(recovered)) << log;
}

// Clients that retry after `etcdserver: no leader` do not make one warning
// per attempt.
TEST_F(LeaseCoalescingBackendTest, NoLeaderWarningIsLoggedOncePerOutage) {
  std::ostringstream out;
  common::SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  const std::string no_leader = "etcd has no leader; ending require-leader keep-alive streams";
  const std::string recovered = "lease keep-alive upstream stream recovered";
  for (size_t attempt = 0; attempt < 3; ++attempt) {
    TestClient client;
    client.Open(*backend_, RequireLeader());
    client.handle().Write(Ask(1));
    std::shared_ptr<FakeKeepAlive> up = Upstream(attempt, 1);
    ASSERT_NE(up, nullptr);
    up->Finish(api::EtcdStatus(api::EtcdError::kNoLeader));
    ASSERT_TRUE(client.WaitDone().has_value());
    ASSERT_TRUE(up->WaitForDone(kWait));
  }
  TestClient client;
  client.Open(*backend_, RequireLeader());
  client.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> up = Upstream(3, 1);
  ASSERT_NE(up, nullptr);
  up->Push(Answer(1, 10));
  ASSERT_TRUE(client.WaitResponses(1));
  client.Close();
  ASSERT_TRUE(client.WaitDone().has_value());
  backend_.reset();
  common::SetLogSinkForTest(nullptr);

  const std::string log = out.str();
  EXPECT_EQ(testutil::CountOf(log, no_leader), 1u) << log;
  EXPECT_EQ(testutil::CountOf(log, recovered), 1u) << log;
}

TEST_F(LeaseCoalescingBackendTest, DestructionCancelsUpstreamAndWaitsForItsOnDone) {
  TestClient a;
  a.Open(*backend_);
  a.handle().Write(Ask(1));
  std::shared_ptr<FakeKeepAlive> up = Upstream(0, 1);
  ASSERT_NE(up, nullptr);
  a.Close();  // the chain is destroyed after every client stream ended
  ASSERT_TRUE(a.WaitDone().has_value());
  backend_.reset();
  EXPECT_TRUE(up->cancelled());
  EXPECT_TRUE(up->done());
  EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 0);
}

TEST_F(LeaseCoalescingBackendTest, DestructionDuringBackoffIsClean) {
  TestClient a;
  a.Open(*backend_);
  a.handle().Write(Ask(1));
  // Every open fails at once: the glue keeps reopening with a growing delay.
  for (size_t i = 0; i < 4; ++i) {
    std::shared_ptr<FakeKeepAlive> up = Upstream(i, 1);
    ASSERT_NE(up, nullptr);
    up->Finish(absl::UnavailableError("connection refused"));
  }
  a.Close();
  ASSERT_TRUE(a.WaitDone().has_value());
  backend_.reset();
  const size_t opened = fake_.keepalive_count();
  for (size_t i = 0; i < opened; ++i) EXPECT_TRUE(fake_.keepalive(i)->done()) << i;
}

TEST(LeaseCoalescingBackendNoMetrics, WorksWithoutARegistry) {
  FakeBackend fake;
  LeaseCoalescingBackend backend(fake, nullptr);
  TestClient a;
  a.Open(backend);
  a.handle().Write(Ask(1));
  ASSERT_TRUE(fake.WaitForKeepAlives(1, kWait));
  std::shared_ptr<FakeKeepAlive> up = fake.keepalive(0);
  ASSERT_TRUE(up->WaitForRequests(1, kWait));
  up->Push(Answer(1, 5));
  ASSERT_TRUE(a.WaitResponses(1));
  a.Close();
}

}  // namespace
}  // namespace keel::coalesce
