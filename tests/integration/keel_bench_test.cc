// Runs every keel-bench subcommand briefly, through the built binary and over
// both transports (gRPC C++ and gRPC framing on nghttp2), against one real
// etcd 3.4 member, and checks the counts it reports against what etcd saw
// (revisions, leases) and the errors it reports against etcd's own — plus
// the raw TCP tools and a dead endpoint.

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel {
namespace {

using testutil::CommandResult;
using testutil::EtcdCluster;

constexpr auto kRunTimeout = std::chrono::seconds(120);

std::string BenchBin() { return testutil::BinDir() + "/keel-bench"; }

uint64_t U64(const nlohmann::json& j, const char* key) {
  return j.contains(key) ? j[key].get<uint64_t>() : ~uint64_t{0};
}

// Parameter: the --transport.
class KeelBenchTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new EtcdCluster();
    std::string error;
    start_error_ = cluster_->Start(&error) ? "" : error;
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(start_error_, ""); }

  // keel-bench against the member, with --json, this test's transport and
  // then `args`.
  static std::vector<std::string> Argv(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {BenchBin(), "--endpoints", cluster_->ClientAddr(0),
                                     "--json",   "--transport", GetParam()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  // Runs keel-bench against the member with --json and the given arguments;
  // expects exit code 0 and returns the parsed JSON report.
  static nlohmann::json RunJson(const std::vector<std::string>& args) {
    CommandResult r = testutil::RunCommand(Argv(args), {}, kRunTimeout);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << r.out << r.err;
    return j.is_discarded() ? nlohmann::json::object() : j;
  }

  // The member's current revision, from `etcdctl get -w json`'s header.
  static int64_t Revision() {
    CommandResult r = EtcdCluster::Etcdctl(cluster_->ClientUrl(0), {"get", "x", "-w", "json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_discarded() || !j.contains("header")) {
      ADD_FAILURE() << "bad etcdctl output: " << r.out;
      return -1;
    }
    return j["header"]["revision"].get<int64_t>();
  }

  static EtcdCluster* cluster_;
  static std::string start_error_;
};

EtcdCluster* KeelBenchTest::cluster_ = nullptr;
std::string KeelBenchTest::start_error_;

TEST_P(KeelBenchTest, PutReportsTotalAndMovesRevisionByExactlyTotal) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson(
      {"--total", "300", "--clients", "8", "--conns", "2", "--key-space-size", "50", "put"});
  EXPECT_EQ(U64(j, "requests"), 300u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 0u) << j.dump();
  EXPECT_GT(j.value("rps", 0.0), 0.0);
  EXPECT_EQ(Revision() - before, 300);
}

TEST_P(KeelBenchTest, RangeLinearizableAndSerializable) {
  ASSERT_EQ(EtcdCluster::Etcdctl(cluster_->ClientUrl(0), {"put", "bench-k", "v"}).exit_code, 0);
  const int64_t before = Revision();
  for (const char* consistency : {"l", "s"}) {
    nlohmann::json j = RunJson(
        {"--total", "150", "--clients", "4", "range", "bench-k", "--consistency", consistency});
    EXPECT_EQ(U64(j, "requests"), 150u) << consistency << j.dump();
    EXPECT_EQ(U64(j, "error_count"), 0u) << consistency << j.dump();
  }
  nlohmann::json ranged =
      RunJson({"--total", "20", "range", "bench-a", "bench-z", "--consistency", "s"});
  EXPECT_EQ(U64(ranged, "requests"), 20u) << ranged.dump();
  EXPECT_EQ(Revision(), before);  // reads write nothing
}

TEST_P(KeelBenchTest, TxnPutMovesRevisionPerTxn) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson({"--total", "120", "--clients", "4", "--key-space-size", "1000",
                              "--sequential-keys", "txn-put", "--txn-ops", "2"});
  EXPECT_EQ(U64(j, "requests"), 120u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 0u) << j.dump();
  EXPECT_EQ(Revision() - before, 120);  // one revision per txn
}

TEST_P(KeelBenchTest, TxnMixedSplitsReadsAndWrites) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson({"--total", "400", "--clients", "4", "--key-space-size", "20",
                              "txn-mixed", "--rw-ratio", "1"});
  EXPECT_EQ(U64(j, "requests"), 400u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 0u) << j.dump();
  ASSERT_TRUE(j.contains("read") && j.contains("write")) << j.dump();
  const uint64_t reads = U64(j["read"], "requests");
  const uint64_t writes = U64(j["write"], "requests");
  EXPECT_EQ(reads + writes, 400u);
  EXPECT_GT(reads, 0u);
  EXPECT_GT(writes, 0u);
  EXPECT_EQ(Revision() - before, static_cast<int64_t>(writes));
}

TEST_P(KeelBenchTest, WatchDeliversEveryEventToEveryWatcher) {
  // 2 streams x 5 watchers over 2 keys: 5 watchers per key, so each put
  // produces 5 events.
  nlohmann::json j = RunJson({"--clients", "2", "watch", "--streams", "2", "--watch-per-stream",
                              "5", "--watched-key-total", "2", "--put-total", "60"});
  EXPECT_EQ(U64(j, "watchers"), 10u) << j.dump();
  ASSERT_TRUE(j.contains("put") && j.contains("events")) << j.dump();
  EXPECT_EQ(U64(j["put"], "requests"), 60u) << j.dump();
  EXPECT_EQ(U64(j["put"], "error_count"), 0u) << j.dump();
  EXPECT_EQ(U64(j, "expected_events"), 300u) << j.dump();
  EXPECT_EQ(U64(j["events"], "requests"), 300u) << j.dump();
  EXPECT_EQ(U64(j["events"], "error_count"), 0u) << j.dump();
}

TEST_P(KeelBenchTest, WatchLatencyWaitsForAllWatchersEachTime) {
  nlohmann::json j =
      RunJson({"watch-latency", "--streams", "3", "--watch-per-stream", "4", "--put-total", "25"});
  EXPECT_EQ(U64(j, "watchers"), 12u) << j.dump();
  ASSERT_TRUE(j.contains("put") && j.contains("fanout")) << j.dump();
  EXPECT_EQ(U64(j["put"], "requests"), 25u) << j.dump();
  EXPECT_EQ(U64(j["fanout"], "requests"), 25u) << j.dump();
  EXPECT_EQ(U64(j["fanout"], "error_count"), 0u) << j.dump();
}

TEST_P(KeelBenchTest, LeaseKeepaliveCountsRepliesAndServerStreams) {
  nlohmann::json j =
      RunJson({"--total", "400", "--clients", "4", "lease-keepalive", "--leases", "40", "--streams",
               "2", "--metrics-url", cluster_->ClientUrl(0) + "/metrics"});
  EXPECT_EQ(U64(j, "requests"), 400u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 0u) << j.dump();
  EXPECT_EQ(U64(j, "leases"), 40u) << j.dump();
  ASSERT_TRUE(j.contains("server")) << j.dump();
  // Scraped while the run's two streams were open.
  EXPECT_EQ(j["server"].value("keepalive_streams", -1.0), 2.0) << j.dump();
  EXPECT_EQ(U64(j, "revoke_errors"), 0u) << j.dump();
  // Every lease was revoked at the end.
  CommandResult leases = EtcdCluster::Etcdctl(cluster_->ClientUrl(0), {"lease", "list"});
  EXPECT_EQ(leases.exit_code, 0) << leases.err;
  EXPECT_NE(leases.out.find("found 0 leases"), std::string::npos) << leases.out;
}

TEST_P(KeelBenchTest, TextReportHasEtcdLayout) {
  CommandResult r = testutil::RunCommand({BenchBin(), "--endpoints", cluster_->ClientAddr(0),
                                          "--transport", GetParam(), "--total", "50", "put"},
                                         {}, kRunTimeout);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* line :
       {"Summary:\n", "  Total:\t", "  Slowest:\t", "  Fastest:\t", "  Average:\t", "  Stddev:\t",
        "  Requests/sec:\t", "Response time histogram:\n", "Latency distribution:\n",
        "  99.9% in "}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  }
  // No progress bar when stderr is not a terminal.
  EXPECT_EQ(r.err, "");
}

TEST_P(KeelBenchTest, DeadEndpointFailsClearly) {
  const int port = testutil::FreePort();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  CommandResult r =
      testutil::RunCommand({BenchBin(), "--endpoints", addr, "--transport", GetParam(),
                            "--dial-timeout", "1s", "--total", "10", "put"},
                           {}, kRunTimeout);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("cannot connect to " + addr), std::string::npos) << r.err;
}

// A request etcd refuses is counted under etcd's own status and message (the
// h2 transport reads them from the trailers), and changes nothing.
TEST_P(KeelBenchTest, RefusedRequestsAreCountedWithEtcdsError) {
  const int64_t before = Revision();
  CommandResult r =
      testutil::RunCommand(Argv({"--total", "3", "--val-size", "2000000", "put"}), {}, kRunTimeout);
  EXPECT_NE(r.exit_code, 0) << r.out;  // every request failed
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
  EXPECT_EQ(U64(j, "requests"), 0u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 3u) << j.dump();
  EXPECT_EQ(j["errors"].value(
                "rpc error: code = InvalidArgument desc = etcdserver: request is too large", 0),
            3)
      << j.dump();
  EXPECT_EQ(Revision(), before);
}

// Auth: with --user the token goes on every call (here every put is
// permitted only to root), for both transports.
TEST_P(KeelBenchTest, UserTokenIsSentOnEveryCall) {
  const std::string ep = cluster_->ClientUrl(0);
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"user", "add", "root:rootpw"},
        std::vector<std::string>{"auth", "enable"}}) {
    ASSERT_EQ(EtcdCluster::Etcdctl(ep, cmd).exit_code, 0);
  }
  nlohmann::json j = RunJson({"--user", "root:rootpw", "--total", "40", "--clients", "4", "put"});
  EXPECT_EQ(U64(j, "requests"), 40u) << j.dump();
  EXPECT_EQ(U64(j, "error_count"), 0u) << j.dump();
  // Without the token etcd refuses the puts.
  CommandResult anonymous = testutil::RunCommand(Argv({"--total", "2", "put"}), {}, kRunTimeout);
  EXPECT_NE(anonymous.out.find("user name is empty"), std::string::npos) << anonymous.out;
  EXPECT_EQ(EtcdCluster::Etcdctl(ep, {"--user=root:rootpw", "auth", "disable"}).exit_code, 0);
  // etcdctl's `auth enable` made a root role too: gone with the user.
  EXPECT_EQ(EtcdCluster::Etcdctl(ep, {"user", "delete", "root"}).exit_code, 0);
  EXPECT_EQ(EtcdCluster::Etcdctl(ep, {"role", "delete", "root"}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, KeelBenchTest, ::testing::Values("grpc", "h2"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(KeelBenchFlagsTest, UnknownTransportAndTlsOverH2AreRefused) {
  CommandResult unknown = testutil::RunCommand(
      {BenchBin(), "--endpoints", "127.0.0.1:1", "--transport", "quic", "put"}, {}, kRunTimeout);
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.err.find("--transport must be grpc or h2"), std::string::npos) << unknown.err;
  CommandResult tls = testutil::RunCommand(
      {BenchBin(), "--endpoints", "https://127.0.0.1:1", "--transport", "h2", "put"}, {},
      kRunTimeout);
  EXPECT_NE(tls.exit_code, 0);
  EXPECT_NE(tls.err.find("plaintext HTTP/2 only"), std::string::npos) << tls.err;
}

// The member goes away in the middle of a timed run: the calls that cannot be
// made are counted as errors and the run ends on time instead of hanging.
TEST(KeelBenchH2Test, LostConnectionEndsCallsWithUnavailable) {
  EtcdCluster etcd;
  std::string error;
  ASSERT_TRUE(etcd.Start(&error)) << error;
  testutil::Subprocess bench({BenchBin(), "--endpoints", etcd.ClientAddr(0), "--transport", "h2",
                              "--json", "--clients", "4", "--duration", "4s", "put"},
                             etcd.dir().File("bench.log"));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  etcd.Stop(0);
  std::optional<int> code = bench.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(code.has_value()) << "keel-bench did not end: " << bench.Log();
  const std::string log = bench.Log();
  nlohmann::json j = nlohmann::json::parse(log.substr(0, log.find('\n')), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << log;
  EXPECT_GT(U64(j, "requests"), 0u) << j.dump();
  EXPECT_GT(U64(j, "error_count"), 0u) << j.dump();
  EXPECT_NE(j.dump().find("code = Unavailable"), std::string::npos) << j.dump();
}

TEST(KeelBenchTcpTest, EchoServerAndRoundTrips) {
  testutil::TempDir dir;
  testutil::Subprocess echo({BenchBin(), "tcp-echo-server", "--listen", "127.0.0.1:0"},
                            dir.File("echo.log"));
  ASSERT_TRUE(echo.WaitForLog("listening on 127.0.0.1:")) << echo.Log();
  const std::string log = echo.Log();
  const size_t colon = log.rfind(':');
  const std::string port = log.substr(colon + 1, log.find('\n', colon) - colon - 1);
  CommandResult r =
      testutil::RunCommand({BenchBin(), "--json", "tcp-rtt", "--target", "127.0.0.1:" + port,
                            "--conns", "4", "--size", "64", "--duration", "1s"},
                           {}, kRunTimeout);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_GT(j.value("round_trips", 0), 0) << r.out;
  EXPECT_EQ(j.value("error_count", 1), 0) << r.out;
  EXPECT_GT(j.value("p50_us", 0.0), 0.0) << r.out;

  // Nothing listening: a clear error and a non-zero exit.
  const int dead = testutil::FreePort();
  CommandResult d = testutil::RunCommand(
      {BenchBin(), "tcp-rtt", "--target", "127.0.0.1:" + std::to_string(dead), "--duration", "1s"},
      {}, kRunTimeout);
  EXPECT_NE(d.exit_code, 0);
  EXPECT_NE(d.err.find("Connection refused"), std::string::npos) << d.err;
}

}  // namespace
}  // namespace keel
