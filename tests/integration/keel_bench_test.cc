// Runs every keel-bench subcommand briefly, through the built binary, against
// one real etcd 3.4 member, and checks the counts it reports against what
// etcd saw (revisions, leases) — plus the raw TCP tools and a dead endpoint.

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
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

class KeelBenchTest : public ::testing::Test {
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

  // Runs keel-bench against the member with --json and the given arguments;
  // expects exit code 0 and returns the parsed JSON report.
  static nlohmann::json RunJson(std::vector<std::string> args) {
    std::vector<std::string> argv = {BenchBin(), "--endpoints", cluster_->ClientAddr(0), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult r = testutil::RunCommand(argv, {}, kRunTimeout);
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

  static uint64_t U(const nlohmann::json& j, const char* key) {
    return j.contains(key) ? j[key].get<uint64_t>() : ~uint64_t{0};
  }

  static EtcdCluster* cluster_;
  static std::string start_error_;
};

EtcdCluster* KeelBenchTest::cluster_ = nullptr;
std::string KeelBenchTest::start_error_;

TEST_F(KeelBenchTest, PutReportsTotalAndMovesRevisionByExactlyTotal) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson(
      {"--total", "300", "--clients", "8", "--conns", "2", "--key-space-size", "50", "put"});
  EXPECT_EQ(U(j, "requests"), 300u) << j.dump();
  EXPECT_EQ(U(j, "error_count"), 0u) << j.dump();
  EXPECT_GT(j.value("rps", 0.0), 0.0);
  EXPECT_EQ(Revision() - before, 300);
}

TEST_F(KeelBenchTest, RangeLinearizableAndSerializable) {
  ASSERT_EQ(EtcdCluster::Etcdctl(cluster_->ClientUrl(0), {"put", "bench-k", "v"}).exit_code, 0);
  const int64_t before = Revision();
  for (const char* consistency : {"l", "s"}) {
    nlohmann::json j = RunJson(
        {"--total", "150", "--clients", "4", "range", "bench-k", "--consistency", consistency});
    EXPECT_EQ(U(j, "requests"), 150u) << consistency << j.dump();
    EXPECT_EQ(U(j, "error_count"), 0u) << consistency << j.dump();
  }
  nlohmann::json ranged =
      RunJson({"--total", "20", "range", "bench-a", "bench-z", "--consistency", "s"});
  EXPECT_EQ(U(ranged, "requests"), 20u) << ranged.dump();
  EXPECT_EQ(Revision(), before);  // reads write nothing
}

TEST_F(KeelBenchTest, TxnPutMovesRevisionPerTxn) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson({"--total", "120", "--clients", "4", "--key-space-size", "1000",
                              "--sequential-keys", "txn-put", "--txn-ops", "2"});
  EXPECT_EQ(U(j, "requests"), 120u) << j.dump();
  EXPECT_EQ(U(j, "error_count"), 0u) << j.dump();
  EXPECT_EQ(Revision() - before, 120);  // one revision per txn
}

TEST_F(KeelBenchTest, TxnMixedSplitsReadsAndWrites) {
  const int64_t before = Revision();
  nlohmann::json j = RunJson({"--total", "400", "--clients", "4", "--key-space-size", "20",
                              "txn-mixed", "--rw-ratio", "1"});
  EXPECT_EQ(U(j, "requests"), 400u) << j.dump();
  EXPECT_EQ(U(j, "error_count"), 0u) << j.dump();
  ASSERT_TRUE(j.contains("read") && j.contains("write")) << j.dump();
  const uint64_t reads = U(j["read"], "requests");
  const uint64_t writes = U(j["write"], "requests");
  EXPECT_EQ(reads + writes, 400u);
  EXPECT_GT(reads, 0u);
  EXPECT_GT(writes, 0u);
  EXPECT_EQ(Revision() - before, static_cast<int64_t>(writes));
}

TEST_F(KeelBenchTest, WatchDeliversEveryEventToEveryWatcher) {
  // 2 streams x 5 watchers over 2 keys: 5 watchers per key, so each put
  // produces 5 events.
  nlohmann::json j = RunJson({"--clients", "2", "watch", "--streams", "2", "--watch-per-stream",
                              "5", "--watched-key-total", "2", "--put-total", "60"});
  EXPECT_EQ(U(j, "watchers"), 10u) << j.dump();
  ASSERT_TRUE(j.contains("put") && j.contains("events")) << j.dump();
  EXPECT_EQ(U(j["put"], "requests"), 60u) << j.dump();
  EXPECT_EQ(U(j["put"], "error_count"), 0u) << j.dump();
  EXPECT_EQ(U(j, "expected_events"), 300u) << j.dump();
  EXPECT_EQ(U(j["events"], "requests"), 300u) << j.dump();
  EXPECT_EQ(U(j["events"], "error_count"), 0u) << j.dump();
}

TEST_F(KeelBenchTest, WatchLatencyWaitsForAllWatchersEachTime) {
  nlohmann::json j =
      RunJson({"watch-latency", "--streams", "3", "--watch-per-stream", "4", "--put-total", "25"});
  EXPECT_EQ(U(j, "watchers"), 12u) << j.dump();
  ASSERT_TRUE(j.contains("put") && j.contains("fanout")) << j.dump();
  EXPECT_EQ(U(j["put"], "requests"), 25u) << j.dump();
  EXPECT_EQ(U(j["fanout"], "requests"), 25u) << j.dump();
  EXPECT_EQ(U(j["fanout"], "error_count"), 0u) << j.dump();
}

TEST_F(KeelBenchTest, LeaseKeepaliveCountsRepliesAndServerStreams) {
  nlohmann::json j =
      RunJson({"--total", "400", "--clients", "4", "lease-keepalive", "--leases", "40", "--streams",
               "2", "--metrics-url", cluster_->ClientUrl(0) + "/metrics"});
  EXPECT_EQ(U(j, "requests"), 400u) << j.dump();
  EXPECT_EQ(U(j, "error_count"), 0u) << j.dump();
  EXPECT_EQ(U(j, "leases"), 40u) << j.dump();
  ASSERT_TRUE(j.contains("server")) << j.dump();
  // Scraped while the run's two streams were open.
  EXPECT_EQ(j["server"].value("keepalive_streams", -1.0), 2.0) << j.dump();
  EXPECT_EQ(U(j, "revoke_errors"), 0u) << j.dump();
  // Every lease was revoked at the end.
  CommandResult leases = EtcdCluster::Etcdctl(cluster_->ClientUrl(0), {"lease", "list"});
  EXPECT_EQ(leases.exit_code, 0) << leases.err;
  EXPECT_NE(leases.out.find("found 0 leases"), std::string::npos) << leases.out;
}

TEST_F(KeelBenchTest, TextReportHasEtcdLayout) {
  CommandResult r = testutil::RunCommand(
      {BenchBin(), "--endpoints", cluster_->ClientAddr(0), "--total", "50", "put"}, {},
      kRunTimeout);
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

TEST_F(KeelBenchTest, DeadEndpointFailsClearly) {
  const int port = testutil::FreePort();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  CommandResult r = testutil::RunCommand(
      {BenchBin(), "--endpoints", addr, "--dial-timeout", "1s", "--total", "10", "put"}, {},
      kRunTimeout);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("cannot connect to " + addr), std::string::npos) << r.err;
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
