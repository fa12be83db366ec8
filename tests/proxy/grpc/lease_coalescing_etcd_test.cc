// LeaseCoalescingBackend over RemoteBackend against a real etcd 3.4 member:
// one upstream stream for many clients (etcd's own gRPC metrics), lease
// lifetime equal to etcd's own, revoke/unknown leases, half-close, and an
// etcd restart. Where it applies, the same operation is done directly on
// etcd and the results compared.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "api/errors.h"
#include "api/server/front.h"
#include "coalesce/lease_coalescing_backend.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "proxy/grpc/remote_backend.h"
#include "tests/testutil/await.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"
#include "tests/testutil/stream_recorder.h"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::LeaseKeepAliveRequest;
using ::etcdserverpb::LeaseKeepAliveResponse;
using ::keel::proxy::grpcproxy::RemoteBackend;
using ::keel::proxy::grpcproxy::RemoteOptions;
using ::keel::testutil::EtcdCluster;
using ::keel::testutil::EtcdGrpcMetric;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(60);

using ::keel::testutil::Await;

absl::StatusOr<int64_t> Grant(api::Backend& backend, int64_t ttl) {
  etcdserverpb::LeaseGrantRequest req;
  req.set_ttl(ttl);
  auto resp = Await<etcdserverpb::LeaseGrantResponse>(
      [&](auto done) { backend.LeaseGrant({}, std::move(req), std::move(done)); });
  if (!resp.ok()) return resp.status();
  if (!resp->error().empty()) return absl::InternalError(resp->error());
  return resp->id();
}

// TimeToLive's TTL: -1 once etcd has revoked the lease.
absl::StatusOr<int64_t> TimeToLive(api::Backend& backend, int64_t lease_id) {
  etcdserverpb::LeaseTimeToLiveRequest req;
  req.set_id(lease_id);
  auto resp = Await<etcdserverpb::LeaseTimeToLiveResponse>(
      [&](auto done) { backend.LeaseTimeToLive({}, std::move(req), std::move(done)); });
  if (!resp.ok()) return resp.status();
  return resp->ttl();
}

absl::Status Revoke(api::Backend& backend, int64_t lease_id) {
  etcdserverpb::LeaseRevokeRequest req;
  req.set_id(lease_id);
  return Await<etcdserverpb::LeaseRevokeResponse>(
             [&](auto done) { backend.LeaseRevoke({}, std::move(req), std::move(done)); })
      .status();
}

LeaseKeepAliveRequest Ask(int64_t lease_id) {
  LeaseKeepAliveRequest r;
  r.set_id(lease_id);
  return r;
}

// One keep-alive stream of `backend` that always asks for the next reply, as
// the front does. Destruction cancels it and waits for its OnDone.
class KeepAliveClient
    : public testutil::StreamRecorder<LeaseKeepAliveRequest, LeaseKeepAliveResponse> {
 public:
  explicit KeepAliveClient(api::Backend& backend, api::CallContext ctx = {})
      : StreamRecorder([&](StreamRecorder* self) { return backend.LeaseKeepAlive(ctx, self); }) {}

  void Write(int64_t lease_id) { stream().Write(Ask(lease_id)); }
  void WritesDone() { stream().WritesDone(); }
  std::optional<LeaseKeepAliveResponse> Response(size_t i, absl::Duration wait = kWait) {
    return Get(i, wait);
  }
};

RemoteOptions OptionsFor(const std::string& endpoint) {
  RemoteOptions options;
  options.endpoints = {endpoint};
  return options;
}

// One etcd member shared by the tests that leave no state others depend on.
class LeaseCoalescingEtcdTest : public ::testing::Test {
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
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    remote_.emplace(OptionsFor(cluster_->ClientAddr(0)));
    coalescing_.emplace(*remote_, &metrics_);
  }
  void TearDown() override {
    // The chain front-first: every client stream has ended by now.
    coalescing_.reset();
    remote_.reset();
  }

  std::optional<double> Metric(const std::string& name) {
    return EtcdGrpcMetric(cluster_->ClientPort(0), name, "LeaseKeepAlive");
  }
  uint64_t Counter(const std::string& name) { return metrics_.GetCounter(name, "")->Value(); }
  int64_t Gauge(const std::string& name) { return metrics_.GetGauge(name, "")->Value(); }
  void FiftyClientsOneUpstreamStream(const api::CallContext& ctx);

  static EtcdCluster* cluster_;
  common::MetricsRegistry metrics_;
  std::optional<RemoteBackend> remote_;
  std::optional<LeaseCoalescingBackend> coalescing_;
};
EtcdCluster* LeaseCoalescingEtcdTest::cluster_ = nullptr;

// 50 client streams (all with `ctx`) keeping one lease alive for three
// rounds cost etcd exactly one LeaseKeepAlive stream.
void LeaseCoalescingEtcdTest::FiftyClientsOneUpstreamStream(const api::CallContext& ctx) {
  constexpr int kClients = 50;
  constexpr int kRounds = 3;
  auto lease = Grant(*remote_, 60);
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::optional<double> started_before = Metric("grpc_server_started_total");
  std::optional<double> received_before = Metric("grpc_server_msg_received_total");
  ASSERT_TRUE(started_before.has_value());
  ASSERT_TRUE(received_before.has_value());

  {
    std::vector<std::unique_ptr<KeepAliveClient>> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.push_back(std::make_unique<KeepAliveClient>(*coalescing_, ctx));
    }
    for (int round = 0; round < kRounds; ++round) {
      for (auto& c : clients) c->Write(*lease);
      for (int i = 0; i < kClients; ++i) {
        std::optional<LeaseKeepAliveResponse> r = clients[i]->Response(round);
        ASSERT_TRUE(r.has_value()) << "client " << i << " round " << round;
        EXPECT_EQ(r->id(), *lease);
        EXPECT_GT(r->ttl(), 0);
        EXPECT_LE(r->ttl(), 60);
        EXPECT_GT(r->header().cluster_id(), 0u);
        EXPECT_GT(r->header().revision(), 0);
      }
    }
    EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), kClients);
    EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 1);
    for (auto& c : clients) EXPECT_EQ(c->count(), static_cast<size_t>(kRounds));
  }

  // Every request written upstream has been answered, so etcd has counted it.
  std::optional<double> started_after = Metric("grpc_server_started_total");
  std::optional<double> received_after = Metric("grpc_server_msg_received_total");
  ASSERT_TRUE(started_after.has_value());
  ASSERT_TRUE(received_after.has_value());
  EXPECT_EQ(*started_after - *started_before, 1.0);
  const double received = *received_after - *received_before;
  const uint64_t client_requests = Counter("keel_lease_keepalive_client_requests_total");
  const uint64_t upstream_requests = Counter("keel_lease_keepalive_upstream_requests_total");
  RecordProperty("etcd_keepalive_msgs_received", std::to_string(received));
  RecordProperty("client_requests", std::to_string(client_requests));
  EXPECT_EQ(client_requests, static_cast<uint64_t>(kClients * kRounds));
  EXPECT_GE(received, kRounds);  // one per round at least: nothing is answered from nowhere
  EXPECT_LE(received, static_cast<double>(client_requests));
  EXPECT_EQ(received, static_cast<double>(upstream_requests));
  EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), 0);
}

TEST_F(LeaseCoalescingEtcdTest, FiftyClientsOneUpstreamStream) {
  FiftyClientsOneUpstreamStream({});
}

// clientv3 always keeps leases alive with "hasleader": those are coalesced too.
TEST_F(LeaseCoalescingEtcdTest, FiftyRequireLeaderClientsOneUpstreamStream) {
  api::CallContext ctx;
  ctx.require_leader = true;
  FiftyClientsOneUpstreamStream(ctx);
}

// What polling TimeToLive of one lease until etcd revoked it (TTL -1) saw:
// when the last poll that still found it was sent, and when the first that
// did not was answered (so the lease existed at the former and was gone by
// the latter).
struct Lifetime {
  absl::Time last_found = absl::InfinitePast();
  absl::Time first_gone = absl::InfiniteFuture();
  absl::Status error;
};

TEST_F(LeaseCoalescingEtcdTest, LeaseLivesTtlAfterTheLastKeepAliveLikeEtcdDirect) {
  // etcd 3.4's minimum TTL is 2 s (1.5 election timeouts, rounded up); 5 s
  // leaves a margin of 1 s on each side.
  constexpr int64_t kTtl = 5;
  auto ours = Grant(*remote_, kTtl);
  auto direct = Grant(*remote_, kTtl);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(direct.ok()) << direct.status();

  // One keep-alive each, streams left open: through us and directly on etcd.
  KeepAliveClient through_us(*coalescing_);
  KeepAliveClient on_etcd(*remote_);
  const absl::Time t0_ours = absl::Now();
  through_us.Write(*ours);
  const absl::Time t0_direct = absl::Now();
  on_etcd.Write(*direct);
  std::optional<LeaseKeepAliveResponse> r1 = through_us.Response(0);
  std::optional<LeaseKeepAliveResponse> r2 = on_etcd.Response(0);
  ASSERT_TRUE(r1.has_value());
  ASSERT_TRUE(r2.has_value());
  EXPECT_EQ(r1->ttl(), kTtl);
  EXPECT_EQ(r2->ttl(), kTtl);

  Lifetime life_ours;
  Lifetime life_direct;
  auto poll = [&](int64_t id, Lifetime& life) {
    if (life.first_gone != absl::InfiniteFuture()) return;
    const absl::Time sent = absl::Now();
    absl::StatusOr<int64_t> ttl = TimeToLive(*remote_, id);
    if (!ttl.ok()) {
      life.error = ttl.status();
    } else if (*ttl == -1) {
      life.first_gone = absl::Now();
    } else {
      life.last_found = sent;
    }
  };
  const bool both_gone = testutil::WaitFor(
      [&] {
        poll(*ours, life_ours);
        poll(*direct, life_direct);
        return !life_ours.error.ok() || !life_direct.error.ok() ||
               (life_ours.first_gone != absl::InfiniteFuture() &&
                life_direct.first_gone != absl::InfiniteFuture());
      },
      std::chrono::seconds(60));
  ASSERT_TRUE(life_ours.error.ok()) << life_ours.error;
  ASSERT_TRUE(life_direct.error.ok()) << life_direct.error;
  ASSERT_TRUE(both_gone) << "a lease outlived its TTL by far";

  // Refreshed after t0, so etcd cannot revoke it before t0 + TTL: it was
  // still there at t0 + TTL - 1 s (a poll was sent at or after that and found it).
  const absl::Duration ttl = absl::Seconds(kTtl);
  EXPECT_GE(life_ours.last_found - t0_ours, ttl - absl::Seconds(1));
  EXPECT_GE(life_direct.last_found - t0_direct, ttl - absl::Seconds(1));
  // Gone by t0 + TTL + 1 s, or at most 1 s after the lease kept alive directly
  // on etcd (etcd revokes expired leases from a 500 ms loop, through Raft, so
  // a loaded box may be late for both alike). etcd's proxy keeps it ~2x TTL.
  const absl::Duration gone_ours = life_ours.first_gone - t0_ours;
  const absl::Duration gone_direct = life_direct.first_gone - t0_direct;
  RecordProperty("gone_after_ms_ours", std::to_string(absl::ToInt64Milliseconds(gone_ours)));
  RecordProperty("gone_after_ms_direct", std::to_string(absl::ToInt64Milliseconds(gone_direct)));
  EXPECT_LE(gone_ours, std::max(ttl + absl::Seconds(1), gone_direct + absl::Seconds(1)))
      << "ours gone after " << gone_ours << ", direct after " << gone_direct;
  EXPECT_GE(gone_ours, ttl);
  // Nothing refreshed it behind the client's back.
  EXPECT_EQ(through_us.count(), 1u);
}

TEST_F(LeaseCoalescingEtcdTest, RevokedAndUnknownLeasesAnswerTtlZeroLikeEtcd) {
  auto lease = Grant(*remote_, 60);
  ASSERT_TRUE(lease.ok()) << lease.status();
  constexpr int kClients = 5;
  std::vector<std::unique_ptr<KeepAliveClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<KeepAliveClient>(*coalescing_));
    clients.back()->Write(*lease);
  }
  for (int i = 0; i < kClients; ++i) {
    std::optional<LeaseKeepAliveResponse> r = clients[i]->Response(0);
    ASSERT_TRUE(r.has_value()) << i;
    EXPECT_GT(r->ttl(), 0);
  }
  ASSERT_TRUE(Revoke(*remote_, *lease).ok());

  KeepAliveClient on_etcd(*remote_);
  on_etcd.Write(*lease);
  std::optional<LeaseKeepAliveResponse> expected = on_etcd.Response(0);
  ASSERT_TRUE(expected.has_value());
  EXPECT_EQ(expected->ttl(), 0);
  for (auto& c : clients) c->Write(*lease);
  for (int i = 0; i < kClients; ++i) {
    std::optional<LeaseKeepAliveResponse> r = clients[i]->Response(1);
    ASSERT_TRUE(r.has_value()) << i;
    EXPECT_EQ(r->id(), expected->id());
    EXPECT_EQ(r->ttl(), expected->ttl());
    EXPECT_EQ(r->header().cluster_id(), expected->header().cluster_id());
    EXPECT_EQ(r->header().member_id(), expected->header().member_id());
  }

  // A lease that never existed.
  constexpr int64_t kUnknown = 0x7e57c0a1e5ce;
  on_etcd.Write(kUnknown);
  clients[0]->Write(kUnknown);
  expected = on_etcd.Response(1);
  std::optional<LeaseKeepAliveResponse> got = clients[0]->Response(2);
  ASSERT_TRUE(expected.has_value());
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->id(), kUnknown);
  EXPECT_EQ(got->id(), expected->id());
  EXPECT_EQ(got->ttl(), 0);
  EXPECT_EQ(got->ttl(), expected->ttl());
}

TEST_F(LeaseCoalescingEtcdTest, HalfCloseAfterOneRequestGetsItsReplyThenOkLikeEtcd) {
  auto lease = Grant(*remote_, 60);
  ASSERT_TRUE(lease.ok()) << lease.status();
  KeepAliveClient through_us(*coalescing_);
  KeepAliveClient on_etcd(*remote_);
  through_us.Write(*lease);
  through_us.WritesDone();
  on_etcd.Write(*lease);
  on_etcd.WritesDone();

  std::optional<absl::Status> ours = through_us.WaitDone();
  std::optional<absl::Status> theirs = on_etcd.WaitDone();
  ASSERT_TRUE(ours.has_value());
  ASSERT_TRUE(theirs.has_value());
  EXPECT_TRUE(theirs->ok()) << *theirs;
  EXPECT_EQ(ours->code(), theirs->code()) << *ours;
  ASSERT_EQ(through_us.count(), 1u);
  ASSERT_EQ(on_etcd.count(), 1u);
  std::optional<LeaseKeepAliveResponse> r = through_us.Response(0);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->id(), *lease);
  EXPECT_GT(r->ttl(), 0);
}

// Front over the coalescing chain on a local port: real clients (etcdctl,
// python3-etcd3) keep leases alive through it exactly as directly on etcd.
TEST_F(LeaseCoalescingEtcdTest, RealClientsThroughFrontMatchEtcdDirect) {
  common::MetricsRegistry front_metrics;
  api::server::Front front(*coalescing_, api::server::FrontOptions{&front_metrics});
  const std::string address = "127.0.0.1:" + std::to_string(testutil::FreePort());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  front.Register(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string etcd = cluster_->ClientAddr(0);

  auto lease = Grant(*remote_, 60);
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::string hex = absl::StrCat(absl::Hex(*lease, absl::kZeroPad16));  // as etcdctl prints

  // etcdctl's keep-alive --once (one request, one reply, then it cancels).
  testutil::CommandResult ours =
      EtcdCluster::Etcdctl(address, {"lease", "keep-alive", "--once", hex});
  testutil::CommandResult theirs =
      EtcdCluster::Etcdctl(etcd, {"lease", "keep-alive", "--once", hex});
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << ours.err << " vs " << theirs.err;
  EXPECT_NE(ours.out.find("lease " + hex + " keepalived with TTL("), std::string::npos) << ours.out;

  // python3-etcd3's refresh_lease sends one request and half-closes: exactly
  // one reply, then a clean end (etcd's proxy fails it, #9751).
  const std::string script =
      "import etcd3, sys\n"
      "c = etcd3.client(host='127.0.0.1', port=int(sys.argv[1]))\n"
      "rs = list(c.refresh_lease(int(sys.argv[2])))\n"
      "print(len(rs), rs[0].ID == int(sys.argv[2]), rs[0].TTL > 0)\n";
  auto run_python = [&](const std::string& addr) {
    const std::string port = addr.substr(addr.rfind(':') + 1);
    return testutil::RunCommand({"/usr/bin/python3", "-c", script, port, std::to_string(*lease)});
  };
  testutil::CommandResult py_ours = run_python(address);
  testutil::CommandResult py_theirs = run_python(etcd);
  EXPECT_EQ(py_ours.exit_code, 0) << py_ours.err;
  EXPECT_EQ(py_ours.out, "1 True True\n") << py_ours.err;
  EXPECT_EQ(py_ours.out, py_theirs.out) << py_theirs.err;

  // A revoked lease: etcdctl fails the same way through us as on etcd.
  ASSERT_TRUE(Revoke(*remote_, *lease).ok());
  ours = EtcdCluster::Etcdctl(address, {"lease", "keep-alive", "--once", hex});
  theirs = EtcdCluster::Etcdctl(etcd, {"lease", "keep-alive", "--once", hex});
  EXPECT_NE(theirs.exit_code, 0);
  EXPECT_EQ(ours.exit_code, theirs.exit_code);
  EXPECT_EQ(ours.out, theirs.out);
  EXPECT_EQ(ours.err, theirs.err);

  EXPECT_GE(Counter("keel_lease_keepalive_client_requests_total"), 3u);
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  EXPECT_TRUE(testutil::WaitFor([&] { return Gauge("keel_lease_keepalive_client_streams") == 0; },
                                std::chrono::seconds(60)));
}

// Long-running `etcdctl lease keep-alive` processes (clientv3's lessor: its
// keep-alive stream carries "hasleader") through Front: all of them together
// cost etcd one LeaseKeepAlive stream.
TEST_F(LeaseCoalescingEtcdTest, EtcdctlKeepAliveProcessesShareOneUpstreamStream) {
  common::MetricsRegistry front_metrics;
  api::server::Front front(*coalescing_, api::server::FrontOptions{&front_metrics});
  const std::string address = "127.0.0.1:" + std::to_string(testutil::FreePort());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  front.Register(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  auto lease = Grant(*remote_, 60);
  ASSERT_TRUE(lease.ok()) << lease.status();
  const std::string hex = absl::StrCat(absl::Hex(*lease, absl::kZeroPad16));
  std::optional<double> started_before = Metric("grpc_server_started_total");
  ASSERT_TRUE(started_before.has_value());

  constexpr int kProcesses = 4;
  testutil::TempDir dir;
  {
    std::vector<std::unique_ptr<testutil::Subprocess>> etcdctls;
    for (int i = 0; i < kProcesses; ++i) {
      etcdctls.push_back(std::make_unique<testutil::Subprocess>(
          std::vector<std::string>{"/usr/bin/etcdctl", "--endpoints=" + address,
                                   "--dial-timeout=5s", "lease", "keep-alive", hex},
          dir.File("etcdctl" + std::to_string(i) + ".log"),
          std::map<std::string, std::string>{{"ETCDCTL_API", "3"}}));
    }
    for (int i = 0; i < kProcesses; ++i) {
      EXPECT_TRUE(etcdctls[i]->WaitForLog("lease " + hex + " keepalived with TTL(",
                                          std::chrono::seconds(60)))
          << etcdctls[i]->Log();
      EXPECT_TRUE(etcdctls[i]->Running()) << etcdctls[i]->Log();
    }
    EXPECT_EQ(Gauge("keel_lease_keepalive_client_streams"), kProcesses);
    EXPECT_EQ(Gauge("keel_lease_keepalive_upstream_streams"), 1);
    std::optional<double> started_after = Metric("grpc_server_started_total");
    ASSERT_TRUE(started_after.has_value());
    EXPECT_EQ(*started_after - *started_before, 1.0);
    for (auto& p : etcdctls) p->Kill();
  }
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  EXPECT_TRUE(testutil::WaitFor([&] { return Gauge("keel_lease_keepalive_client_streams") == 0; },
                                std::chrono::seconds(60)));
  ASSERT_TRUE(Revoke(*remote_, *lease).ok());
}

// A member that loses its quorum ends every require-leader keep-alive stream
// with `etcdserver: no leader`: through us exactly as directly; streams
// without require_leader stay open and work once the quorum is back.
TEST(LeaseCoalescingEtcdNoLeaderTest, RequireLeaderClientsEndWithNoLeaderLikeEtcdDirect) {
  EtcdCluster::Options options;
  options.members = 3;
  EtcdCluster cluster(options);
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  common::MetricsRegistry metrics;
  std::optional<RemoteBackend> remote(std::in_place, OptionsFor(cluster.ClientAddr(0)));
  std::optional<LeaseCoalescingBackend> coalescing(std::in_place, *remote, &metrics);
  auto lease = Grant(*remote, 120);
  ASSERT_TRUE(lease.ok()) << lease.status();

  {
    api::CallContext require_leader;
    require_leader.require_leader = true;
    KeepAliveClient ours_a(*coalescing, require_leader);
    KeepAliveClient ours_b(*coalescing, require_leader);
    KeepAliveClient ours_plain(*coalescing);
    KeepAliveClient direct(*remote, require_leader);
    for (KeepAliveClient* c : {&ours_a, &ours_b, &ours_plain, &direct}) {
      c->Write(*lease);
      std::optional<LeaseKeepAliveResponse> r = c->Response(0);
      ASSERT_TRUE(r.has_value());
      EXPECT_GT(r->ttl(), 0);
    }

    cluster.Stop(1);
    cluster.Stop(2);
    std::optional<absl::Status> expected = direct.WaitDone();
    ASSERT_TRUE(expected.has_value()) << "etcd did not end its require-leader stream";
    EXPECT_EQ(api::ParseEtcdError(*expected), std::optional(api::EtcdError::kNoLeader))
        << *expected;
    for (KeepAliveClient* c : {&ours_a, &ours_b}) {
      std::optional<absl::Status> status = c->WaitDone();
      ASSERT_TRUE(status.has_value());
      EXPECT_EQ(*status, *expected);
      EXPECT_EQ(c->count(), 1u);
    }
    EXPECT_FALSE(ours_plain.WaitDone(absl::ZeroDuration()).has_value());

    cluster.Restart(1);
    cluster.Restart(2);
    ASSERT_TRUE(cluster.WaitWritable(0)) << cluster.Log(0);
    ours_plain.Write(*lease);
    std::optional<LeaseKeepAliveResponse> r = ours_plain.Response(1, absl::Seconds(120));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->id(), *lease);
    EXPECT_GT(r->ttl(), 0);
  }
  EXPECT_EQ(metrics.GetGauge("keel_lease_keepalive_client_streams", "")->Value(), 0);
  coalescing.reset();
  remote.reset();
}

// Restarting etcd changes the member: its own cluster.
TEST(LeaseCoalescingEtcdRestartTest, KeepAliveIsAnsweredAfterEtcdRestart) {
  EtcdCluster cluster;
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  common::MetricsRegistry metrics;
  std::optional<RemoteBackend> remote(std::in_place, OptionsFor(cluster.ClientAddr(0)));
  std::optional<LeaseCoalescingBackend> coalescing(std::in_place, *remote, &metrics);
  auto lease = Grant(*remote, 120);
  ASSERT_TRUE(lease.ok()) << lease.status();

  {
    KeepAliveClient client(*coalescing);
    client.Write(*lease);
    std::optional<LeaseKeepAliveResponse> r = client.Response(0);
    ASSERT_TRUE(r.has_value());
    EXPECT_GT(r->ttl(), 0);

    // A request made while etcd is down waits, and is answered once it is
    // back; the client stream never fails.
    cluster.Stop(0);
    client.Write(*lease);
    cluster.Restart(0);
    ASSERT_TRUE(cluster.WaitWritable(0)) << cluster.Log(0);
    r = client.Response(1, absl::Seconds(120));
    ASSERT_TRUE(r.has_value()) << cluster.Log(0);
    EXPECT_EQ(r->id(), *lease);
    EXPECT_GT(r->ttl(), 0);

    // And the next one too, on the new upstream stream.
    client.Write(*lease);
    r = client.Response(2);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->id(), *lease);
    EXPECT_GT(r->ttl(), 0);

    // A restart while nothing waits: the next keep-alive is answered too.
    cluster.Stop(0);
    cluster.Restart(0);
    ASSERT_TRUE(cluster.WaitWritable(0)) << cluster.Log(0);
    client.Write(*lease);
    r = client.Response(3, absl::Seconds(120));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->id(), *lease);
    EXPECT_GT(r->ttl(), 0);
    EXPECT_EQ(client.count(), 4u);
  }
  EXPECT_EQ(metrics.GetGauge("keel_lease_keepalive_client_streams", "")->Value(), 0);
  coalescing.reset();
  remote.reset();
}

}  // namespace
}  // namespace keel::coalesce
