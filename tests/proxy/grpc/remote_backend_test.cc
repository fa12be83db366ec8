// RemoteBackend against real etcd 3.4 members: pass-through of etcd's codes
// and messages, metadata forwarding, failover and the stream contract.

#include "proxy/grpc/remote_backend.h"

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "api/errors.h"
#include "gtest/gtest.h"
#include "tests/testutil/await.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::keel::api::CallContext;
using ::keel::api::EtcdError;
using ::keel::api::EtcdStatus;
using ::keel::testutil::EtcdCluster;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(60);

using ::keel::testutil::Await;

// Records what a stream delivers. Thread-safe.
template <class Response>
class RecordingObserver : public api::StreamObserver<Response> {
 public:
  void OnResponse(Response response) override {
    absl::MutexLock lock(&mu_);
    responses_.push_back(std::move(response));
    ++total_;
  }
  void OnDone(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(done_.has_value()) << "OnDone ran twice";
    done_ = std::move(status);
  }

  // Waits until at least `n` responses arrived in all; false on timeout.
  bool WaitTotal(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), kWait);
  }
  // Removes and returns the oldest undelivered response, waiting for it.
  std::optional<Response> Next() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !responses_.empty() || done_.has_value();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
    if (responses_.empty()) return std::nullopt;
    Response r = std::move(responses_.front());
    responses_.pop_front();
    return r;
  }
  // Waits for OnDone and returns its status.
  std::optional<absl::Status> WaitDone() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
    return done_;
  }
  int total() {
    absl::MutexLock lock(&mu_);
    return total_;
  }
  bool done() {
    absl::MutexLock lock(&mu_);
    return done_.has_value();
  }

 private:
  absl::Mutex mu_;
  std::deque<Response> responses_ ABSL_GUARDED_BY(mu_);
  int total_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
};

RemoteOptions OptionsFor(std::vector<std::string> endpoints) {
  RemoteOptions options;
  options.endpoints = std::move(endpoints);
  return options;
}

absl::StatusOr<etcdserverpb::PutResponse> Put(RemoteBackend& backend, const std::string& key,
                                              const std::string& value,
                                              const CallContext& ctx = {}) {
  etcdserverpb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  return Await<etcdserverpb::PutResponse>(
      [&](auto done) { backend.Put(ctx, std::move(req), std::move(done)); });
}

absl::StatusOr<etcdserverpb::RangeResponse> Get(RemoteBackend& backend, const std::string& key,
                                                int64_t revision = 0, const CallContext& ctx = {}) {
  etcdserverpb::RangeRequest req;
  req.set_key(key);
  req.set_revision(revision);
  return Await<etcdserverpb::RangeResponse>(
      [&](auto done) { backend.Range(ctx, std::move(req), std::move(done)); });
}

// One etcd member shared by the tests that do not change cluster-wide state.
class RemoteBackendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new EtcdCluster();
    std::string error;
    ASSERT_TRUE(cluster_->Start(&error)) << error;
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(cluster_, nullptr); }

  RemoteOptions Options() const { return OptionsFor({cluster_->ClientAddr(0)}); }

  static EtcdCluster* cluster_;
};
EtcdCluster* RemoteBackendTest::cluster_ = nullptr;

TEST_F(RemoteBackendTest, PutRangeTxnRoundTrip) {
  RemoteBackend backend(Options());
  auto put = Put(backend, "rt/a", "1");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_GT(put->header().revision(), 0);

  auto got = Get(backend, "rt/a");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs_size(), 1);
  EXPECT_EQ(got->kvs(0).value(), "1");
  EXPECT_EQ(got->kvs(0).mod_revision(), put->header().revision());

  etcdserverpb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key("rt/a");
  cmp->set_target(etcdserverpb::Compare::VALUE);
  cmp->set_result(etcdserverpb::Compare::EQUAL);
  cmp->set_value("1");
  auto* op = txn.add_success()->mutable_request_put();
  op->set_key("rt/b");
  op->set_value("2");
  auto txn_resp = Await<etcdserverpb::TxnResponse>(
      [&](auto done) { backend.Txn({}, std::move(txn), std::move(done)); });
  ASSERT_TRUE(txn_resp.ok()) << txn_resp.status();
  EXPECT_TRUE(txn_resp->succeeded());

  auto b = Get(backend, "rt/b");
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->kvs_size(), 1);
  EXPECT_EQ(b->kvs(0).value(), "2");
  EXPECT_EQ(backend.CurrentEndpoint(), cluster_->ClientAddr(0));
}

TEST_F(RemoteBackendTest, EtcdErrorsPassThroughWithCodeAndMessage) {
  RemoteBackend backend(Options());
  auto first = Put(backend, "err/k", "v1");
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Put(backend, "err/k", "v2");
  ASSERT_TRUE(second.ok()) << second.status();

  etcdserverpb::CompactionRequest compact;
  compact.set_revision(second->header().revision());
  auto compacted = Await<etcdserverpb::CompactionResponse>(
      [&](auto done) { backend.Compact({}, std::move(compact), std::move(done)); });
  ASSERT_TRUE(compacted.ok()) << compacted.status();

  EXPECT_EQ(Get(backend, "err/k", first->header().revision()).status(),
            EtcdStatus(EtcdError::kCompacted));
  EXPECT_EQ(Get(backend, "err/k", second->header().revision() + 100000).status(),
            EtcdStatus(EtcdError::kFutureRev));
  EXPECT_EQ(Put(backend, "", "v").status(), EtcdStatus(EtcdError::kEmptyKey));

  etcdserverpb::LeaseRevokeRequest revoke;
  revoke.set_id(0x7eadbeef);
  auto revoked = Await<etcdserverpb::LeaseRevokeResponse>(
      [&](auto done) { backend.LeaseRevoke({}, std::move(revoke), std::move(done)); });
  EXPECT_EQ(revoked.status(), EtcdStatus(EtcdError::kLeaseNotFound));
}

TEST_F(RemoteBackendTest, ClientDeadlineIsTheCallDeadline) {
  RemoteBackend backend(Options());
  CallContext ctx;
  ctx.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(Get(backend, "deadline", 0, ctx).status().code(), absl::StatusCode::kDeadlineExceeded);
  // The same backend still serves calls with time left.
  ctx.deadline = absl::Now() + kWait;
  EXPECT_TRUE(Get(backend, "deadline", 0, ctx).ok());
}

TEST_F(RemoteBackendTest, RequestTooLargeIsRefusedUnsent) {
  RemoteBackend backend(Options());
  const std::string value(1600 * 1000, 'x');
  EXPECT_EQ(Put(backend, "big/key", value).status(), EtcdStatus(EtcdError::kRequestTooLarge));
  auto got = Get(backend, "big/key");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kvs_size(), 0);
  // Just below the limit still goes through.
  auto ok = Put(backend, "big/key", std::string(1500 * 1000, 'y'));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(RemoteBackendTest, DeadEndpointFirstIsInvisible) {
  // Nothing listens on a fresh free port.
  const std::string dead = "127.0.0.1:" + std::to_string(testutil::FreePort());
  RemoteBackend backend(OptionsFor({dead, cluster_->ClientAddr(0)}));
  EXPECT_EQ(backend.CurrentEndpoint(), dead);
  // A write is safe to move on: the dead endpoint never received it.
  auto put = Put(backend, "dead/k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(backend.CurrentEndpoint(), cluster_->ClientAddr(0));
  auto got = Get(backend, "dead/k");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs_size(), 1);

  // A new backend's first stream moves on as well.
  RemoteBackend fresh(OptionsFor({dead, cluster_->ClientAddr(0)}));
  RecordingObserver<etcdserverpb::WatchResponse> observer;
  auto stream = fresh.Watch({}, &observer);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("dead/k");
  stream->Write(create);
  stream->ReadNext();
  auto created = observer.Next();
  ASSERT_TRUE(created.has_value());
  EXPECT_TRUE(created->created());
  EXPECT_EQ(fresh.CurrentEndpoint(), cluster_->ClientAddr(0));
  stream->Cancel();
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
}

TEST_F(RemoteBackendTest, AllEndpointsDeadReturnsUnavailable) {
  const std::string dead1 = "127.0.0.1:" + std::to_string(testutil::FreePort());
  const std::string dead2 = "127.0.0.1:" + std::to_string(testutil::FreePort());
  RemoteBackend backend(OptionsFor({dead1, dead2}));
  EXPECT_EQ(Get(backend, "x").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Put(backend, "x", "y").status().code(), absl::StatusCode::kUnavailable);

  RecordingObserver<etcdserverpb::SnapshotResponse> observer;
  auto stream = backend.Snapshot({}, {}, &observer);
  stream->ReadNext();
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(observer.total(), 0);
}

TEST_F(RemoteBackendTest, WatchCreateEventsCancel) {
  RemoteBackend backend(Options());
  RecordingObserver<etcdserverpb::WatchResponse> observer;
  auto stream = backend.Watch({}, &observer);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("watch/k");
  stream->Write(create);
  stream->ReadNext();
  auto created = observer.Next();
  ASSERT_TRUE(created.has_value());
  ASSERT_TRUE(created->created());
  const int64_t watch_id = created->watch_id();

  ASSERT_TRUE(Put(backend, "watch/k", "v1").ok());
  ASSERT_TRUE(Put(backend, "watch/k", "v2").ok());
  std::vector<std::string> values;
  while (values.size() < 2) {
    stream->ReadNext();
    auto resp = observer.Next();
    ASSERT_TRUE(resp.has_value());
    EXPECT_EQ(resp->watch_id(), watch_id);
    for (const auto& ev : resp->events()) values.push_back(ev.kv().value());
  }
  EXPECT_EQ(values, (std::vector<std::string>{"v1", "v2"}));

  etcdserverpb::WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(watch_id);
  stream->Write(cancel);
  stream->ReadNext();
  auto canceled = observer.Next();
  ASSERT_TRUE(canceled.has_value());
  EXPECT_TRUE(canceled->canceled());
  EXPECT_EQ(canceled->watch_id(), watch_id);

  stream->Cancel();
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
}

TEST_F(RemoteBackendTest, DestroyingTheHandleCancelsTheStream) {
  RemoteBackend backend(Options());
  RecordingObserver<etcdserverpb::WatchResponse> observer;
  auto stream = backend.Watch({}, &observer);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("destroy/k");
  stream->Write(create);
  stream->ReadNext();
  ASSERT_TRUE(observer.Next().has_value());
  stream->ReadNext();  // a read is in flight when the handle goes
  stream.reset();
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
}

TEST_F(RemoteBackendTest, WatchDeliversOnlyWhatReadNextAllows) {
  RemoteBackend backend(Options());
  RecordingObserver<etcdserverpb::WatchResponse> observer;
  auto stream = backend.Watch({}, &observer);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("flow/k");
  stream->Write(create);
  // Nothing is delivered before the first ReadNext: a whole Put round trip
  // and the watch's creation on etcd happen meanwhile.
  ASSERT_TRUE(Put(backend, "flow/other", "x").ok());
  EXPECT_EQ(observer.total(), 0);
  stream->ReadNext();
  ASSERT_TRUE(observer.WaitTotal(1));

  ASSERT_TRUE(observer.Next().has_value());  // created

  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Put(backend, "flow/k", std::to_string(i)).ok());
  // etcd has produced every event by now; each ReadNext lets exactly one
  // more response through, never more, even after another round trip.
  int allowed = 1;
  int events = 0;
  while (events < 5) {
    stream->ReadNext();
    ++allowed;
    ASSERT_TRUE(observer.WaitTotal(allowed));
    ASSERT_TRUE(Get(backend, "flow/k").ok());
    EXPECT_EQ(observer.total(), allowed);
    auto resp = observer.Next();
    ASSERT_TRUE(resp.has_value());
    events += resp->events_size();
  }
  EXPECT_EQ(events, 5);
  stream->Cancel();
  ASSERT_TRUE(observer.WaitDone().has_value());
}

TEST_F(RemoteBackendTest, LeaseKeepAliveStream) {
  RemoteBackend backend(Options());
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(30);
  auto lease = Await<etcdserverpb::LeaseGrantResponse>(
      [&](auto done) { backend.LeaseGrant({}, std::move(grant), std::move(done)); });
  ASSERT_TRUE(lease.ok()) << lease.status();

  RecordingObserver<etcdserverpb::LeaseKeepAliveResponse> observer;
  auto stream = backend.LeaseKeepAlive({}, &observer);
  for (int i = 0; i < 3; ++i) {
    etcdserverpb::LeaseKeepAliveRequest req;
    req.set_id(lease->id());
    stream->Write(req);
  }
  for (int i = 0; i < 3; ++i) {
    stream->ReadNext();
    auto resp = observer.Next();
    ASSERT_TRUE(resp.has_value()) << i;
    EXPECT_EQ(resp->id(), lease->id());
    EXPECT_GT(resp->ttl(), 0);
  }
  // An unknown lease answers TTL 0 (etcd's keepalive reply for it).
  etcdserverpb::LeaseKeepAliveRequest unknown;
  unknown.set_id(0x1234567);
  stream->Write(unknown);
  stream->ReadNext();
  auto resp = observer.Next();
  ASSERT_TRUE(resp.has_value());
  EXPECT_EQ(resp->ttl(), 0);

  stream->WritesDone();
  stream->Cancel();
  ASSERT_TRUE(observer.WaitDone().has_value());
}

TEST_F(RemoteBackendTest, SnapshotStreamsToTheEndUnderFlowControl) {
  RemoteBackend backend(Options());
  ASSERT_TRUE(Put(backend, "snap/k", std::string(100 * 1000, 's')).ok());
  RecordingObserver<etcdserverpb::SnapshotResponse> observer;
  auto stream = backend.Snapshot({}, {}, &observer);
  std::vector<etcdserverpb::SnapshotResponse> all;
  uint64_t bytes = 0;
  while (true) {
    stream->ReadNext();
    auto resp = observer.Next();
    if (!resp.has_value()) break;
    bytes += resp->blob().size();
    all.push_back(std::move(*resp));
    // No more than the reads allowed, even after a round trip.
    ASSERT_TRUE(Get(backend, "snap/k").ok());
    EXPECT_EQ(observer.total(), static_cast<int>(all.size()));
  }
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->ok()) << *done;
  ASSERT_GE(all.size(), 2u);
  EXPECT_GT(bytes, 100u * 1000u);
  EXPECT_EQ(all.back().blob().size(), 32u);  // etcd's sha256 of the snapshot
  EXPECT_EQ(all.back().remaining_bytes(), 0u);
}

TEST_F(RemoteBackendTest, ObserveStreamsTheElectionLeader) {
  RemoteBackend backend(Options());
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(30);
  auto lease = Await<etcdserverpb::LeaseGrantResponse>(
      [&](auto done) { backend.LeaseGrant({}, std::move(grant), std::move(done)); });
  ASSERT_TRUE(lease.ok()) << lease.status();
  v3electionpb::CampaignRequest campaign;
  campaign.set_name("elect/x");
  campaign.set_lease(lease->id());
  campaign.set_value("me");
  auto leader = Await<v3electionpb::CampaignResponse>(
      [&](auto done) { backend.Campaign({}, std::move(campaign), std::move(done)); });
  ASSERT_TRUE(leader.ok()) << leader.status();

  RecordingObserver<v3electionpb::LeaderResponse> observer;
  v3electionpb::LeaderRequest observe;
  observe.set_name("elect/x");
  auto stream = backend.Observe({}, observe, &observer);
  stream->ReadNext();
  auto resp = observer.Next();
  ASSERT_TRUE(resp.has_value());
  EXPECT_EQ(resp->kv().value(), "me");
  stream->Cancel();
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
}

// Auth changes the whole cluster: its own member.
TEST(RemoteBackendAuthTest, TokenIsForwarded) {
  EtcdCluster cluster;
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  const std::string url = cluster.ClientUrl(0);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"user", "add", "root", "--new-user-password=rootpw",
                                 "--interactive=false"},
        std::vector<std::string>{"auth", "enable"}}) {
    auto r = EtcdCluster::Etcdctl(url, args);
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }

  RemoteBackend backend(OptionsFor({cluster.ClientAddr(0)}));
  EXPECT_EQ(Get(backend, "auth/k").status(), EtcdStatus(EtcdError::kUserEmpty));

  etcdserverpb::AuthenticateRequest auth;
  auth.set_name("root");
  auth.set_password("rootpw");
  auto token = Await<etcdserverpb::AuthenticateResponse>(
      [&](auto done) { backend.Authenticate({}, std::move(auth), std::move(done)); });
  ASSERT_TRUE(token.ok()) << token.status();
  ASSERT_FALSE(token->token().empty());

  CallContext ctx;
  ctx.token = token->token();
  auto put = Put(backend, "auth/k", "v", ctx);
  ASSERT_TRUE(put.ok()) << put.status();
  auto got = Get(backend, "auth/k", 0, ctx);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs_size(), 1);
  EXPECT_EQ(got->kvs(0).value(), "v");

  CallContext bad;
  bad.token = "not-a-token";
  EXPECT_EQ(Get(backend, "auth/k", 0, bad).status(), EtcdStatus(EtcdError::kInvalidAuthToken));

  // Streams carry the token too: a snapshot needs root.
  RecordingObserver<etcdserverpb::SnapshotResponse> observer;
  auto stream = backend.Snapshot(ctx, {}, &observer);
  while (true) {
    stream->ReadNext();
    if (!observer.Next().has_value()) break;
  }
  auto done = observer.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->ok()) << *done;
}

// A member dies under a backend that was using it: calls and new streams
// go on through the others.
TEST(RemoteBackendFailoverTest, StoppedMemberIsInvisible) {
  EtcdCluster::Options options;
  options.members = 3;
  EtcdCluster cluster(options);
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  RemoteBackend backend(
      OptionsFor({cluster.ClientAddr(0), cluster.ClientAddr(1), cluster.ClientAddr(2)}));
  ASSERT_TRUE(cluster.WaitWritable(0));
  auto put = Put(backend, "fo/k", "before");
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(backend.CurrentEndpoint(), cluster.ClientAddr(0));

  // A stream that has answered is not moved: losing its member ends it.
  RecordingObserver<etcdserverpb::WatchResponse> lost;
  auto lost_stream = backend.Watch({}, &lost);
  etcdserverpb::WatchRequest lost_create;
  lost_create.mutable_create_request()->set_key("fo/lost");
  lost_stream->Write(lost_create);
  lost_stream->ReadNext();
  auto lost_created = lost.Next();
  ASSERT_TRUE(lost_created.has_value());
  EXPECT_TRUE(lost_created->created());
  lost_stream->ReadNext();

  cluster.Stop(0);
  auto lost_done = lost.WaitDone();
  ASSERT_TRUE(lost_done.has_value());
  EXPECT_EQ(lost_done->code(), absl::StatusCode::kUnavailable) << *lost_done;
  EXPECT_EQ(lost.total(), 1);
  ASSERT_TRUE(cluster.WaitWritable(1));
  // A read moves on whatever state the old connection is in.
  auto got = Get(backend, "fo/k");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs_size(), 1);
  EXPECT_EQ(got->kvs(0).value(), "before");
  EXPECT_NE(backend.CurrentEndpoint(), cluster.ClientAddr(0));
  auto after = Put(backend, "fo/k", "after");
  ASSERT_TRUE(after.ok()) << after.status();

  // A backend that prefers the dead member opens streams elsewhere.
  RemoteBackend fresh(
      OptionsFor({cluster.ClientAddr(0), cluster.ClientAddr(1), cluster.ClientAddr(2)}));
  RecordingObserver<etcdserverpb::WatchResponse> observer;
  auto stream = fresh.Watch({}, &observer);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("fo/k");
  create.mutable_create_request()->set_start_revision(put->header().revision());
  stream->Write(create);
  stream->ReadNext();
  auto created = observer.Next();
  ASSERT_TRUE(created.has_value());
  EXPECT_TRUE(created->created());
  std::vector<std::string> values;
  while (values.size() < 2) {
    stream->ReadNext();
    auto resp = observer.Next();
    ASSERT_TRUE(resp.has_value());
    for (const auto& ev : resp->events()) values.push_back(ev.kv().value());
  }
  EXPECT_EQ(values, (std::vector<std::string>{"before", "after"}));
  stream.reset();
  ASSERT_TRUE(observer.WaitDone().has_value());

  // With a second member gone the survivor loses its leader. etcd's own
  // UNAVAILABLE "no leader" (asked for with hasleader) comes back as is: it
  // is an answer, not a reason to try the dead members.
  cluster.Stop(2);
  const std::string survivor = cluster.ClientAddr(1);
  auto serializable = [&](bool require_leader) {
    etcdserverpb::RangeRequest req;
    req.set_key("fo/k");
    req.set_serializable(true);
    CallContext ctx;
    ctx.require_leader = require_leader;
    return Await<etcdserverpb::RangeResponse>(
        [&](auto done) { backend.Range(ctx, std::move(req), std::move(done)); });
  };
  absl::Status last;
  EXPECT_TRUE(testutil::WaitFor(
      [&] {
        last = serializable(true).status();
        return last == EtcdStatus(EtcdError::kNoLeader);
      },
      std::chrono::seconds(60)))
      << last;
  EXPECT_EQ(backend.CurrentEndpoint(), survivor);
  auto without = serializable(false);
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(without->kvs_size(), 1);
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
