// `keel gateway start` against real etcd 3.4 members and real etcdctl
// (proxy.md section 4, gateway scenarios).

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/gateway_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::testutil {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// The member id that answered a v3 JSON Maintenance.Status sent over one new
// connection through `port` ("" on failure).
std::string StatusMemberId(int port) {
  std::optional<HttpResult> r = HttpCall(port, "POST", "/v3/maintenance/status", "{}");
  if (!r.has_value() || r->status != 200) return "";
  nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("header")) return "";
  return j["header"].value("member_id", "");
}

class GatewayClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(cluster_.Start(&error)) << error;
  }

  EtcdCluster cluster_{EtcdCluster::Options::Members(3)};
  TempDir dir_;
};

TEST_F(GatewayClusterTest, PutGetAndWatchThroughGateway) {
  GatewayProcess gw(dir_, {"--endpoints=" + cluster_.ClientAddrs()});
  ASSERT_TRUE(gw.Ready()) << gw.Log();

  CommandResult put = EtcdCluster::Etcdctl(gw.addr(), {"put", "greeting", "hello"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  EXPECT_NE(put.out.find("OK"), std::string::npos);
  CommandResult get = EtcdCluster::Etcdctl(gw.addr(), {"get", "greeting"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "greeting\nhello\n");

  // A watch is a long-lived stream through one relayed connection.
  Subprocess watch({"etcdctl", "--endpoints=" + gw.addr(), "watch", "wkey"}, dir_.File("watch.log"),
                   {{"ETCDCTL_API", "3"}});
  int round = 0;
  // The watch may not be registered yet when the first put lands: put again
  // (new values) until one arrives.
  bool seen = WaitFor(
      [&] {
        std::string value = "live-" + std::to_string(round++);
        if (EtcdCluster::Etcdctl(gw.addr(), {"put", "wkey", value}).exit_code != 0) return false;
        return watch.WaitForLog(value, seconds(2));
      },
      seconds(30));
  EXPECT_TRUE(seen) << watch.Log();
  EXPECT_NE(watch.Log().find("PUT\nwkey\nlive-"), std::string::npos) << watch.Log();
}

TEST_F(GatewayClusterTest, RoundRobinSpreadsConnectionsEvenly) {
  GatewayProcess gw(dir_, {"--endpoints=" + cluster_.ClientAddrs(), "--loops=2"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  std::map<std::string, int> per_member;
  for (int i = 0; i < 30; ++i) {
    std::string id = StatusMemberId(gw.port());
    ASSERT_FALSE(id.empty()) << "connection " << i;
    ++per_member[id];
  }
  ASSERT_EQ(per_member.size(), 3u);
  for (const auto& [id, n] : per_member) EXPECT_EQ(n, 10) << "member " << id;
}

TEST_F(GatewayClusterTest, KilledMemberIsSkippedAndDeactivatedOnce) {
  GatewayProcess gw(dir_, {"--endpoints=" + cluster_.ClientAddrs(), "--retry-delay=1m"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  cluster_.Stop(0);
  // The survivors elect a leader; from then on the gateway alone must hide
  // the dead member.
  ASSERT_TRUE(cluster_.WaitWritable(1));
  for (int i = 0; i < 6; ++i) {
    CommandResult put = EtcdCluster::Etcdctl(gw.addr(), {"put", "k" + std::to_string(i), "v"});
    EXPECT_EQ(put.exit_code, 0) << "put " << i << ": " << put.err;
    CommandResult get = EtcdCluster::Etcdctl(gw.addr(), {"get", "k" + std::to_string(i)});
    EXPECT_EQ(get.exit_code, 0) << "get " << i << ": " << get.err;
    EXPECT_EQ(get.out, "k" + std::to_string(i) + "\nv\n");
  }
  // Every third connection would have gone to member 0 first: it was tried,
  // failed, and was marked down exactly once.
  const std::string log = gw.Log();
  EXPECT_EQ(CountOf(log, "\"msg\":\"deactivated endpoint\""), 1u) << log;
  EXPECT_NE(log.find("\"address\":\"" + cluster_.ClientAddr(0) + "\""), std::string::npos) << log;
}

TEST_F(GatewayClusterTest, ServesAgainRightAfterAFullOutage) {
  // etcd's gateway refuses every client for --retry-delay (here 1 minute)
  // once all endpoints were seen down; keel serves as soon as one is back.
  GatewayProcess gw(dir_, {"--endpoints=" + cluster_.ClientAddrs(), "--retry-delay=1m"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  for (int i = 0; i < 3; ++i) cluster_.Stop(i);
  CommandResult down = EtcdCluster::Etcdctl(gw.addr(), {"get", "k"});
  EXPECT_NE(down.exit_code, 0);
  for (int i = 0; i < 3; ++i) {
    const std::string addr = "\"address\":\"" + cluster_.ClientAddr(i) + "\"";
    EXPECT_TRUE(WaitFor([&] {
      const std::string log = gw.Log();
      for (size_t p = log.find("deactivated endpoint"); p != std::string::npos;
           p = log.find("deactivated endpoint", p + 1)) {
        if (log.substr(p, log.find('\n', p) - p).find(addr) != std::string::npos) return true;
      }
      return false;
    })) << gw.Log();
  }

  // A restarted member serves clients only once it has a quorum again.
  cluster_.Restart(1);
  cluster_.Restart(2);
  ASSERT_TRUE(cluster_.WaitWritable(1));
  bool served = WaitFor(
      [&] {
        return EtcdCluster::Etcdctl(gw.addr(), {"get", "k"}, seconds(5)).exit_code == 0;
      },
      seconds(20));
  EXPECT_TRUE(served) << gw.Log();
}

TEST_F(GatewayClusterTest, HealthChecksSkipAMemberWithoutLeader) {
  // Endpoint A accepts TCP but has no leader (its two peers are gone); B is a
  // healthy single-member cluster. With health checks every connection goes
  // to B; etcd's gateway would send half of them to A.
  EtcdCluster healthy;
  std::string error;
  ASSERT_TRUE(healthy.Start(&error)) << error;
  ASSERT_EQ(EtcdCluster::Etcdctl(healthy.ClientAddr(0), {"put", "who", "healthy"}).exit_code, 0);
  cluster_.Stop(1);
  cluster_.Stop(2);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::optional<HttpResult> r = HttpCall(cluster_.ClientPort(0), "GET", "/health");
        return r.has_value() && r->body.find("\"false\"") != std::string::npos;
      },
      seconds(30)));

  GatewayProcess gw(dir_, {"--endpoints=" + cluster_.ClientAddr(0) + "," + healthy.ClientAddr(0),
                           "--health-check-interval=200ms"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  ASSERT_TRUE(gw.process().WaitForLog("deactivated endpoint", seconds(20))) << gw.Log();
  for (int i = 0; i < 10; ++i) {
    CommandResult get = EtcdCluster::Etcdctl(gw.addr(), {"get", "--consistency=s", "who"});
    EXPECT_EQ(get.exit_code, 0) << get.err;
    EXPECT_EQ(get.out, "who\nhealthy\n") << "connection " << i;
  }
}

class GatewayTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(GatewayTest, ReadyLineIsEtcds) {
  TcpServer upstream(EchoHandler);
  GatewayProcess gw(dir_, {"--endpoints=" + upstream.addr() + ",http://localhost:2379"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  const std::string log = gw.Log();
  const size_t start = log.rfind('\n', log.find("ready to proxy client requests"));
  const size_t begin = start == std::string::npos ? 0 : start + 1;
  nlohmann::json line =
      nlohmann::json::parse(log.substr(begin, log.find('\n', begin) - begin), nullptr, false);
  ASSERT_TRUE(line.is_object()) << log;
  EXPECT_EQ(line["level"], "info");
  EXPECT_TRUE(line["ts"].is_number());
  EXPECT_EQ(line["caller"], "gateway");
  EXPECT_EQ(line["msg"], "ready to proxy client requests");
  EXPECT_EQ(line["endpoints"], nlohmann::json::array({upstream.addr(), "localhost:2379"}));
}

TEST_F(GatewayTest, HalfCloseIsPropagated) {
  // The upstream answers only after the client's EOF; etcd's gateway would
  // have closed both directions by then.
  TcpServer upstream([](int fd) {
    std::string request = ReadToEof(fd);
    SendAll(fd, "got " + std::to_string(request.size()) + " bytes: " + request.substr(0, 5));
  });
  GatewayProcess gw(dir_, {"--endpoints=" + upstream.addr()});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  for (size_t size : {size_t{5}, size_t{3} << 20}) {  // small, and above the high watermark
    int fd = ConnectTcp(gw.port());
    ASSERT_GE(fd, 0);
    std::string payload(size, 'x');
    payload.replace(0, 5, "hello");
    ASSERT_TRUE(SendAll(fd, payload));
    ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
    EXPECT_EQ(ReadToEof(fd), "got " + std::to_string(size) + " bytes: hello");
    close(fd);
  }
}

TEST_F(GatewayTest, DeadEndpointIsSkippedForTheSameClient) {
  TcpServer upstream(EchoHandler);
  const int dead = FreePort();  // nothing listens there
  GatewayProcess gw(dir_,
                    {"--endpoints=127.0.0.1:" + std::to_string(dead) + "," + upstream.addr()});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  for (int i = 0; i < 4; ++i) {
    int fd = ConnectTcp(gw.port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "ping"));
    EXPECT_EQ(ReadN(fd, 4), "ping") << "connection " << i;
    close(fd);
  }
  EXPECT_EQ(CountOf(gw.Log(), "\"msg\":\"deactivated endpoint\""), 1u) << gw.Log();
  EXPECT_EQ(upstream.accepted(), 4);
}

TEST_F(GatewayTest, BlackHoledEndpointCostsOneDialTimeout) {
  // etcd's gateway has no dial timeout: each client would hang for the OS
  // connect timeout (about two minutes) on such an endpoint.
  BlackHole hole;
  TcpServer upstream(EchoHandler);
  GatewayProcess gw(dir_, {"--endpoints=" + hole.addr() + "," + upstream.addr(),
                           "--dial-timeout=300ms", "--loops=1"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  for (int i = 0; i < 3; ++i) {
    int fd = ConnectTcp(gw.port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "ping"));
    EXPECT_EQ(ReadN(fd, 4, seconds(20)), "ping") << "connection " << i;
    close(fd);
  }
  EXPECT_NE(gw.Log().find("\"error\":\"dial tcp " + hole.addr() + ": i/o timeout\""),
            std::string::npos)
      << gw.Log();
}

TEST_F(GatewayTest, BadFlagsExitNonZeroWithEtcdsMessages) {
  const std::string keel = BinDir() + "/keel";
  CommandResult r = RunCommand({keel, "gateway", "start", "--bogus"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: unknown flag: --bogus\n", 0), 0u) << r.err;

  r = RunCommand({keel, "gateway", "start", "--retry-delay=123"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: invalid argument \"123\" for \"--retry-delay\" flag: time: "
                        "missing unit in duration \"123\"\n",
                        0),
            0u)
      << r.err;

  r = RunCommand({keel, "gateway", "start", "--listen-addr=127.0.0.1:" + std::to_string(FreePort()),
                  "--endpoints=127.0.0.1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error parsing endpoint \"127.0.0.1\"\n");

  r = RunCommand({keel, "gateway", "start", "--listen-addr=foo"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "failed to validate listen address: foo\n");

  // Flags also come from ETCD_* variables, with the same checks.
  r = RunCommand({keel, "gateway", "start"}, {{"ETCD_RETRY_DELAY", "123"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("invalid argument \"123\" for \"--retry-delay\" flag"), std::string::npos)
      << r.err;

  for (std::vector<std::string> help : {std::vector<std::string>{keel, "--help"},
                                        {keel, "gateway", "--help"},
                                        {keel, "gateway", "start", "--help"}}) {
    r = RunCommand(help);
    EXPECT_EQ(r.exit_code, 0) << help.back();
  }
  r = RunCommand({keel, "gateway", "start", "--help"});
  EXPECT_NE(r.out.find("--retry-delay"), std::string::npos) << r.out;
  r = RunCommand({keel, "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("keel Version: "), std::string::npos) << r.out;
}

TEST_F(GatewayTest, EnvironmentVariablesConfigureTheGateway) {
  TcpServer upstream(EchoHandler);
  const int port = FreePort();
  Subprocess gw({BinDir() + "/keel", "gateway", "start"}, dir_.File("env.log"),
                {{"ETCD_LISTEN_ADDR", "127.0.0.1:" + std::to_string(port)},
                 {"ETCD_ENDPOINTS", upstream.addr()}});
  ASSERT_TRUE(gw.WaitForLog("ready to proxy client requests")) << gw.Log();
  int fd = ConnectTcp(port);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "env"));
  EXPECT_EQ(ReadN(fd, 3), "env");
  close(fd);
}

TEST_F(GatewayTest, LoopGuardRefusesToProxyToItself) {
  const std::string addr = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand(
      {BinDir() + "/keel", "gateway", "start", "--listen-addr=" + addr, "--endpoints=" + addr});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "SRV or endpoint (" + addr + "->" + addr +
                       ") should not resolve to the gateway listen addr (" + addr + ")\n");
}

TEST_F(GatewayTest, ListenAddressInUseIsAnError) {
  TcpServer taken(EchoHandler);
  CommandResult r = RunCommand({BinDir() + "/keel", "gateway", "start",
                                "--listen-addr=" + taken.addr(), "--endpoints=127.0.0.1:2379"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "listen tcp " + taken.addr() + ": bind: address already in use\n");
}

TEST_F(GatewayTest, MetricsAndHealth) {
  EtcdCluster etcd;
  std::string error;
  ASSERT_TRUE(etcd.Start(&error)) << error;
  const int metrics_port = FreePort();
  GatewayProcess gw(dir_, {"--endpoints=" + etcd.ClientAddr(0),
                           "--metrics-addr=http://127.0.0.1:" + std::to_string(metrics_port)});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  ASSERT_EQ(EtcdCluster::Etcdctl(gw.addr(), {"put", "m", "1"}).exit_code, 0);

  std::optional<HttpResult> health = HttpCall(metrics_port, "GET", "/health");
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "{\"health\":\"true\"}");

  std::optional<HttpResult> metrics = HttpCall(metrics_port, "GET", "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_EQ(metrics->status, 200);
  const std::string endpoint = "endpoint=\"" + etcd.ClientAddr(0) + "\"";
  for (const std::string& want :
       {std::string("keel_gateway_connections_total "),
        std::string("keel_gateway_active_connections "),
        "keel_gateway_bytes_total{direction=\"to_endpoint\"," + endpoint + "} ",
        "keel_gateway_bytes_total{direction=\"to_client\"," + endpoint + "} ",
        "keel_gateway_dial_failures_total{" + endpoint + "} 0",
        "keel_gateway_endpoint_up{" + endpoint + "} 1", std::string("process_open_fds ")}) {
    EXPECT_NE(metrics->body.find(want), std::string::npos) << want << "\n" << metrics->body;
  }
  EXPECT_EQ(metrics->body.find("keel_gateway_connections_total 0\n"), std::string::npos);

  // With the only endpoint down (and seen down by a client), /health says so.
  etcd.Stop(0);
  EXPECT_NE(EtcdCluster::Etcdctl(gw.addr(), {"get", "m"}, seconds(10)).exit_code, 0);
  EXPECT_TRUE(WaitFor([&] {
    std::optional<HttpResult> h = HttpCall(metrics_port, "GET", "/health");
    return h.has_value() && h->status == 503 && h->body == "{\"health\":\"false\"}";
  })) << gw.Log();
  metrics = HttpCall(metrics_port, "GET", "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_NE(metrics->body.find("keel_gateway_endpoint_up{" + endpoint + "} 0"), std::string::npos);
  EXPECT_EQ(metrics->body.find("keel_gateway_dial_failures_total{" + endpoint + "} 0\n"),
            std::string::npos);
}

TEST_F(GatewayTest, SigtermDrainsOpenConnections) {
  TcpServer upstream(EchoHandler);
  GatewayProcess gw(dir_, {"--endpoints=" + upstream.addr(), "--drain-timeout=1m"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  int fd = ConnectTcp(gw.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "before"));
  ASSERT_EQ(ReadN(fd, 6), "before");

  gw.process().Signal(SIGTERM);
  ASSERT_TRUE(gw.process().WaitForLog("draining connections")) << gw.Log();
  // No new clients, but the open one keeps working.
  EXPECT_TRUE(WaitFor([&] { return !CanConnect("127.0.0.1", gw.port()); }));
  ASSERT_TRUE(SendAll(fd, "during"));
  EXPECT_EQ(ReadN(fd, 6), "during");
  EXPECT_TRUE(gw.process().Running());

  close(fd);  // the last connection ends: the gateway exits at once
  EXPECT_EQ(gw.process().Wait(seconds(20)), 0) << gw.Log();
}

TEST_F(GatewayTest, DrainTimeoutClosesLeftoverConnections) {
  TcpServer upstream(EchoHandler);
  GatewayProcess gw(dir_, {"--endpoints=" + upstream.addr(), "--drain-timeout=500ms"});
  ASSERT_TRUE(gw.Ready()) << gw.Log();
  int fd = ConnectTcp(gw.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "x"));
  ASSERT_EQ(ReadN(fd, 1), "x");
  gw.process().Signal(SIGTERM);
  EXPECT_EQ(gw.process().Wait(seconds(20)), 0) << gw.Log();
  EXPECT_EQ(ReadToEof(fd), "");  // closed by the gateway
  close(fd);
  EXPECT_NE(gw.Log().find("closed connections after the drain timeout"), std::string::npos);
}

}  // namespace
}  // namespace keel::testutil
