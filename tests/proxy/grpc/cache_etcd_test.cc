// cache::CachingBackend directly over RemoteBackend and a real etcd 3.4
// member: coherence with writes made directly to etcd (the cache follows its
// own watch), linearizable reads never older than an acknowledged write,
// "\x00" range ends, metrics and eviction, and per-identity isolation with
// auth on (the cache's watch authenticated by a client-certificate CN).

#include <grpcpp/security/credentials.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "cache/caching_backend.h"
#include "coalesce/watch_coalescing_backend.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "proxy/grpc/remote_backend.h"
#include "tests/testutil/await.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::keel::api::CallContext;
using ::keel::cache::CacheOptions;
using ::keel::cache::CachingBackend;
using ::keel::testutil::CertKeyFiles;
using ::keel::testutil::CertSpec;
using ::keel::testutil::EtcdCluster;
using ::keel::testutil::TestPki;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(60);
const std::string kNul(1, '\0');

using ::keel::testutil::Await;

absl::StatusOr<etcdserverpb::PutResponse> Put(api::Backend& backend, const std::string& key,
                                              const std::string& value,
                                              const CallContext& ctx = {}) {
  etcdserverpb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  return Await<etcdserverpb::PutResponse>(
      [&](auto done) { backend.Put(ctx, std::move(req), std::move(done)); });
}

absl::StatusOr<RangeResponse> Range(api::Backend& backend, const std::string& key,
                                    const std::string& range_end, bool serializable,
                                    const CallContext& ctx = {}) {
  RangeRequest req;
  req.set_key(key);
  req.set_range_end(range_end);
  req.set_serializable(serializable);
  return Await<RangeResponse>(
      [&](auto done) { backend.Range(ctx, std::move(req), std::move(done)); });
}

// The value of `key` (empty when absent), or the error.
absl::StatusOr<std::string> Value(api::Backend& backend, const std::string& key, bool serializable,
                                  const CallContext& ctx = {}) {
  absl::StatusOr<RangeResponse> r = Range(backend, key, "", serializable, ctx);
  if (!r.ok()) return r.status();
  return r->kvs_size() == 0 ? std::string() : r->kvs(0).value();
}

bool HasKey(const RangeResponse& r, const std::string& key) {
  for (const auto& kv : r.kvs()) {
    if (kv.key() == key) return true;
  }
  return false;
}

uint64_t CounterValue(common::MetricsRegistry& m, const std::string& name) {
  return m.GetCounter(name, "")->Value();
}

// One plain etcd member shared by the tests; each test uses its own keys.
class CacheEtcdTest : public ::testing::Test {
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
    RemoteOptions options;
    options.endpoints = {cluster_->ClientAddr(0)};
    remote_ = std::make_unique<RemoteBackend>(options);
    direct_ = std::make_unique<RemoteBackend>(options);  // writes that bypass the cache
  }
  void TearDown() override {
    cache_.reset();
    coalescer_.reset();
    direct_.reset();
    remote_.reset();
  }
  // The cache over RemoteBackend, or over the watch coalescer over it (the
  // proxy's chain: the cache's watch is then one coalesced watcher).
  void StartCache(CacheOptions options = {}, bool through_coalescer = false) {
    api::Backend* below = remote_.get();
    if (through_coalescer) {
      coalescer_ = std::make_unique<coalesce::WatchCoalescingBackend>(*remote_, &metrics_);
      below = coalescer_.get();
    }
    cache_ = std::make_unique<CachingBackend>(*below, options, &metrics_);
    ASSERT_TRUE(cache_->WaitForLiveForTest(kWait)) << "the cache's watch never became live";
  }
  // Writers (directly on etcd and through the cache) race readers through
  // the cache; no read may be older than a write acknowledged before it began.
  void RunConcurrentWritersAndReaders();

  static EtcdCluster* cluster_;
  common::MetricsRegistry metrics_;
  std::unique_ptr<RemoteBackend> remote_;
  std::unique_ptr<RemoteBackend> direct_;
  std::unique_ptr<coalesce::WatchCoalescingBackend> coalescer_;
  std::unique_ptr<CachingBackend> cache_;
};
EtcdCluster* CacheEtcdTest::cluster_ = nullptr;

TEST_F(CacheEtcdTest, DirectWriteSeenByLinearizableAndThenSerializableReads) {
  StartCache();
  ASSERT_TRUE(Put(*direct_, "dw/k", "v1").ok());
  ASSERT_EQ(*Value(*cache_, "dw/k", true), "v1");  // miss, fills
  ASSERT_TRUE(cache_->WaitForFreshForTest(kWait));
  const uint64_t hits = CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total");
  ASSERT_EQ(*Value(*cache_, "dw/k", true), "v1");
  EXPECT_EQ(CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total"), hits + 1);

  // A write the cache never sees pass through it.
  absl::StatusOr<etcdserverpb::PutResponse> put = Put(*direct_, "dw/k", "v2");
  ASSERT_TRUE(put.ok()) << put.status();
  absl::StatusOr<RangeResponse> linear = Range(*cache_, "dw/k", "", false);
  ASSERT_TRUE(linear.ok()) << linear.status();
  ASSERT_EQ(linear->kvs_size(), 1);
  EXPECT_EQ(linear->kvs(0).value(), "v2");
  EXPECT_GE(linear->header().revision(), put->header().revision());

  // Once the watch has applied the write, serializable reads see it too.
  ASSERT_TRUE(cache_->WaitForAppliedForTest(put->header().revision(), kWait));
  EXPECT_EQ(*Value(*cache_, "dw/k", true), "v2");

  // With the value cached and the watch caught up, linearizable reads are
  // answered from the cache (after a probe).
  const uint64_t linear_hits = CounterValue(metrics_, "keel_cache_linearizable_hits_total");
  ASSERT_TRUE(testutil::WaitFor(
      [&] {
        absl::StatusOr<std::string> v = Value(*cache_, "dw/k", false);
        EXPECT_TRUE(v.ok() && *v == "v2");
        return CounterValue(metrics_, "keel_cache_linearizable_hits_total") > linear_hits;
      },
      std::chrono::seconds(60)));
}

TEST_F(CacheEtcdTest, NulRangeEndsAreInvalidated) {
  StartCache();
  ASSERT_TRUE(Put(*direct_, "nul/a", "1").ok());
  // get --prefix "" : key "\x00", range_end "\x00".
  absl::StatusOr<RangeResponse> all = Range(*cache_, kNul, kNul, true);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_TRUE(HasKey(*all, "nul/a"));
  // get nul/b --from-key
  absl::StatusOr<RangeResponse> from = Range(*cache_, "nul/b", kNul, true);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_FALSE(HasKey(*from, "nul/zz"));
  ASSERT_TRUE(Put(*direct_, "nul/yyy", "y").ok());
  ASSERT_EQ(*Value(*cache_, "nul/yyy", true), "y");

  // New keys written directly on etcd show up in both open-ended entries.
  absl::StatusOr<etcdserverpb::PutResponse> put = Put(*direct_, "nul/zz", "2");
  ASSERT_TRUE(put.ok());
  ASSERT_TRUE(cache_->WaitForAppliedForTest(put->header().revision(), kWait));
  all = Range(*cache_, kNul, kNul, true);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(HasKey(*all, "nul/zz"));
  from = Range(*cache_, "nul/b", kNul, true);
  ASSERT_TRUE(from.ok());
  EXPECT_TRUE(HasKey(*from, "nul/zz"));

  // del nul/y --from-key, directly: the cached point read of nul/yyy goes.
  etcdserverpb::DeleteRangeRequest del;
  del.set_key("nul/y");
  del.set_range_end(kNul);
  auto deleted = Await<etcdserverpb::DeleteRangeResponse>(
      [&](auto done) { direct_->DeleteRange({}, del, std::move(done)); });
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  ASSERT_GE(deleted->deleted(), 2);
  ASSERT_TRUE(cache_->WaitForAppliedForTest(deleted->header().revision(), kWait));
  EXPECT_EQ(*Value(*cache_, "nul/yyy", true), "");
  // The same answers as etcd itself.
  absl::StatusOr<RangeResponse> cached = Range(*cache_, kNul, kNul, true);
  absl::StatusOr<RangeResponse> etcd = Range(*direct_, kNul, kNul, true);
  ASSERT_TRUE(cached.ok() && etcd.ok());
  EXPECT_EQ(cached->kvs_size(), etcd->kvs_size());
  EXPECT_EQ(cached->count(), etcd->count());
}

TEST_F(CacheEtcdTest, NestedTxnWritesInvalidate) {  // scenario 15
  StartCache();
  ASSERT_TRUE(Put(*direct_, "nest/k", "old").ok());
  ASSERT_EQ(*Value(*cache_, "nest/k", true), "old");
  ASSERT_EQ(*Value(*cache_, "nest/k", true), "old");
  etcdserverpb::TxnRequest txn;
  etcdserverpb::TxnRequest* inner = txn.add_success()->mutable_request_txn();
  etcdserverpb::PutRequest* put = inner->add_success()->mutable_request_put();
  put->set_key("nest/k");
  put->set_value("new");
  auto done =
      Await<etcdserverpb::TxnResponse>([&](auto cb) { cache_->Txn({}, txn, std::move(cb)); });
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_TRUE(done->succeeded());
  EXPECT_EQ(*Value(*cache_, "nest/k", true), "new");  // read-your-writes: no wait
}

void CacheEtcdTest::RunConcurrentWritersAndReaders() {
  const uint64_t seed = std::random_device{}();
  std::cout << "seed " << seed << std::endl;
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::vector<std::string> keys = {"rnd/a", "rnd/b", "rnd/c", "rnd/d"};
  for (const std::string& k : keys) ASSERT_TRUE(Put(*direct_, k, "init").ok());

  // Highest revision acknowledged per key: for every write, and for writes
  // made through the cache (which serializable reads through it must see).
  absl::Mutex mu;
  std::map<std::string, int64_t> acked;
  std::map<std::string, int64_t> acked_via_cache;
  std::atomic<int> violations{0};
  std::atomic<int> reads{0};
  std::atomic<bool> stop{false};

  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(seed + static_cast<uint64_t>(w));
      for (int i = 0; i < 60; ++i) {
        const std::string& key = keys[rng() % keys.size()];
        const bool via_cache = rng() % 2 == 0;
        api::Backend& target = via_cache ? static_cast<api::Backend&>(*cache_) : *direct_;
        auto put = Put(target, key, "w" + std::to_string(w) + "-" + std::to_string(i));
        if (!put.ok()) {
          ADD_FAILURE() << put.status();
          continue;
        }
        absl::MutexLock lock(&mu);
        acked[key] = std::max(acked[key], put->header().revision());
        if (via_cache) {
          acked_via_cache[key] = std::max(acked_via_cache[key], put->header().revision());
        }
      }
    });
  }
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(seed + 100 + static_cast<uint64_t>(r));
      while (!stop.load()) {
        const std::string& key = keys[rng() % keys.size()];
        const bool serializable = rng() % 2 == 0;
        int64_t floor;
        {
          absl::MutexLock lock(&mu);
          floor = serializable ? acked_via_cache[key] : acked[key];
        }
        absl::StatusOr<RangeResponse> got = Range(*cache_, key, "", serializable);
        ++reads;
        if (!got.ok() || got->kvs_size() != 1) {
          ADD_FAILURE() << "read of " << key << " failed: " << got.status();
          continue;
        }
        if (got->kvs(0).mod_revision() < floor) {
          ++violations;
          ADD_FAILURE() << (serializable ? "serializable" : "linearizable") << " read of " << key
                        << " returned mod_revision " << got->kvs(0).mod_revision()
                        << " older than the acknowledged write at " << floor;
        }
        if (got->header().revision() < got->kvs(0).mod_revision()) {
          ADD_FAILURE() << "header revision " << got->header().revision()
                        << " below the value's mod_revision " << got->kvs(0).mod_revision();
        }
      }
    });
  }
  for (int i = 0; i < 2; ++i) threads[static_cast<size_t>(i)].join();
  stop = true;
  for (size_t i = 2; i < threads.size(); ++i) threads[i].join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(reads.load(), 0);
  // The linearizable path was taken (not only misses forwarded to etcd).
  EXPECT_GT(CounterValue(metrics_, "keel_cache_linearizable_hits_total"), 0u);
  std::cout << "reads " << reads.load() << " hits "
            << CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total") << " linearizable hits "
            << CounterValue(metrics_, "keel_cache_linearizable_hits_total") << std::endl;
}

TEST_F(CacheEtcdTest, ConcurrentWritersNeverMakeALinearizableReadStale) {
  StartCache();
  RunConcurrentWritersAndReaders();
}

TEST_F(CacheEtcdTest, ConcurrentWritersThroughTheWatchCoalescer) {
  StartCache({}, /*through_coalescer=*/true);
  RunConcurrentWritersAndReaders();
}

TEST_F(CacheEtcdTest, SmallBudgetEvictsAndMetricsAreRendered) {
  CacheOptions options;
  options.max_bytes = 8192;  // entries up to 1024 bytes (about 450 each here)
  StartCache(options);
  for (int i = 0; i < 40; ++i) {
    const std::string key = "ev/" + std::to_string(i);
    ASSERT_TRUE(Put(*direct_, key, std::string(100, 'x')).ok());
    ASSERT_EQ(Value(*cache_, key, true)->size(), 100u);
  }
  EXPECT_GT(CounterValue(metrics_, "keel_cache_evictions_total"), 0u);
  EXPECT_LE(metrics_.GetGauge("keel_cache_bytes", "")->Value(), 8192);
  EXPECT_GT(metrics_.GetGauge("etcd_grpc_proxy_cache_keys_total", "")->Value(), 0);
  EXPECT_LT(cache_->EntriesForTest(), 40u);
  // The most recent key is still cached.
  ASSERT_TRUE(cache_->WaitForFreshForTest(kWait));
  const uint64_t hits = CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total");
  ASSERT_EQ(Value(*cache_, "ev/39", true)->size(), 100u);
  EXPECT_EQ(CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total"), hits + 1);
  const std::string text = metrics_.RenderText();
  for (const char* name : {"etcd_grpc_proxy_cache_hits_total", "etcd_grpc_proxy_cache_misses_total",
                           "etcd_grpc_proxy_cache_keys_total", "keel_cache_evictions_total",
                           "keel_cache_bytes", "keel_cache_linearizable_hits_total"}) {
    EXPECT_NE(text.find(std::string("\n") + name + " "), std::string::npos) << name << "\n" << text;
  }
}

// ----- etcd unreachable behind the watch coalescer -----

// The proxy's chain: the coalescer hides the loss of its upstream stream, so
// the cache's watch stays open while etcd is down. The freshness lease must
// stop serializable hits anyway (within max_staleness), and they resume once
// etcd is back.
TEST(CacheEtcdOutageTest, HitsStopWhileEtcdIsDownAndResumeAfter) {
  EtcdCluster cluster;
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  RemoteOptions remote_options;
  remote_options.endpoints = {cluster.ClientAddr(0)};
  auto remote = std::make_unique<RemoteBackend>(remote_options);
  common::MetricsRegistry metrics;
  auto coalescer = std::make_unique<coalesce::WatchCoalescingBackend>(*remote, &metrics);
  CacheOptions options;
  options.max_staleness = absl::Seconds(2);
  auto cache = std::make_unique<CachingBackend>(*coalescer, options, &metrics);
  ASSERT_TRUE(cache->WaitForLiveForTest(kWait));
  ASSERT_TRUE(Put(*remote, "out/k", "v1").ok());
  ASSERT_EQ(*Value(*cache, "out/k", true), "v1");
  ASSERT_TRUE(cache->WaitForFreshForTest(kWait));
  uint64_t hits = CounterValue(metrics, "etcd_grpc_proxy_cache_hits_total");
  ASSERT_EQ(*Value(*cache, "out/k", true), "v1");
  ASSERT_EQ(CounterValue(metrics, "etcd_grpc_proxy_cache_hits_total"), hits + 1);

  cluster.Stop(0);
  CallContext bounded;
  bounded.deadline = absl::Now() + absl::Hours(1);  // reset per read below
  absl::Status last;
  EXPECT_TRUE(testutil::WaitFor(
      [&] {
        bounded.deadline = absl::Now() + absl::Seconds(5);
        absl::StatusOr<std::string> v = Value(*cache, "out/k", true, bounded);
        last = v.status();
        return !v.ok();  // forwarded to the dead member
      },
      std::chrono::seconds(60)))
      << "serializable reads kept being answered from a store nobody confirms";
  EXPECT_FALSE(last.ok());

  cluster.Restart(0);
  ASSERT_TRUE(cluster.WaitServing(0, std::chrono::seconds(60))) << cluster.Log(0);
  hits = CounterValue(metrics, "etcd_grpc_proxy_cache_hits_total");
  EXPECT_TRUE(testutil::WaitFor(
      [&] {
        absl::StatusOr<std::string> v = Value(*cache, "out/k", true);
        EXPECT_TRUE(!v.ok() || *v == "v1");
        return CounterValue(metrics, "etcd_grpc_proxy_cache_hits_total") > hits;
      },
      std::chrono::seconds(60)))
      << "no hits after etcd came back";
  cache.reset();
  coalescer.reset();
  remote.reset();
}

// ----- auth -----

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A TLS etcd member with --client-cert-auth. The cache's upstream uses a
// client certificate with CN "root": that is the identity of every call
// without a token, the cache's own watch included (etcd prefers a token when
// one is sent). The proxy binary refuses such a certificate (like etcd's
// grpc-proxy), so there the cache is off with auth on; this test builds the
// chain itself to check that identities are isolated when it is on.
class CacheEtcdAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    CertSpec no_cn;
    server_ = pki_.Issue("etcd-server", no_cn);
    CertSpec root_cn;
    root_cn.common_name = "root";
    client_ = pki_.Issue("cache-client", root_cn);
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    EtcdCluster::Options options;
    options.client_scheme = "https";
    options.extra_flags = {"--cert-file=" + server_.cert, "--key-file=" + server_.key,
                           "--client-cert-auth", "--trusted-ca-file=" + pki_.ca_file()};
    cluster_ = std::make_unique<EtcdCluster>(options);
    // EtcdCluster probes with plain etcdctl, which reads its TLS flags here.
    setenv("ETCDCTL_CACERT", pki_.ca_file().c_str(), 1);
    setenv("ETCDCTL_CERT", client_.cert.c_str(), 1);
    setenv("ETCDCTL_KEY", client_.key.c_str(), 1);
    std::string error;
    const bool started = cluster_->Start(&error);
    unsetenv("ETCDCTL_CACERT");
    unsetenv("ETCDCTL_CERT");
    unsetenv("ETCDCTL_KEY");
    ASSERT_TRUE(started) << error;

    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(pki_.ca_file());
    ssl.pem_cert_chain = ReadFile(client_.cert);
    ssl.pem_private_key = ReadFile(client_.key);
    RemoteOptions remote;
    remote.endpoints = {cluster_->ClientAddr(0)};
    remote.credentials = grpc::SslCredentials(ssl);
    remote_ = std::make_unique<RemoteBackend>(remote);
  }
  void TearDown() override {
    cache_.reset();
    remote_.reset();
    cluster_.reset();
  }

  template <class Response, class Request, class Method>
  void Admin(Method method, Request request) {
    absl::StatusOr<Response> r = Await<Response>([&](auto done) {
      (remote_.get()->*method)(CallContext{}, std::move(request), std::move(done));
    });
    ASSERT_TRUE(r.ok()) << r.status();
  }
  std::string Token(const std::string& user, const std::string& password) {
    etcdserverpb::AuthenticateRequest req;
    req.set_name(user);
    req.set_password(password);
    auto r = Await<etcdserverpb::AuthenticateResponse>(
        [&](auto done) { remote_->Authenticate({}, req, std::move(done)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->token() : std::string();
  }
  // Root and alice (may read /pub/ only); auth on.
  void SetUpAuth() {
    ASSERT_TRUE(Put(*remote_, "/secret", "s3cr3t").ok());
    ASSERT_TRUE(Put(*remote_, "/pub/x", "public").ok());
    etcdserverpb::AuthUserAddRequest root;
    root.set_name("root");
    root.set_password("rootpw");
    Admin<etcdserverpb::AuthUserAddResponse>(&RemoteBackend::UserAdd, root);
    etcdserverpb::AuthUserGrantRoleRequest root_role;
    root_role.set_user("root");
    root_role.set_role("root");
    Admin<etcdserverpb::AuthUserGrantRoleResponse>(&RemoteBackend::UserGrantRole, root_role);
    etcdserverpb::AuthUserAddRequest alice;
    alice.set_name("alice");
    alice.set_password("alicepw");
    Admin<etcdserverpb::AuthUserAddResponse>(&RemoteBackend::UserAdd, alice);
    etcdserverpb::AuthRoleAddRequest role;
    role.set_name("pub-reader");
    Admin<etcdserverpb::AuthRoleAddResponse>(&RemoteBackend::RoleAdd, role);
    etcdserverpb::AuthRoleGrantPermissionRequest grant;
    grant.set_name("pub-reader");
    grant.mutable_perm()->set_permtype(authpb::Permission::READ);
    grant.mutable_perm()->set_key("/pub/");
    grant.mutable_perm()->set_range_end("/pub0");
    Admin<etcdserverpb::AuthRoleGrantPermissionResponse>(&RemoteBackend::RoleGrantPermission,
                                                         grant);
    etcdserverpb::AuthUserGrantRoleRequest alice_role;
    alice_role.set_user("alice");
    alice_role.set_role("pub-reader");
    Admin<etcdserverpb::AuthUserGrantRoleResponse>(&RemoteBackend::UserGrantRole, alice_role);
    Admin<etcdserverpb::AuthEnableResponse>(&RemoteBackend::AuthEnable,
                                            etcdserverpb::AuthEnableRequest{});
  }

  TestPki pki_;
  CertKeyFiles server_;
  CertKeyFiles client_;
  std::unique_ptr<EtcdCluster> cluster_;
  common::MetricsRegistry metrics_;
  std::unique_ptr<RemoteBackend> remote_;
  std::unique_ptr<CachingBackend> cache_;
};

// Compares a read through the cache with the same read on etcd directly.
void ExpectSameAnswer(api::Backend& cache, api::Backend& etcd, const std::string& key,
                      bool serializable, const CallContext& ctx, const std::string& who) {
  absl::StatusOr<RangeResponse> via = Range(cache, key, "", serializable, ctx);
  absl::StatusOr<RangeResponse> direct = Range(etcd, key, "", serializable, ctx);
  SCOPED_TRACE(who + " reading " + key + (serializable ? " (serializable)" : ""));
  ASSERT_EQ(via.status().code(), direct.status().code())
      << via.status() << " vs " << direct.status();
  EXPECT_EQ(via.status().message(), direct.status().message());
  if (!via.ok()) return;
  ASSERT_EQ(via->kvs_size(), direct->kvs_size());
  for (int i = 0; i < via->kvs_size(); ++i) {
    EXPECT_EQ(via->kvs(i).SerializeAsString(), direct->kvs(i).SerializeAsString());
  }
}

TEST_F(CacheEtcdAuthTest, IdentitiesNeverSeeEachOthersCachedData) {
  SetUpAuth();
  cache_ = std::make_unique<CachingBackend>(*remote_, CacheOptions{}, &metrics_);
  ASSERT_TRUE(cache_->WaitForLiveForTest(kWait)) << "the CN identity may not watch?";
  CallContext root;
  root.token = Token("root", "rootpw");
  CallContext alice;
  alice.token = Token("alice", "alicepw");
  CallContext bogus;
  bogus.token = "not-a-token";
  ASSERT_FALSE(root.token.empty());
  ASSERT_FALSE(alice.token.empty());

  // root fills the cache (twice: the second read is a hit).
  for (bool serializable : {true, false}) {
    ASSERT_EQ(*Value(*cache_, "/secret", serializable, root), "s3cr3t");
    ASSERT_EQ(*Value(*cache_, "/secret", serializable, root), "s3cr3t");
  }
  EXPECT_GT(CounterValue(metrics_, "etcd_grpc_proxy_cache_hits_total"), 0u);
  // alice and a bad token get exactly etcd's answers, never root's entry.
  for (bool serializable : {true, false}) {
    ExpectSameAnswer(*cache_, *remote_, "/secret", serializable, alice, "alice");
    ExpectSameAnswer(*cache_, *remote_, "/secret", serializable, bogus, "bogus token");
    ExpectSameAnswer(*cache_, *remote_, "/pub/x", serializable, alice, "alice");
    ExpectSameAnswer(*cache_, *remote_, "/pub/x", serializable, alice, "alice again");
    ExpectSameAnswer(*cache_, *remote_, "/secret", serializable, root, "root");
  }
  absl::StatusOr<std::string> denied = Value(*cache_, "/secret", true, alice);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();

  // A permission change through the cache takes effect at once...
  etcdserverpb::AuthRoleGrantPermissionRequest grant;
  grant.set_name("pub-reader");
  grant.mutable_perm()->set_permtype(authpb::Permission::READ);
  grant.mutable_perm()->set_key("/secret");
  auto granted = Await<etcdserverpb::AuthRoleGrantPermissionResponse>(
      [&](auto done) { cache_->RoleGrantPermission(root, grant, std::move(done)); });
  ASSERT_TRUE(granted.ok()) << granted.status();
  EXPECT_EQ(*Value(*cache_, "/secret", true, alice), "s3cr3t");
  // ...and so does a revocation made directly on etcd (the probe checks).
  etcdserverpb::AuthRoleRevokePermissionRequest revoke;
  revoke.set_role("pub-reader");
  revoke.set_key("/secret");
  auto revoked = Await<etcdserverpb::AuthRoleRevokePermissionResponse>(
      [&](auto done) { remote_->RoleRevokePermission(root, revoke, std::move(done)); });
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  denied = Value(*cache_, "/secret", true, alice);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
