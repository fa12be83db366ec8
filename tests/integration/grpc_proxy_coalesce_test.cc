// `keel grpc-proxy start` in front of a real etcd: what coalescing and the
// range cache change for a user. N watchers on one key cost etcd one
// watcher, N keep-alive streams cost it one stream, and reads through the
// cache see writes made directly to etcd (by anyone, not only through this
// proxy), while every client still gets exactly what etcd would send.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "common/http_server.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;
using WatchRW = grpc::ClientReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;
using KeepAliveRW =
    grpc::ClientReaderWriter<etcdserverpb::LeaseKeepAliveRequest,
                             etcdserverpb::LeaseKeepAliveResponse>;

// The value of an unlabelled sample (or the sum of a labelled family's
// samples matching `label`) in a Prometheus text page; nullopt if absent.
std::optional<double> Sample(const std::string& page, const std::string& name,
                             const std::string& label = "") {
  std::optional<double> sum;
  size_t pos = 0;
  while ((pos = page.find(name, pos)) != std::string::npos) {
    const bool line_start = pos == 0 || page[pos - 1] == '\n';
    const size_t end = page.find('\n', pos);
    const std::string line = page.substr(pos, end - pos);
    pos = end;
    if (!line_start) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    if (!label.empty() && line.find(label) == std::string::npos) continue;
    sum = sum.value_or(0) + std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

std::optional<double> Metric(int port, const std::string& name, const std::string& label = "") {
  // common::HttpGet: etcd answers /metrics chunked.
  absl::StatusOr<common::HttpResponse> r =
      common::HttpGet(common::HostPort{"127.0.0.1", port}, "/metrics", absl::Seconds(10));
  if (!r.ok() || r->status != 200) return std::nullopt;
  return Sample(r->body, name, label);
}

class GrpcProxyCoalesceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
    proxy_ = std::make_unique<GrpcProxyProcess>(dir_, std::vector<std::string>{
                                                          "--endpoints=" + etcd_.ClientUrl(0)});
    ASSERT_TRUE(proxy_->Ready()) << proxy_->Log();
    direct_ = grpc::CreateChannel(etcd_.ClientAddr(0), grpc::InsecureChannelCredentials());
    via_ = grpc::CreateChannel(proxy_->addr(), grpc::InsecureChannelCredentials());
  }

  // etcd's count of its watchers, once it is stable at what `ok` accepts.
  double EtcdWatchers() {
    return Metric(etcd_.ClientPort(0), "etcd_debugging_mvcc_watcher_total").value_or(-1);
  }
  bool WaitForEtcdWatchers(double want) {
    return WaitFor([&] { return EtcdWatchers() == want; }, seconds(30));
  }

  int64_t Put(const std::string& key, const std::string& value) {
    grpc::ClientContext ctx;
    etcdserverpb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    etcdserverpb::PutResponse resp;
    EXPECT_TRUE(etcdserverpb::KV::NewStub(direct_)->Put(&ctx, req, &resp).ok());
    return resp.header().revision();
  }

  // Range through the proxy; the value of `key` ("" if absent).
  std::string GetViaProxy(const std::string& key, bool serializable) {
    grpc::ClientContext ctx;
    etcdserverpb::RangeRequest req;
    req.set_key(key);
    req.set_serializable(serializable);
    etcdserverpb::RangeResponse resp;
    grpc::Status s = etcdserverpb::KV::NewStub(via_)->Range(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.kvs_size() == 0 ? "" : resp.kvs(0).value();
  }

  TempDir dir_;
  EtcdCluster etcd_;
  std::unique_ptr<GrpcProxyProcess> proxy_;
  std::shared_ptr<grpc::Channel> direct_;
  std::shared_ptr<grpc::Channel> via_;
};

// One client watch stream with one watcher on `key`.
struct Watcher {
  grpc::ClientContext ctx;
  std::unique_ptr<WatchRW> stream;
  etcdserverpb::WatchResponse created;

  // Opens the stream and sends the create; its reply is left unread.
  bool Send(etcdserverpb::Watch::Stub& stub, const std::string& key) {
    stream = stub.Watch(&ctx);
    etcdserverpb::WatchRequest req;
    req.mutable_create_request()->set_key(key);
    return stream->Write(req);
  }
  bool Open(etcdserverpb::Watch::Stub& stub, const std::string& key) {
    return Send(stub, key) && stream->Read(&created) && created.created();
  }
};

TEST_F(GrpcProxyCoalesceTest, WatchersOnOneKeyCostEtcdOneWatcherAndAllSeeTheSameEvents) {
  // Settled count with the proxy idle (it may keep its own watchers, e.g.
  // the range cache's).
  ASSERT_TRUE(WaitFor([&] { return EtcdWatchers() >= 0; }, seconds(30)));
  const double idle = EtcdWatchers();

  auto stub = etcdserverpb::Watch::NewStub(via_);
  constexpr int kWatchers = 20;
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    watchers.push_back(std::make_unique<Watcher>());
    ASSERT_TRUE(watchers.back()->Open(*stub, "coalesced")) << proxy_->Log();
  }
  EXPECT_TRUE(WaitForEtcdWatchers(idle + 1)) << "etcd watchers: " << EtcdWatchers();

  // Every created header is complete and carries the current revision.
  const int64_t before = Put("unrelated", "x");
  for (auto& w : watchers) {
    EXPECT_NE(w->created.header().cluster_id(), 0u);
    EXPECT_NE(w->created.header().member_id(), 0u);
    EXPECT_GT(w->created.header().raft_term(), 0u);
    EXPECT_LT(w->created.header().revision(), before);
  }

  const int64_t rev = Put("coalesced", "v1");
  for (auto& w : watchers) {
    etcdserverpb::WatchResponse event;
    ASSERT_TRUE(w->stream->Read(&event));
    ASSERT_EQ(event.events_size(), 1);
    EXPECT_EQ(event.events(0).kv().key(), "coalesced");
    EXPECT_EQ(event.events(0).kv().value(), "v1");
    EXPECT_EQ(event.events(0).kv().mod_revision(), rev);
    EXPECT_EQ(event.header().revision(), rev);
    EXPECT_EQ(event.watch_id(), w->created.watch_id());
  }

  for (auto& w : watchers) w->ctx.TryCancel();
  for (auto& w : watchers) w->stream->Finish();
  watchers.clear();
  EXPECT_TRUE(WaitForEtcdWatchers(idle)) << "etcd watchers: " << EtcdWatchers();
}

TEST_F(GrpcProxyCoalesceTest, KeepAliveStreamsShareOneUpstreamStream) {
  grpc::ClientContext grant_ctx;
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(30);
  etcdserverpb::LeaseGrantResponse lease;
  ASSERT_TRUE(etcdserverpb::Lease::NewStub(via_)->LeaseGrant(&grant_ctx, grant, &lease).ok());

  const std::string kStarted = "grpc_server_started_total";
  const std::string kHandled = "grpc_server_handled_total";
  const std::string kMethod = "grpc_method=\"LeaseKeepAlive\"";
  auto open_upstream_streams = [&] {
    return Metric(etcd_.ClientPort(0), kStarted, kMethod).value_or(0) -
           Metric(etcd_.ClientPort(0), kHandled, kMethod).value_or(0);
  };
  const double idle = open_upstream_streams();
  const std::string kChainStreams = "keel_grpc_relay_chain_streams";
  const double idle_on_relay = ProxyMetric(*proxy_, kChainStreams).value_or(-1);

  auto stub = etcdserverpb::Lease::NewStub(via_);
  constexpr int kStreams = 10;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<KeepAliveRW>> streams;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->LeaseKeepAlive(contexts.back().get()));
    etcdserverpb::LeaseKeepAliveRequest req;
    req.set_id(lease.id());
    ASSERT_TRUE(streams.back()->Write(req));
    etcdserverpb::LeaseKeepAliveResponse reply;
    ASSERT_TRUE(streams.back()->Read(&reply)) << proxy_->Log();
    EXPECT_EQ(reply.id(), lease.id());
    EXPECT_GT(reply.ttl(), 0);
  }
  EXPECT_EQ(open_upstream_streams(), idle + 1);
  // That stream is carried by the frame relay's connection to etcd, not by
  // the proxy's gRPC client.
  EXPECT_EQ(ProxyMetric(*proxy_, kChainStreams).value_or(-1), idle_on_relay + 1);

  // A revoke reaches every client as etcd answers it: TTL 0.
  grpc::ClientContext revoke_ctx;
  etcdserverpb::LeaseRevokeRequest revoke;
  revoke.set_id(lease.id());
  etcdserverpb::LeaseRevokeResponse revoked;
  ASSERT_TRUE(etcdserverpb::Lease::NewStub(direct_)->LeaseRevoke(&revoke_ctx, revoke, &revoked).ok());
  for (auto& s : streams) {
    etcdserverpb::LeaseKeepAliveRequest req;
    req.set_id(lease.id());
    ASSERT_TRUE(s->Write(req));
    etcdserverpb::LeaseKeepAliveResponse reply;
    ASSERT_TRUE(s->Read(&reply));
    EXPECT_EQ(reply.id(), lease.id());
    EXPECT_EQ(reply.ttl(), 0);
  }
  for (auto& s : streams) s->WritesDone();
  for (auto& s : streams) EXPECT_TRUE(s->Finish().ok());
}

TEST_F(GrpcProxyCoalesceTest, CachedReadsSeeWritesMadeDirectlyToEtcd) {
  Put("cached", "old");
  // The first reads may be forwarded until the cache's freshness lease is
  // confirmed (cache/README.md); then they are hits, with the same answer.
  EXPECT_TRUE(WaitFor(
      [&] {
        EXPECT_EQ(GetViaProxy("cached", /*serializable=*/true), "old");
        return Metric(proxy_->port(), "etcd_grpc_proxy_cache_hits_total").value_or(0) >= 1;
      },
      seconds(30)));

  // A write that never passed through the proxy: a linearizable read
  // through it must see it at once (etcd's proxy would serve "old" from its
  // cache for ever), and serializable reads once the cache's watch caught up.
  Put("cached", "new");
  EXPECT_EQ(GetViaProxy("cached", /*serializable=*/false), "new");
  EXPECT_TRUE(WaitFor([&] { return GetViaProxy("cached", true) == "new"; }, seconds(30)));

  // Deleted directly: gone through the proxy too.
  grpc::ClientContext ctx;
  etcdserverpb::DeleteRangeRequest del;
  del.set_key("cached");
  etcdserverpb::DeleteRangeResponse deleted;
  ASSERT_TRUE(etcdserverpb::KV::NewStub(direct_)->DeleteRange(&ctx, del, &deleted).ok());
  EXPECT_EQ(GetViaProxy("cached", /*serializable=*/false), "");
}

TEST_F(GrpcProxyCoalesceTest, CacheCanBeTurnedOff) {
  GrpcProxyProcess uncached(dir_, {"--endpoints=" + etcd_.ClientUrl(0),
                                   "--range-cache-max-bytes=0"});
  ASSERT_TRUE(uncached.Ready()) << uncached.Log();
  ASSERT_EQ(EtcdCluster::Etcdctl(uncached.addr(), {"put", "k", "v"}).exit_code, 0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(EtcdCluster::Etcdctl(uncached.addr(), {"get", "k", "--consistency=s"}).out,
              "k\nv\n");
  }
  EXPECT_EQ(Metric(uncached.port(), "etcd_grpc_proxy_cache_hits_total"), std::nullopt);

  GrpcProxyProcess bad(dir_, {"--endpoints=" + etcd_.ClientUrl(0),
                              "--range-cache-max-bytes=-1"});
  EXPECT_EQ(bad.process().Wait(seconds(30)), std::optional<int>(1)) << bad.Log();
  EXPECT_NE(bad.Log().find("--range-cache-max-bytes"), std::string::npos) << bad.Log();
}

// A 3-member etcd cluster, and keel in front of member 0 (without the cache,
// whose own watch is not under test).
class GrpcProxyQuorumTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
    proxy_ = std::make_unique<GrpcProxyProcess>(
        dir_,
        std::vector<std::string>{"--endpoints=" + etcd_.ClientUrl(0), "--range-cache-max-bytes=0"});
    ASSERT_TRUE(proxy_->Ready()) << proxy_->Log();
  }

  // A Watcher whose stream may last 120 s (require-leader: with clientv3's
  // "hasleader" metadata), and a Watch stub on `addr` to open it with.
  static std::unique_ptr<Watcher> NewWatcher(bool require_leader) {
    auto w = std::make_unique<Watcher>();
    w->ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
    if (require_leader) w->ctx.AddMetadata("hasleader", "true");
    return w;
  }
  static std::unique_ptr<etcdserverpb::Watch::Stub> WatchStub(const std::string& addr) {
    return etcdserverpb::Watch::NewStub(
        grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  }

  EtcdCluster etcd_{EtcdCluster::Options::Members(3)};
  TempDir dir_;
  std::unique_ptr<GrpcProxyProcess> proxy_;
};

// etcd without a quorum (2 of 3 members down) still accepts a watch, under
// its own revision. Through keel the create needs a linearizable revision: it
// waits for the quorum (its probe tried again) instead of being refused, then
// is created and sees the next write, as the watch made directly does.
TEST_F(GrpcProxyQuorumTest, AWatchCreatedWithoutAQuorumWaitsForItInsteadOfBeingRefused) {
  etcd_.Stop(1);
  etcd_.Stop(2);
  auto direct = NewWatcher(false);
  auto via = NewWatcher(false);
  ASSERT_TRUE(direct->Open(*WatchStub(etcd_.ClientAddr(0)), "q"));
  EXPECT_FALSE(direct->created.canceled()) << direct->created.cancel_reason();
  ASSERT_TRUE(via->Send(*WatchStub(proxy_->addr()), "q"));
  // Its probe failed for want of a quorum and is being tried again.
  EXPECT_TRUE(WaitFor(
      [&] {
        return ProxyMetric(*proxy_, "keel_watch_create_probe_retries_total").value_or(0) >= 1;
      },
      seconds(60)))
      << proxy_->Log();

  etcd_.Restart(1);
  ASSERT_TRUE(etcd_.WaitWritable(0)) << etcd_.Log(0);
  ASSERT_TRUE(via->stream->Read(&via->created)) << proxy_->Log();
  EXPECT_TRUE(via->created.created());
  EXPECT_FALSE(via->created.canceled()) << via->created.cancel_reason();
  CommandResult put = EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"put", "q", "v"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  for (Watcher* w : {direct.get(), via.get()}) {
    etcdserverpb::WatchResponse event;
    ASSERT_TRUE(w->stream->Read(&event)) << proxy_->Log();
    ASSERT_EQ(event.events_size(), 1);
    EXPECT_EQ(event.events(0).kv().key(), "q");
    EXPECT_EQ(event.events(0).kv().value(), "v");
    w->ctx.TryCancel();
    w->stream->Finish();
  }
}

// etcd ends a require-leader watch stream ("hasleader" metadata, which
// clientv3 sends for WithRequireLeader, as etcdctl watch does) once its member
// has been without a leader for a while; through keel the stream ends with
// the same status.
TEST_F(GrpcProxyQuorumTest, ARequireLeaderWatchEndsWithNoLeaderAsOnEtcd) {
  auto direct = NewWatcher(true);
  auto via = NewWatcher(true);
  ASSERT_TRUE(direct->Open(*WatchStub(etcd_.ClientAddr(0)), "rl"));
  ASSERT_TRUE(via->Open(*WatchStub(proxy_->addr()), "rl")) << proxy_->Log();
  etcd_.Stop(1);
  etcd_.Stop(2);
  for (Watcher* w : {direct.get(), via.get()}) {
    etcdserverpb::WatchResponse more;
    while (w->stream->Read(&more)) {
      EXPECT_EQ(more.events_size(), 0);  // nothing was written
    }
    const grpc::Status status = w->stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_EQ(status.error_message(), "etcdserver: no leader") << proxy_->Log();
  }
}

}  // namespace
}  // namespace keel::testutil
