// The grpc-proxy's HTTP/2 frame relay (proxy/grpc/frame_relay.h) inside
// `keel grpc-proxy start`, against a real etcd 3.4: methods no layer changes
// go straight to etcd and still behave exactly as through the chain; writes
// that skip the cache still reach its read-your-writes rule; large messages
// cross both flow-control windows; an etcd restart or a dead first endpoint
// is invisible to clients. Watch streams served by the relay itself keep
// etcd's stream semantics (half-close, cancel, deadlines, bad messages) and
// a reader that stalls holds back nobody and loses nothing. The chain's
// upstream keep-alive stream, on the relay too, survives an etcd restart.

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/impl/codegen/rpc_method.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;

constexpr char kToEtcd[] = "keel_grpc_relay_streams_total{route=\"etcd\"}";
constexpr char kToChain[] = "keel_grpc_relay_streams_total{route=\"chain\"}";
constexpr char kLocal[] = "keel_grpc_relay_streams_total{route=\"local\"}";

constexpr char kClientWatchers[] = "keel_watch_client_watchers";

double Metric(const GrpcProxyProcess& proxy, const std::string& name) {
  return ProxyMetric(proxy, name).value_or(-1);
}

// Polls `name` until it equals `value` (10 s at most); returns the last value.
double AwaitMetric(const GrpcProxyProcess& proxy, const std::string& name, double value) {
  double last = -1;
  for (int i = 0; i < 200; ++i) {
    last = Metric(proxy, name);
    if (last == value) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last;
}

int64_t PutKey(etcdserverpb::KV::Stub& kv, const std::string& key, const std::string& value) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  etcdserverpb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  etcdserverpb::PutResponse resp;
  grpc::Status s = kv.Put(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.header().revision();
}

etcdserverpb::WatchRequest CreateWatch(const std::string& key) {
  etcdserverpb::WatchRequest req;
  req.mutable_create_request()->set_key(key);
  return req;
}

class FrameRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
  }
  std::unique_ptr<GrpcProxyProcess> StartProxy(std::vector<std::string> flags) {
    auto proxy = std::make_unique<GrpcProxyProcess>(etcd_.dir(), std::move(flags));
    EXPECT_TRUE(proxy->Ready()) << proxy->Log();
    return proxy;
  }

  EtcdCluster etcd_;
};

// Put, lease grant and status go straight to etcd (and are counted under
// etcd's proxy metric names); member list (the cluster view) and a watch
// (coalescing) are served by the relay itself against the chain, without its
// gRPC server; with default flags nothing needs that server.
TEST_F(FrameRelayTest, PassThroughAndChainRoutes) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0)});
  const std::string p = proxy->addr();
  ASSERT_EQ(Metric(*proxy, kToEtcd), 0) << proxy->Log();

  ASSERT_EQ(EtcdCluster::Etcdctl(p, {"put", "k", "v1"}).out, "OK\n");
  CommandResult grant = EtcdCluster::Etcdctl(p, {"lease", "grant", "60"});
  EXPECT_NE(grant.out.find("granted with TTL(60s)"), std::string::npos) << grant.out << grant.err;
  CommandResult status = EtcdCluster::Etcdctl(p, {"endpoint", "status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_GE(Metric(*proxy, kToEtcd), 3);
  EXPECT_EQ(Metric(*proxy, "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\","
                            "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"),
            1);

  const double chain_before = Metric(*proxy, kToChain);
  CommandResult members = EtcdCluster::Etcdctl(p, {"member", "list"});
  EXPECT_NE(members.out.find(p), std::string::npos) << members.out << members.err;
  EXPECT_EQ(Metric(*proxy, kLocal), 1);
  EXPECT_EQ(Metric(*proxy, kToChain), chain_before);
  EXPECT_EQ(Metric(*proxy,
                   "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"MemberList\","
                   "grpc_service=\"etcdserverpb.Cluster\",grpc_type=\"unary\"}"),
            1);

  Subprocess watch({"etcdctl", "--endpoints=" + p, "watch", "k"}, etcd_.dir().File("watch.log"),
                   {{"ETCDCTL_API", "3"}});
  // Puts until the watcher reports one (it may start after the first put).
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {
    ASSERT_EQ(EtcdCluster::Etcdctl(p, {"put", "k", "v2"}).exit_code, 0);
    seen = watch.WaitForLog("v2", std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(seen) << watch.Log();
  EXPECT_EQ(Metric(*proxy, kLocal), 2);
  EXPECT_EQ(Metric(*proxy, kToChain), chain_before);
}

// With the cache on, puts go straight to etcd, yet a serializable read right
// after each put (served from the cache) returns that put's value: the relay
// raised the cache's acknowledged revision before the client saw "OK".
TEST_F(FrameRelayTest, SerializableReadsSeePassedThroughWrites) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0)});
  const std::string script =
      "import etcd3, sys, time\n"
      "c = etcd3.client(host='127.0.0.1', port=int(sys.argv[1]))\n"
      "stale = 0\n"
      "n = 0\n"
      "c.put('stable', 's')\n"
      "end = time.time() + 5\n"
      "while time.time() < end:\n"
      "    n += 1\n"
      "    c.get('stable', serializable=True)\n"
      "    c.put('ryw', str(n))\n"
      "    v, _ = c.get('ryw', serializable=True)\n"
      "    if v.decode() != str(n):\n"
      "        stale += 1\n"
      "print(n, stale)\n";
  CommandResult r =
      RunCommand({"/usr/bin/python3", "-c", script, std::to_string(proxy->port())}, {}, seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  int rounds = 0;
  int stale = -1;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "%d %d", &rounds, &stale), 2) << r.out;
  EXPECT_GT(rounds, 50);
  EXPECT_EQ(stale, 0) << rounds << " rounds";
  // The cache was serving (the unchanging key's reads were hits), and the
  // puts really skipped the chain.
  EXPECT_GT(Metric(*proxy, "etcd_grpc_proxy_cache_hits_total"), 0);
  EXPECT_GE(Metric(*proxy, kToEtcd), rounds);
}

// With --namespace the relay never answers from the cache itself (the cache
// holds prefixed keys below the namespace layer): a key that looks like a
// cached, prefixed key is still read inside the namespace.
TEST_F(FrameRelayTest, NamespacedReadsNeverHitTheRawCache) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--namespace=ns/"});
  const std::string p = proxy->addr();
  ASSERT_EQ(EtcdCluster::Etcdctl(p, {"put", "k", "v"}).out, "OK\n");
  // Warm the cache with ns/k (through the namespace) for a while.
  const auto until = std::chrono::steady_clock::now() + seconds(2);
  while (std::chrono::steady_clock::now() < until) {
    ASSERT_EQ(EtcdCluster::Etcdctl(p, {"get", "k", "--consistency=s", "--print-value-only"}).out,
              "v\n");
  }
  // "ns/k" inside the namespace is etcd's "ns/ns/k": absent.
  CommandResult r = EtcdCluster::Etcdctl(p, {"get", "ns/k", "--consistency=s"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(Metric(*proxy, "keel_grpc_relay_streams_total{route=\"cache\"}"), 0);
}

// A linearizable read of a key the cache does not hold goes straight to etcd
// (no probe, no chain) and etcd's answer fills the cache: a serializable read
// of it is then a hit. Once held, a lone linearizable read (none other in
// flight) goes straight to etcd too; a write made directly on etcd is seen.
TEST_F(FrameRelayTest, LinearizableMissGoesStraightToEtcdAndFillsTheCache) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0)});
  auto direct = etcdserverpb::KV::NewStub(
      grpc::CreateChannel(etcd_.ClientAddr(0), grpc::InsecureChannelCredentials()));
  auto kv = etcdserverpb::KV::NewStub(
      grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials()));
  auto read = [&](bool serializable) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    etcdserverpb::RangeRequest req;
    req.set_key("lin");
    req.set_serializable(serializable);
    etcdserverpb::RangeResponse resp;
    grpc::Status s = kv->Range(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.kvs_size() == 1 ? resp.kvs(0).value() : std::string("<none>");
  };
  PutKey(*direct, "lin", "v1");
  // The cache's whole-keyspace watch is up once a write through the proxy
  // comes back to a serializable read from the cache.
  PutKey(*kv, "warm", "w");
  const double etcd_before = Metric(*proxy, kToEtcd);
  const double local_before = Metric(*proxy, kLocal);
  EXPECT_EQ(read(false), "v1");
  EXPECT_EQ(Metric(*proxy, kToEtcd), etcd_before + 1);
  EXPECT_EQ(Metric(*proxy, kLocal), local_before);  // not through the chain

  // Served from the fill (once the cache's freshness lease is confirmed).
  bool hit = false;
  for (int i = 0; i < 200 && !hit; ++i) {
    ASSERT_EQ(read(true), "v1");
    hit = Metric(*proxy, "keel_grpc_relay_streams_total{route=\"cache\"}") > 0;
    if (!hit) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(hit) << proxy->Log();

  // Held now: a lone linearizable read still goes straight to etcd.
  const double local_mid = Metric(*proxy, kLocal);  // serializable reads before the lease
  double etcd_mid = Metric(*proxy, kToEtcd);
  EXPECT_EQ(read(false), "v1");
  EXPECT_EQ(Metric(*proxy, kToEtcd), etcd_mid + 1);
  EXPECT_EQ(Metric(*proxy, "keel_cache_straight_reads_total"), 1);

  // A write made directly on etcd drops the entry; the next read misses,
  // goes straight to etcd, sees it and fills the cache again.
  PutKey(*direct, "lin", "v2");
  etcd_mid = Metric(*proxy, kToEtcd);
  EXPECT_EQ(read(false), "v2");
  EXPECT_EQ(Metric(*proxy, kToEtcd), etcd_mid + 1);
  EXPECT_EQ(Metric(*proxy, kLocal), local_mid);
  const double cache_mid = Metric(*proxy, "keel_grpc_relay_streams_total{route=\"cache\"}");
  hit = false;
  for (int i = 0; i < 200 && !hit; ++i) {  // the freshness lease may need a probe
    ASSERT_EQ(read(true), "v2");
    hit = Metric(*proxy, "keel_grpc_relay_streams_total{route=\"cache\"}") > cache_mid;
    if (!hit) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(hit) << proxy->Log();
}

// A value near etcd's request limit crosses the relay both ways (many DATA
// frames, windows opened as bytes leave) and comes back byte for byte.
TEST_F(FrameRelayTest, LargeValuesCrossBothWindows) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--range-cache-max-bytes=0"});
  const std::string value(1400 * 1000, 'x');
  const std::string file = etcd_.dir().File("big");
  std::ofstream(file) << value;
  CommandResult put = RunCommand(
      {"/bin/sh", "-c", "etcdctl --endpoints=" + proxy->addr() + " put big < " + file},
      {{"ETCDCTL_API", "3"}});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  for (int i = 0; i < 3; ++i) {
    CommandResult get = EtcdCluster::Etcdctl(proxy->addr(), {"get", "big", "--print-value-only"});
    ASSERT_EQ(get.exit_code, 0) << get.err;
    EXPECT_EQ(get.out, value + "\n");
  }
  EXPECT_GE(Metric(*proxy, kToEtcd), 4);
}

// A client that keeps one connection for many calls does not grow the proxy:
// each finished stream is forgotten (nghttp2 otherwise keeps every closed
// stream of a server session for its priority tree, about 300 bytes each, for
// as long as the connection lives).
TEST_F(FrameRelayTest, ManyCallsOnOneConnectionDoNotGrowTheProxy) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--range-cache-max-bytes=0"});
  ASSERT_EQ(EtcdCluster::Etcdctl(proxy->addr(), {"put", "k", "v"}).exit_code, 0);
  auto reads = [&](const std::string& total) {
    CommandResult r = RunCommand({BinDir() + "/keel-bench", "--endpoints", proxy->addr(),
                                  "--transport", "h2", "--conns", "1", "--clients", "32", "--total",
                                  total, "--no-progress", "range", "k", "--consistency", "s"},
                                 {}, std::chrono::seconds(120));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  };
  reads("5000");  // allocator caches and buffers warmed up
  const double before = Metric(*proxy, "process_resident_memory_bytes");
  reads("60000");
  const double after = Metric(*proxy, "process_resident_memory_bytes");
  ASSERT_GT(before, 0) << proxy->Log();
  // Kept streams added some 15 MB here.
  EXPECT_LT(after - before, 6e6) << "before " << before << ", after " << after;
  EXPECT_GE(Metric(*proxy, kToEtcd), 65000);
}

// A client connection that outlives an etcd restart: the relay's connection
// to etcd breaks, and the next call opens a new one instead of failing.
TEST_F(FrameRelayTest, EtcdRestartIsInvisibleToTheNextCall) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--range-cache-max-bytes=0"});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  auto kv = etcdserverpb::KV::NewStub(channel);
  {
    grpc::ClientContext ctx;
    etcdserverpb::PutRequest req;
    req.set_key("r");
    req.set_value("before");
    etcdserverpb::PutResponse resp;
    ASSERT_TRUE(kv->Put(&ctx, req, &resp).ok());
  }
  etcd_.Restart(0);
  ASSERT_TRUE(etcd_.WaitServing(0)) << etcd_.Log(0);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  etcdserverpb::RangeRequest req;
  req.set_key("r");
  etcdserverpb::RangeResponse resp;
  grpc::Status s = kv->Range(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << proxy->Log();
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_EQ(resp.kvs(0).value(), "before");
}

// The coalescers' upstream keep-alive stream rides the relay's connection to
// etcd: when etcd restarts under it, a client's keep-alive stream through
// the proxy is still answered (the coalescer opens a new upstream stream),
// and the client never sees the loss.
TEST_F(FrameRelayTest, KeepAliveStreamOutlivesAnEtcdRestart) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0)});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  auto lease = etcdserverpb::Lease::NewStub(channel);
  grpc::ClientContext grant_ctx;
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(60);
  etcdserverpb::LeaseGrantResponse granted;
  ASSERT_TRUE(lease->LeaseGrant(&grant_ctx, grant, &granted).ok());

  grpc::ClientContext ctx;
  auto stream = lease->LeaseKeepAlive(&ctx);
  etcdserverpb::LeaseKeepAliveRequest ask;
  ask.set_id(granted.id());
  etcdserverpb::LeaseKeepAliveResponse reply;
  ASSERT_TRUE(stream->Write(ask) && stream->Read(&reply)) << proxy->Log();
  EXPECT_EQ(reply.ttl(), 60);
  EXPECT_EQ(Metric(*proxy, "keel_grpc_relay_chain_streams"), 2);  // with the cache's watch

  etcd_.Restart(0);
  ASSERT_TRUE(etcd_.WaitServing(0)) << etcd_.Log(0);
  ASSERT_TRUE(stream->Write(ask));
  ASSERT_TRUE(stream->Read(&reply)) << proxy->Log();
  EXPECT_EQ(reply.id(), granted.id());
  EXPECT_GT(reply.ttl(), 0);
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// The first endpoint is dead: calls go through the chain (whose remote
// backend fails over) until the relay learns the live endpoint; no call fails.
TEST_F(FrameRelayTest, DeadFirstEndpointIsInvisible) {
  const std::string dead = "127.0.0.1:" + std::to_string(FreePort());
  auto proxy = StartProxy({"--endpoints=" + dead + "," + etcd_.ClientAddr(0),
                           "--range-cache-max-bytes=0"});
  const auto until = std::chrono::steady_clock::now() + seconds(3);
  int calls = 0;
  while (std::chrono::steady_clock::now() < until) {
    const std::string v = "v" + std::to_string(calls++);
    CommandResult put = EtcdCluster::Etcdctl(proxy->addr(), {"put", "d", v});
    ASSERT_EQ(put.exit_code, 0) << put.err << proxy->Log();
    CommandResult get = EtcdCluster::Etcdctl(proxy->addr(), {"get", "d", "--print-value-only"});
    ASSERT_EQ(get.out, v + "\n") << get.err;
  }
  // Once the remote backend moved to the live endpoint, the relay followed.
  EXPECT_GT(Metric(*proxy, kToEtcd), 0) << proxy->Log();
}

// The first endpoint never answers a connect: the relay gives its connection
// up after the dial timeout and the calls go again through the chain (whose
// remote backend fails over), instead of waiting for the kernel's two-minute
// connect timeout.
TEST_F(FrameRelayTest, UnansweringFirstEndpointIsGivenUpAfterTheDialTimeout) {
  BlackHole hole;
  auto proxy = StartProxy({"--endpoints=" + hole.addr() + "," + etcd_.ClientAddr(0),
                           "--range-cache-max-bytes=0"});
  for (int i = 0; i < 3; ++i) {
    const std::string v = "v" + std::to_string(i);
    CommandResult put = EtcdCluster::Etcdctl(
        proxy->addr(), {"--command-timeout=30s", "put", "h", v}, seconds(60));
    ASSERT_EQ(put.exit_code, 0) << put.err << proxy->Log();
    CommandResult get = EtcdCluster::Etcdctl(
        proxy->addr(), {"--command-timeout=30s", "get", "h", "--print-value-only"}, seconds(60));
    EXPECT_EQ(get.out, v + "\n") << get.err;
  }
  EXPECT_NE(proxy->Log().find("connecting to etcd timed out"), std::string::npos)
      << proxy->Log();
}

// The member the relay is connected to hangs (its process is frozen, its
// sockets stay open): the relay's PING goes unanswered, it gives the
// connection up and the read goes again through the chain, which fails over
// to a live member. Without the PING the read would wait forever.
TEST(FrameRelayClusterTest, HungMemberIsGivenUpAfterAnUnansweredPing) {
  EtcdCluster::Options options;
  options.members = 3;
  EtcdCluster etcd(options);
  std::string error;
  ASSERT_TRUE(etcd.Start(&error)) << error;
  GrpcProxyProcess proxy(etcd.dir(), {"--endpoints=" + etcd.ClientAddrs(),
                                      "--range-cache-max-bytes=0"});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  ASSERT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"put", "p", "before"}).out, "OK\n");
  etcd.Pause(0);
  ASSERT_TRUE(etcd.WaitWritable(1)) << etcd.Log(1);
  CommandResult get = EtcdCluster::Etcdctl(
      proxy.addr(), {"--command-timeout=90s", "get", "p", "--print-value-only"}, seconds(120));
  etcd.Resume(0);
  EXPECT_EQ(get.exit_code, 0) << get.err << proxy.Log();
  EXPECT_EQ(get.out, "before\n") << get.err;
  EXPECT_NE(proxy.Log().find("etcd stopped answering"), std::string::npos) << proxy.Log();
}

// A watch stream the relay serves itself: the client half-closes after its
// create and still gets events (as from etcd); cancelling it, or its deadline
// passing, ends it and frees its watcher in the proxy.
TEST_F(FrameRelayTest, LocalWatchKeepsEtcdStreamSemantics) {
  // Without the cache, whose own watch would count among the client watchers.
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--range-cache-max-bytes=0"});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  auto watch = etcdserverpb::Watch::NewStub(channel);
  auto etcd_kv = etcdserverpb::KV::NewStub(
      grpc::CreateChannel(etcd_.ClientAddr(0), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    auto stream = watch->Watch(&ctx);
    ASSERT_TRUE(stream->Write(CreateWatch("hc")));
    etcdserverpb::WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_TRUE(resp.created());
    ASSERT_TRUE(stream->WritesDone());
    const int64_t rev = PutKey(*etcd_kv, "hc", "after-half-close");
    ASSERT_TRUE(stream->Read(&resp)) << proxy->Log();
    ASSERT_EQ(resp.events_size(), 1);
    EXPECT_EQ(resp.events(0).kv().value(), "after-half-close");
    EXPECT_EQ(resp.events(0).kv().mod_revision(), rev);
    EXPECT_EQ(Metric(*proxy, kClientWatchers), 1);
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_EQ(AwaitMetric(*proxy, kClientWatchers, 0), 0);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    auto stream = watch->Watch(&ctx);
    ASSERT_TRUE(stream->Write(CreateWatch("dl")));
    etcdserverpb::WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_TRUE(resp.created());
    while (stream->Read(&resp)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // The proxy ended its side at the deadline too.
  EXPECT_EQ(AwaitMetric(*proxy, kClientWatchers, 0), 0);
  EXPECT_EQ(Metric(*proxy, kLocal), 2);
  EXPECT_EQ(Metric(*proxy, kToChain), 0);
}

// A message that is not a WatchRequest ends that stream with INTERNAL; the
// connection and the proxy go on serving.
TEST_F(FrameRelayTest, LocalWatchRejectsAnUndecodableMessage) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--range-cache-max-bytes=0"});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  {
    grpc::ClientContext ctx;
    // A PutRequest whose key bytes, read as WatchRequest's create_request,
    // are not a valid message.
    const grpc::internal::RpcMethod method("/etcdserverpb.Watch/Watch",
                                           grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<etcdserverpb::PutRequest, etcdserverpb::WatchResponse>>
        stream(grpc::internal::ClientReaderWriterFactory<
               etcdserverpb::PutRequest, etcdserverpb::WatchResponse>::Create(channel.get(),
                                                                            method, &ctx));
    etcdserverpb::PutRequest junk;
    junk.set_key(std::string("\xff\xff\xff\xff\xff", 5));
    stream->Write(junk);
    etcdserverpb::WatchResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
    EXPECT_NE(status.error_message().find("could not be decoded"), std::string::npos)
        << status.error_message();
  }
  grpc::ClientContext ctx;
  auto stream = etcdserverpb::Watch::NewStub(channel)->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("after-junk")));
  etcdserverpb::WatchResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_TRUE(resp.created());
  ctx.TryCancel();
  stream->Finish();
  EXPECT_EQ(AwaitMetric(*proxy, kClientWatchers, 0), 0);
}

// Unary calls the relay serves against the chain itself (under --namespace,
// every keyed call): a message that does not decode, or no message at all,
// ends the call with INTERNAL, and the next call on the connection works.
TEST_F(FrameRelayTest, LocalUnaryCallRejectsBadRequests) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0), "--namespace=ns/"});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  const grpc::internal::RpcMethod range("/etcdserverpb.KV/Range",
                                        grpc::internal::RpcMethod::BIDI_STREAMING);
  using Stream = grpc::ClientReaderWriter<etcdserverpb::PutRequest, etcdserverpb::RangeResponse>;
  {
    // Field 1 (key) says 5 bytes follow; 2 do.
    grpc::ClientContext ctx;
    const grpc::internal::RpcMethod unary("/etcdserverpb.KV/Range",
                                          grpc::internal::RpcMethod::NORMAL_RPC);
    grpc::Slice bytes(
        std::string("\x0a\x05"
                    "ab",
                    4));
    grpc::ByteBuffer junk(&bytes, 1);
    grpc::ByteBuffer resp;
    grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        channel.get(), unary, &ctx, junk, &resp);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
    EXPECT_NE(status.error_message().find("could not be decoded"), std::string::npos)
        << status.error_message();
  }
  {
    grpc::ClientContext ctx;
    std::unique_ptr<Stream> call(
        grpc::internal::ClientReaderWriterFactory<
            etcdserverpb::PutRequest, etcdserverpb::RangeResponse>::Create(channel.get(), range,
                                                                           &ctx));
    call->WritesDone();
    etcdserverpb::RangeResponse resp;
    EXPECT_FALSE(call->Read(&resp));
    grpc::Status status = call->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
    EXPECT_NE(status.error_message().find("without its request message"), std::string::npos)
        << status.error_message();
  }
  auto kv = etcdserverpb::KV::NewStub(channel);
  PutKey(*kv, "k", "v");
  grpc::ClientContext ctx;
  etcdserverpb::RangeRequest req;
  req.set_key("k");
  etcdserverpb::RangeResponse resp;
  ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_EQ(resp.kvs(0).key(), "k");  // the namespace stripped again
  EXPECT_GE(Metric(*proxy, kLocal), 4);
}

// One watcher stops reading while megabytes of events go by: a second watcher
// on the same connection still gets every event, and the stalled one, once
// it reads again, gets every event too, in order (resynced, nothing lost).
TEST_F(FrameRelayTest, StalledWatchReaderHoldsBackNobodyAndLosesNothing) {
  auto proxy = StartProxy({"--endpoints=" + etcd_.ClientAddr(0)});
  auto channel = grpc::CreateChannel(proxy->addr(), grpc::InsecureChannelCredentials());
  auto watch = etcdserverpb::Watch::NewStub(channel);
  auto etcd_kv = etcdserverpb::KV::NewStub(
      grpc::CreateChannel(etcd_.ClientAddr(0), grpc::InsecureChannelCredentials()));
  grpc::ClientContext stalled_ctx;
  grpc::ClientContext live_ctx;
  auto stalled = watch->Watch(&stalled_ctx);
  auto live = watch->Watch(&live_ctx);
  etcdserverpb::WatchResponse resp;
  ASSERT_TRUE(stalled->Write(CreateWatch("flood")));
  ASSERT_TRUE(stalled->Read(&resp));
  ASSERT_TRUE(live->Write(CreateWatch("flood")));
  ASSERT_TRUE(live->Read(&resp));

  constexpr int kPuts = 2500;
  const std::string value(4096, 'f');
  std::vector<int64_t> revisions;
  std::thread writer([&] {
    for (int i = 0; i < kPuts; ++i) revisions.push_back(PutKey(*etcd_kv, "flood", value));
  });
  // The live watcher keeps up while the other reads nothing.
  std::vector<int64_t> live_seen;
  while (static_cast<int>(live_seen.size()) < kPuts && live->Read(&resp)) {
    for (const auto& e : resp.events()) live_seen.push_back(e.kv().mod_revision());
  }
  writer.join();
  EXPECT_EQ(live_seen, revisions);
  std::vector<int64_t> stalled_seen;
  while (static_cast<int>(stalled_seen.size()) < kPuts && stalled->Read(&resp)) {
    for (const auto& e : resp.events()) {
      stalled_seen.push_back(e.kv().mod_revision());
      EXPECT_EQ(e.kv().value().size(), value.size());
    }
  }
  EXPECT_EQ(stalled_seen, revisions);
  // It really fell behind the proxy's buffers: its watcher was resynced.
  EXPECT_GE(Metric(*proxy, "keel_watch_resyncs_total"), 1);
  stalled_ctx.TryCancel();
  live_ctx.TryCancel();
  stalled->Finish();
  live->Finish();
}

}  // namespace
}  // namespace keel::testutil
