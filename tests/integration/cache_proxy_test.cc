// The range cache inside `keel grpc-proxy start`, driven by real etcdctl
// against a real etcd 3.4 (spec/proxy.md 2.4, 3.2; scenarios 12-14, 16b, 17):
// writes made directly on etcd reach cached reads, "\x00" range ends, the
// headers of cached answers, auth, metrics and eviction.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/gateway_helpers.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;

// `etcdctl get` output lines (key, value, key, value...) or the error.
CommandResult Ctl(const std::string& endpoint, std::vector<std::string> args) {
  return EtcdCluster::Etcdctl(endpoint, std::move(args));
}

// The value printed by `etcdctl get key --print-value-only` (trailing
// newline removed); "<error: ...>" when the command failed.
std::string GetValue(const std::string& endpoint, const std::string& key, bool serializable) {
  std::vector<std::string> args = {"get", key, "--print-value-only"};
  if (serializable) args.push_back("--consistency=s");
  CommandResult r = Ctl(endpoint, args);
  if (r.exit_code != 0) return "<error: " + r.err + ">";
  std::string out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// The last line etcdctl printed on stderr ("Error: ...").
std::string LastErrorLine(const CommandResult& r) {
  std::string err = r.err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  return err.substr(err.rfind('\n') + 1);
}

class CacheProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
  }
  // Starts a proxy in front of etcd with `flags` added.
  std::unique_ptr<GrpcProxyProcess> StartProxy(std::vector<std::string> flags = {}) {
    flags.push_back("--endpoints=" + etcd_.ClientAddr(0));
    auto proxy = std::make_unique<GrpcProxyProcess>(etcd_.dir(), flags);
    EXPECT_TRUE(proxy->Ready()) << proxy->Log();
    return proxy;
  }

  EtcdCluster etcd_;
};

TEST_F(CacheProxyTest, DirectWritesReachCachedReads) {  // scenarios 12 and 13
  auto proxy = StartProxy();
  const std::string p = proxy->addr();
  const std::string e = etcd_.ClientAddr(0);
  ASSERT_EQ(Ctl(p, {"put", "k", "v1"}).exit_code, 0);
  ASSERT_EQ(GetValue(p, "k", true), "v1");
  ASSERT_EQ(GetValue(p, "k", true), "v1");
  // A write made directly on etcd, which the proxy never sees pass.
  ASSERT_EQ(Ctl(e, {"put", "k", "v2"}).exit_code, 0);
  EXPECT_EQ(GetValue(p, "k", false), "v2");  // linearizable: at once
  EXPECT_TRUE(WaitFor([&] { return GetValue(p, "k", true) == "v2"; }, seconds(30)))
      << "serializable reads stayed stale: " << GetValue(p, "k", true) << "\n"
      << proxy->Log();
  // And reads are served from the cache (once the freshness lease holds).
  EXPECT_TRUE(WaitFor(
      [&] {
        EXPECT_EQ(GetValue(p, "k", true), "v2");
        std::optional<double> hits = ProxyMetric(*proxy, "etcd_grpc_proxy_cache_hits_total");
        return hits.has_value() && *hits > 0;
      },
      seconds(60)))
      << proxy->Log();
  // The cache's watch is its own stream to etcd, not a watcher of the watch
  // coalescer (no client shares it).
  EXPECT_EQ(ProxyMetric(*proxy, "keel_watch_upstream_watchers"), 0);
}

TEST_F(CacheProxyTest, OpenEndedRangesAreInvalidated) {  // scenario 14, #22397
  auto proxy = StartProxy();
  const std::string p = proxy->addr();
  ASSERT_EQ(Ctl(p, {"put", "a", "1"}).exit_code, 0);
  CommandResult all = Ctl(p, {"get", "", "--prefix", "--keys-only", "--consistency=s"});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  ASSERT_EQ(all.out.find("new"), std::string::npos);
  ASSERT_EQ(Ctl(p, {"put", "new", "x"}).exit_code, 0);
  all = Ctl(p, {"get", "", "--prefix", "--keys-only", "--consistency=s"});
  EXPECT_NE(all.out.find("new"), std::string::npos) << all.out;

  CommandResult from = Ctl(p, {"get", "a", "--from-key", "--keys-only", "--consistency=s"});
  ASSERT_EQ(from.exit_code, 0);
  ASSERT_EQ(Ctl(p, {"put", "zz", "x"}).exit_code, 0);
  from = Ctl(p, {"get", "a", "--from-key", "--keys-only", "--consistency=s"});
  EXPECT_NE(from.out.find("zz"), std::string::npos) << from.out;

  ASSERT_EQ(Ctl(p, {"put", "yyy", "y"}).exit_code, 0);
  ASSERT_EQ(GetValue(p, "yyy", true), "y");
  ASSERT_EQ(Ctl(p, {"del", "y", "--from-key"}).exit_code, 0);
  EXPECT_EQ(GetValue(p, "yyy", true), "");
}

TEST_F(CacheProxyTest, CachedAnswersCarryAFullHeader) {  // scenario 16b
  auto proxy = StartProxy();
  const std::string p = proxy->addr();
  CommandResult put = Ctl(p, {"put", "h", "1", "-w", "json"});
  ASSERT_EQ(put.exit_code, 0);
  const int64_t put_revision = nlohmann::json::parse(put.out)["header"]["revision"];
  nlohmann::json direct =
      nlohmann::json::parse(Ctl(etcd_.ClientAddr(0), {"get", "h", "-w", "json"}).out);
  for (int i = 0; i < 3; ++i) {  // the later ones are cache hits
    CommandResult got = Ctl(p, {"get", "h", "-w", "json", "--consistency=s"});
    ASSERT_EQ(got.exit_code, 0) << got.err;
    nlohmann::json j = nlohmann::json::parse(got.out);
    EXPECT_EQ(j["header"]["cluster_id"], direct["header"]["cluster_id"]) << got.out;
    EXPECT_EQ(j["header"]["member_id"], direct["header"]["member_id"]) << got.out;
    EXPECT_EQ(j["header"]["raft_term"], direct["header"]["raft_term"]) << got.out;
    EXPECT_GE(j["header"]["revision"].get<int64_t>(), put_revision) << got.out;
    EXPECT_EQ(j["kvs"], direct["kvs"]) << got.out;
  }
}

TEST_F(CacheProxyTest, CompactionKeepsLatestReadsCachedAndRefusesOldOnes) {  // scenario 16
  auto proxy = StartProxy();
  const std::string p = proxy->addr();
  const std::string e = etcd_.ClientAddr(0);
  CommandResult put = Ctl(p, {"put", "hot", "1", "-w", "json"});
  ASSERT_EQ(put.exit_code, 0);
  const int64_t old_revision = nlohmann::json::parse(put.out)["header"]["revision"];
  CommandResult put2 = Ctl(p, {"put", "hot", "2", "-w", "json"});
  ASSERT_EQ(put2.exit_code, 0);
  const int64_t revision = nlohmann::json::parse(put2.out)["header"]["revision"];
  ASSERT_EQ(Ctl(p, {"compaction", std::to_string(revision)}).exit_code, 0);
  const std::vector<std::string> old_read = {"get", "hot", "--rev=" + std::to_string(old_revision),
                                             "--consistency=s"};
  CommandResult via = Ctl(p, old_read);
  CommandResult direct = Ctl(e, old_read);
  EXPECT_NE(via.exit_code, 0);
  EXPECT_EQ(LastErrorLine(via), LastErrorLine(direct));
  // Latest reads are still cached after a Compact through the proxy (etcd's
  // proxy stops caching for good).
  // (The first reads may be forwarded until the freshness lease is
  // confirmed, a probe round trip after the first read.)
  ASSERT_EQ(GetValue(p, "hot", true), "2");
  std::optional<double> before = ProxyMetric(*proxy, "etcd_grpc_proxy_cache_hits_total");
  ASSERT_TRUE(before.has_value());
  EXPECT_TRUE(WaitFor(
      [&] {
        EXPECT_EQ(GetValue(p, "hot", true), "2");
        std::optional<double> after = ProxyMetric(*proxy, "etcd_grpc_proxy_cache_hits_total");
        return after.has_value() && *after >= *before + 2;
      },
      seconds(60)))
      << proxy->Log();
}

TEST_F(CacheProxyTest, SmallBudgetEvicts) {
  // Entries of a 100-byte value cost about 450 bytes (keys, response and a
  // fixed per-entry overhead); 30 of them do not fit in 8 KiB.
  auto proxy = StartProxy({"--range-cache-max-bytes=8192"});
  const std::string p = proxy->addr();
  for (int i = 0; i < 30; ++i) {
    const std::string key = "ev" + std::to_string(i);
    ASSERT_EQ(Ctl(p, {"put", key, std::string(100, 'x')}).exit_code, 0);
    ASSERT_EQ(GetValue(p, key, true), std::string(100, 'x'));
  }
  std::optional<double> evictions = ProxyMetric(*proxy, "keel_cache_evictions_total");
  ASSERT_TRUE(evictions.has_value());
  EXPECT_GT(*evictions, 0);
  std::optional<double> bytes = ProxyMetric(*proxy, "keel_cache_bytes");
  ASSERT_TRUE(bytes.has_value());
  EXPECT_LE(*bytes, 8192);
  for (const char* name : {"etcd_grpc_proxy_cache_hits_total", "etcd_grpc_proxy_cache_misses_total",
                           "etcd_grpc_proxy_cache_keys_total", "keel_cache_evictions_total",
                           "keel_cache_bytes", "keel_cache_linearizable_hits_total"}) {
    EXPECT_TRUE(ProxyMetric(*proxy, name).has_value()) << name;
  }
}

TEST_F(CacheProxyTest, AuthAnswersAreEtcdsOwn) {  // scenario 17, #22065
  const std::string e = etcd_.ClientAddr(0);
  for (std::vector<std::string> cmd : std::vector<std::vector<std::string>>{
           {"put", "/secret", "s3cr3t"},
           {"put", "/pub/x", "public"},
           {"user", "add", "root:rootpw"},
           {"user", "add", "alice:alicepw"},
           {"role", "add", "pub"},
           {"role", "grant-permission", "pub", "read", "/pub/", "--prefix"},
           {"user", "grant-role", "alice", "pub"},
           {"auth", "enable"}}) {
    CommandResult r = Ctl(e, cmd);
    ASSERT_EQ(r.exit_code, 0) << cmd[0] << ": " << r.err;
  }
  auto proxy = StartProxy();
  const std::string p = proxy->addr();
  const std::vector<std::vector<std::string>> reads = {
      {"--user=root:rootpw", "get", "/secret", "--consistency=s"},
      {"--user=root:rootpw", "get", "/secret", "--consistency=s"},
      {"--user=alice:alicepw", "get", "/secret", "--consistency=s"},
      {"--user=alice:alicepw", "get", "/secret"},
      {"--user=alice:alicepw", "get", "/pub/x", "--consistency=s"},
      {"get", "/secret", "--consistency=s"},
      {"get", "/secret"},
  };
  for (const auto& args : reads) {
    CommandResult via = Ctl(p, args);
    CommandResult direct = Ctl(e, args);
    std::string what;
    for (const auto& a : args) what += a + " ";
    EXPECT_EQ(via.exit_code, direct.exit_code) << what << via.err;
    EXPECT_EQ(via.out, direct.out) << what;
    if (direct.exit_code != 0) {
      EXPECT_EQ(LastErrorLine(via), LastErrorLine(direct)) << what;
    }
  }
}

}  // namespace
}  // namespace keel::testutil
