// CachingBackend over testutil::FakeBackend: the glue around the pure core
// (the cache's own watch, serializable and linearizable hits, the revision
// probe, read-your-writes, identities, auth flush, watch loss, destruction).

#include "cache/caching_backend.h"

#include <gtest/gtest.h>

#include <cstdint>
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

namespace keel::cache {
namespace {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::WatchResponse;
using ::keel::testutil::FakeBackend;
using ::keel::testutil::FakeWatch;

// A BeginExternalFill size limit no test entry reaches.
constexpr uint64_t kAnySize = 1 << 20;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(30);
const std::string kNul(1, '\0');

// Captures one unary completion.
template <class T>
class Result {
 public:
  api::Done<T> Done() {
    return [this](absl::StatusOr<T> r) {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(value_.has_value()) << "done ran twice";
      value_ = std::move(r);
    };
  }
  bool Wait(absl::Duration timeout = kWait) const {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return value_.has_value(); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  bool ready() const {
    absl::MutexLock lock(&mu_);
    return value_.has_value();
  }
  absl::StatusOr<T> value() const {
    absl::MutexLock lock(&mu_);
    return value_.value_or(absl::InternalError("no result"));
  }

 private:
  mutable absl::Mutex mu_;
  std::optional<absl::StatusOr<T>> value_ ABSL_GUARDED_BY(mu_);
};

// Polls `cond` until true; false after kWait.
template <class F>
bool PollUntil(F cond) {
  for (absl::Time end = absl::Now() + kWait; absl::Now() < end;) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return cond();
}

RangeRequest Get(const std::string& key, bool serializable, const std::string& end = "") {
  RangeRequest r;
  r.set_key(key);
  r.set_range_end(end);
  r.set_serializable(serializable);
  return r;
}

RangeResponse Value(int64_t revision, const std::string& key, const std::string& value) {
  RangeResponse r;
  r.mutable_header()->set_cluster_id(11);
  r.mutable_header()->set_member_id(22);
  r.mutable_header()->set_raft_term(3);
  r.mutable_header()->set_revision(revision);
  auto* kv = r.add_kvs();
  kv->set_key(key);
  kv->set_value(value);
  kv->set_mod_revision(revision);
  r.set_count(1);
  return r;
}

RangeResponse ProbeAnswer(int64_t revision) {
  RangeResponse r;
  r.mutable_header()->set_cluster_id(11);
  r.mutable_header()->set_revision(revision);
  return r;
}

WatchResponse Events(int64_t revision, const std::vector<std::string>& keys) {
  WatchResponse w;
  w.mutable_header()->set_revision(revision);
  for (const std::string& k : keys) {
    auto* e = w.add_events();
    e->mutable_kv()->set_key(k);
    e->mutable_kv()->set_mod_revision(revision);
  }
  return w;
}

api::CallContext WithToken(const std::string& token) {
  api::CallContext ctx;
  ctx.token = token;
  return ctx;
}

class CachingBackendTest : public ::testing::Test {
 protected:
  // Fast backoff; no freshness lease (the tests of the lease turn it on), so
  // that every upstream Range is one the test expects.
  static CacheOptions TestOptions() {
    CacheOptions options;
    options.min_watch_backoff = absl::Milliseconds(10);
    options.max_watch_backoff = absl::Milliseconds(50);
    options.max_staleness = absl::InfiniteDuration();
    return options;
  }
  // The freshness lease on, probing every 10 ms.
  static CacheOptions LeaseOptions(absl::Duration max_staleness) {
    CacheOptions options = TestOptions();
    options.max_staleness = max_staleness;
    options.freshness_probe_interval = absl::Milliseconds(10);
    return options;
  }
  void Start(CacheOptions options = TestOptions()) {
    cache_ = std::make_unique<CachingBackend>(fake_, options, &metrics_);
    ASSERT_TRUE(fake_.WaitForWatches(1, kWait));
  }
  void TearDown() override {
    cache_.reset();
    fake_.FailAllPending(absl::CancelledError("test over"));
  }

  // With the lease on, Range calls are either token-less probes (count_only
  // over "\x00") or forwarded reads.
  static bool IsProbe(const RangeRequest& r) { return r.count_only() && r.key() == kNul; }
  // Index of the n-th (0-based) forwarded read, waiting for it.
  size_t ReadCall(size_t n) {
    for (absl::Time end = absl::Now() + kWait; absl::Now() < end;) {
      size_t seen = 0;
      for (size_t i : fake_.CallsTo("Range")) {
        if (IsProbe(fake_.Request<RangeRequest>(i))) continue;
        if (seen++ == n) return i;
      }
      fake_.WaitForUnaryCalls(fake_.unary_count() + 1, absl::Milliseconds(50));
    }
    ADD_FAILURE() << "no forwarded read #" << n;
    return 0;
  }
  size_t ReadCalls() {
    size_t n = 0;
    for (size_t i : fake_.CallsTo("Range")) n += IsProbe(fake_.Request<RangeRequest>(i)) ? 0 : 1;
    return n;
  }
  // Probes not answered yet.
  std::vector<size_t> PendingProbes() {
    std::vector<size_t> out;
    for (size_t i : fake_.CallsTo("Range")) {
      FakeBackend::UnaryCall call = fake_.Call(i);
      if (!call.completed && IsProbe(fake_.Request<RangeRequest>(i))) out.push_back(i);
    }
    return out;
  }
  // Answers freshness probes with `revision` until the lease holds.
  void ConfirmFreshness(int64_t revision) {
    for (absl::Time end = absl::Now() + kWait; absl::Now() < end;) {
      for (size_t i : PendingProbes()) fake_.Reply(i, ProbeAnswer(revision));
      if (cache_->WaitForFreshForTest(absl::Milliseconds(20))) return;
    }
    ADD_FAILURE() << "the freshness lease never held";
  }

  // Makes watch `i` live at `revision`.
  void MakeLive(size_t i, int64_t revision) {
    ASSERT_TRUE(fake_.WaitForWatches(i + 1, kWait));
    std::shared_ptr<FakeWatch> w = fake_.watch(i);
    ASSERT_TRUE(w->WaitForRequests(1, kWait));
    WatchResponse created;
    created.mutable_header()->set_revision(revision);
    created.set_created(true);
    w->Push(created);
    ASSERT_TRUE(cache_->WaitForLiveForTest(kWait));
  }
  void PushEvents(int64_t revision, const std::vector<std::string>& keys, size_t watch = 0) {
    fake_.watch(watch)->Push(Events(revision, keys));
    ASSERT_TRUE(cache_->WaitForAppliedForTest(revision, kWait));
  }
  // Index of the n-th (0-based) Range call, waiting for it.
  size_t RangeCall(size_t n) {
    for (absl::Time end = absl::Now() + kWait; absl::Now() < end;) {
      std::vector<size_t> calls = fake_.CallsTo("Range");
      if (calls.size() > n) return calls[n];
      fake_.WaitForUnaryCalls(fake_.unary_count() + 1, absl::Milliseconds(50));
    }
    ADD_FAILURE() << "no Range call #" << n;
    return 0;
  }
  size_t RangeCalls() const { return fake_.CallsTo("Range").size(); }

  // A serializable read of `key` that misses, is answered upstream with
  // `value` at `revision`, and so fills the cache.
  void Fill(const std::string& key, const std::string& value, int64_t revision) {
    const size_t n = ReadCalls();
    Result<RangeResponse> r;
    cache_->Range({}, Get(key, true), r.Done());
    fake_.Reply(ReadCall(n), Value(revision, key, value));
    ASSERT_TRUE(r.Wait());
    ASSERT_TRUE(r.value().ok());
  }
  // A read expected to be served from cache without reaching the fake.
  // (Freshness probes the timer sends meanwhile do not count.)
  RangeResponse Hit(const api::CallContext& ctx, const RangeRequest& req) {
    const size_t n = ReadCalls();
    Result<RangeResponse> r;
    cache_->Range(ctx, req, r.Done());
    EXPECT_TRUE(r.ready()) << "not answered from cache";
    EXPECT_EQ(ReadCalls(), n);
    EXPECT_TRUE(r.value().ok()) << r.value().status();
    return r.value().value_or(RangeResponse{});
  }

  uint64_t Counter(const std::string& name) { return metrics_.GetCounter(name, "")->Value(); }
  int64_t Gauge(const std::string& name) { return metrics_.GetGauge(name, "")->Value(); }

  common::MetricsRegistry metrics_;
  FakeBackend fake_;
  FakeBackend watch_source_;  // for the test that gives one
  std::unique_ptr<CachingBackend> cache_;
};

TEST_F(CachingBackendTest, OpensOneWholeKeyspaceWatchWithoutToken) {
  Start();
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  ASSERT_TRUE(w->WaitForRequests(1, kWait));
  const ::etcdserverpb::WatchCreateRequest create = w->Requests()[0].create_request();
  EXPECT_EQ(create.key(), kNul);
  EXPECT_EQ(create.range_end(), kNul);
  EXPECT_EQ(create.start_revision(), 0);
  EXPECT_TRUE(w->ctx().token.empty());
  EXPECT_TRUE(w->ctx().require_leader);
  EXPECT_GE(w->credits(), 1);
}

// The proxy opens the cache's watch below its watch coalescer (which would
// ask etcd for prev_kv): the watch, and its reopening after a loss, go to
// the watch source; reads and freshness probes still go through `inner`.
TEST_F(CachingBackendTest, AGivenWatchSourceTakesTheWatchAndNothingElse) {
  cache_ = std::make_unique<CachingBackend>(fake_, LeaseOptions(absl::Minutes(10)), &metrics_,
                                            &watch_source_);
  ASSERT_TRUE(watch_source_.WaitForWatches(1, kWait));
  std::shared_ptr<FakeWatch> w = watch_source_.watch(0);
  ASSERT_TRUE(w->WaitForRequests(1, kWait));
  EXPECT_EQ(w->Requests()[0].create_request().key(), kNul);
  EXPECT_FALSE(w->Requests()[0].create_request().prev_kv());

  WatchResponse created;
  created.mutable_header()->set_revision(10);
  created.set_created(true);
  w->Push(created);
  ASSERT_TRUE(cache_->WaitForLiveForTest(kWait));
  Fill("k", "v1", 10);  // the miss went to `inner`
  ConfirmFreshness(10);  // and so do the probes
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
  w->Push(Events(11, {"k"}));
  ASSERT_TRUE(cache_->WaitForAppliedForTest(11, kWait));
  EXPECT_EQ(cache_->EntriesForTest(), 0u);  // the event from the watch source invalidated it

  w->Finish(absl::UnavailableError("connection lost"));
  ASSERT_TRUE(watch_source_.WaitForWatches(2, kWait));  // reopened there
  EXPECT_EQ(fake_.watch_count(), 0u);
  EXPECT_EQ(watch_source_.unary_count(), 0u);
}

TEST_F(CachingBackendTest, PassesThroughUntilTheWatchIsLive) {
  Start();
  for (int i = 0; i < 2; ++i) {
    Result<RangeResponse> r;
    cache_->Range({}, Get("k", true), r.Done());
    fake_.Reply(RangeCall(static_cast<size_t>(i)), Value(5, "k", "v"));
    ASSERT_TRUE(r.Wait());
    EXPECT_EQ(r.value()->kvs(0).value(), "v");
  }
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  // A linearizable read does not even probe.
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  const size_t call = RangeCall(2);
  EXPECT_FALSE(fake_.Request<RangeRequest>(call).count_only());
  fake_.Reply(call, Value(5, "k", "v"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(Counter("etcd_grpc_proxy_cache_hits_total"), 0u);
}

TEST_F(CachingBackendTest, SerializableHitAfterMissWithAppliedRevision) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  EXPECT_EQ(cache_->EntriesForTest(), 1u);
  RangeResponse hit = Hit({}, Get("k", true));
  EXPECT_EQ(hit.kvs(0).value(), "v1");
  EXPECT_EQ(hit.header().revision(), 10);
  PushEvents(11, {"other"});
  hit = Hit({}, Get("k", true));
  EXPECT_EQ(hit.header().revision(), 11);  // max(H, A)
  EXPECT_EQ(hit.header().cluster_id(), 11u);
  EXPECT_EQ(hit.header().member_id(), 22u);
  EXPECT_EQ(Counter("etcd_grpc_proxy_cache_hits_total"), 2u);
  EXPECT_EQ(Counter("etcd_grpc_proxy_cache_misses_total"), 1u);
  EXPECT_EQ(Gauge("etcd_grpc_proxy_cache_keys_total"), 1);
  EXPECT_GT(Gauge("keel_cache_bytes"), 0);
}

TEST_F(CachingBackendTest, AnEventFromAnyWriterInvalidates) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  PushEvents(11, {"k"});  // e.g. a put made directly on etcd
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  EXPECT_EQ(Gauge("etcd_grpc_proxy_cache_keys_total"), 0);
  Fill("k", "v2", 11);
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v2");
}

TEST_F(CachingBackendTest, ResponseOlderThanAnAppliedEventIsNotInserted) {
  Start();
  MakeLive(0, 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  const size_t call = RangeCall(0);
  PushEvents(11, {"k"});
  fake_.Reply(call, Value(10, "k", "old"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value()->kvs(0).value(), "old");  // the client gets its answer
  EXPECT_EQ(cache_->EntriesForTest(), 0u);      // but it is not cached
}

TEST_F(CachingBackendTest, HistoricalReadsPassThrough) {
  Start();
  MakeLive(0, 10);
  for (int i = 0; i < 2; ++i) {
    RangeRequest old = Get("k", true);
    old.set_revision(3);
    Result<RangeResponse> r;
    cache_->Range({}, old, r.Done());
    const size_t call = RangeCall(static_cast<size_t>(i));
    EXPECT_EQ(fake_.Request<RangeRequest>(call).revision(), 3);
    fake_.Reply(call, Value(10, "k", "at3"));
    ASSERT_TRUE(r.Wait());
  }
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
}

TEST_F(CachingBackendTest, LinearizableReadWaitsForTheProbeRevision) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  const size_t probe = RangeCall(1);
  RangeRequest p = fake_.Request<RangeRequest>(probe);
  EXPECT_TRUE(p.count_only());
  EXPECT_EQ(p.limit(), 1);
  EXPECT_FALSE(p.serializable());
  fake_.Reply(probe, ProbeAnswer(12));
  EXPECT_FALSE(r.ready());  // A = 10 < R = 12
  PushEvents(11, {"other"});
  EXPECT_FALSE(r.ready());
  PushEvents(12, {"another"});
  ASSERT_TRUE(r.Wait());
  ASSERT_TRUE(r.value().ok());
  EXPECT_EQ(r.value()->kvs(0).value(), "v1");
  EXPECT_EQ(r.value()->header().revision(), 12);
  EXPECT_EQ(RangeCalls(), 2u);  // the fill and the probe: no forwarded read
  EXPECT_EQ(Counter("keel_cache_linearizable_hits_total"), 1u);
}

TEST_F(CachingBackendTest, LinearizableReadAfterAnInvalidatingEventIsForwarded) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  fake_.Reply(RangeCall(1), ProbeAnswer(11));
  PushEvents(11, {"k"});
  const size_t forwarded = RangeCall(2);
  EXPECT_FALSE(fake_.Request<RangeRequest>(forwarded).count_only());
  fake_.Reply(forwarded, Value(11, "k", "v2"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value()->kvs(0).value(), "v2");
  EXPECT_EQ(Counter("keel_cache_linearizable_hits_total"), 0u);
  EXPECT_EQ(cache_->EntriesForTest(), 1u);  // refilled at 11
}

TEST_F(CachingBackendTest, LinearizableWaitIsBoundedThenForwarded) {
  CacheOptions options = TestOptions();
  options.linearizable_wait = absl::Milliseconds(20);
  Start(options);
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  fake_.Reply(RangeCall(1), ProbeAnswer(99));  // the watch never gets there
  const size_t forwarded = RangeCall(2);
  fake_.Reply(forwarded, Value(99, "k", "v9"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value()->kvs(0).value(), "v9");
}

TEST_F(CachingBackendTest, ReadYourWritesThroughTheProxy) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<::etcdserverpb::PutResponse> put;
  ::etcdserverpb::PutRequest req;
  req.set_key("other");
  req.set_value("x");
  cache_->Put({}, req, put.Done());
  ::etcdserverpb::PutResponse put_answer;
  put_answer.mutable_header()->set_revision(11);
  fake_.Reply(fake_.CallsTo("Put")[0], put_answer);
  ASSERT_TRUE(put.Wait());
  // The watch has not applied 11 yet: the entry is valid but not served.
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  fake_.Reply(RangeCall(1), Value(11, "k", "v1"));
  ASSERT_TRUE(r.Wait());
  PushEvents(11, {"other"});
  EXPECT_EQ(Hit({}, Get("k", true)).header().revision(), 11);
}

TEST_F(CachingBackendTest, TxnPassesThroughAndCountsAsAWrite) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<::etcdserverpb::TxnResponse> txn;
  ::etcdserverpb::TxnRequest t;
  t.add_success()->mutable_request_range()->set_key("k");
  cache_->Txn({}, t, txn.Done());
  ::etcdserverpb::TxnResponse answer;
  answer.mutable_header()->set_revision(12);
  fake_.Reply(fake_.CallsTo("Txn")[0], answer);
  ASSERT_TRUE(txn.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 1u);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  EXPECT_FALSE(r.ready());  // W = 12 > A = 10: forwarded
  fake_.Reply(RangeCall(1), Value(12, "k", "v1"));
  ASSERT_TRUE(r.Wait());
}

TEST_F(CachingBackendTest, TokenReadsAreCheckedAndKeyedPerIdentity) {
  Start();
  MakeLive(0, 10);
  // root's first read: nothing cached for root, so no probe: forwarded with
  // its token (etcd checks it) and kept under root's identity.
  Result<RangeResponse> first;
  cache_->Range(WithToken("root-token"), Get("/secret", true), first.Done());
  const size_t forwarded = RangeCall(0);
  EXPECT_EQ(fake_.Call(forwarded).ctx.token, "root-token");
  EXPECT_FALSE(fake_.Request<RangeRequest>(forwarded).count_only());
  fake_.Reply(forwarded, Value(10, "/secret", "s3cr3t"));
  ASSERT_TRUE(first.Wait());

  // root again: a probe with its token over its range (the permission
  // check), then served from cache.
  Result<RangeResponse> again;
  cache_->Range(WithToken("root-token"), Get("/secret", true), again.Done());
  const size_t probe = RangeCall(1);
  EXPECT_EQ(fake_.Call(probe).ctx.token, "root-token");
  EXPECT_EQ(fake_.Request<RangeRequest>(probe).key(), "/secret");
  EXPECT_TRUE(fake_.Request<RangeRequest>(probe).count_only());
  fake_.Reply(probe, ProbeAnswer(10));
  ASSERT_TRUE(again.Wait());
  EXPECT_EQ(again.value()->kvs(0).value(), "s3cr3t");
  EXPECT_EQ(RangeCalls(), 2u);

  // alice has no entry of her own: her Range goes to etcd and gets etcd's
  // own answer, never root's entry.
  Result<RangeResponse> alice;
  cache_->Range(WithToken("alice-token"), Get("/secret", true), alice.Done());
  const size_t alice_range = RangeCall(2);
  EXPECT_EQ(fake_.Call(alice_range).ctx.token, "alice-token");
  EXPECT_FALSE(fake_.Request<RangeRequest>(alice_range).count_only());
  fake_.Fail(alice_range, absl::PermissionDeniedError("etcdserver: permission denied"));
  ASSERT_TRUE(alice.Wait());
  EXPECT_EQ(alice.value().status().code(), absl::StatusCode::kPermissionDenied);

  // Another identity allowed to read still misses root's entry.
  Result<RangeResponse> bob;
  cache_->Range(WithToken("bob-token"), Get("/secret", true), bob.Done());
  const size_t bob_range = RangeCall(3);
  EXPECT_EQ(fake_.Call(bob_range).ctx.token, "bob-token");
  fake_.Reply(bob_range, Value(10, "/secret", "s3cr3t"));
  ASSERT_TRUE(bob.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 2u);  // root's and bob's
  // And a token-less client never sees a token's entry.
  Result<RangeResponse> anon;
  cache_->Range({}, Get("/secret", true), anon.Done());
  const size_t anon_range = RangeCall(4);
  fake_.Fail(anon_range, absl::InvalidArgumentError("etcdserver: user name is empty"));
  ASSERT_TRUE(anon.Wait());
  EXPECT_EQ(anon.value().status().code(), absl::StatusCode::kInvalidArgument);
}

// A linearizable read of a range the cache does not hold costs one round
// trip, not a probe and then the same miss; its answer fills the cache, and
// the next read is a probe and a hit.
TEST_F(CachingBackendTest, LinearizableMissGoesStraightToEtcd) {
  Start();
  MakeLive(0, 10);
  Result<RangeResponse> miss;
  cache_->Range({}, Get("k", false), miss.Done());
  const size_t forwarded = RangeCall(0);
  EXPECT_FALSE(fake_.Request<RangeRequest>(forwarded).count_only());
  EXPECT_FALSE(fake_.Request<RangeRequest>(forwarded).serializable());
  fake_.Reply(forwarded, Value(10, "k", "v1"));
  ASSERT_TRUE(miss.Wait());
  EXPECT_EQ(miss.value()->kvs(0).value(), "v1");
  EXPECT_EQ(RangeCalls(), 1u);
  EXPECT_EQ(cache_->EntriesForTest(), 1u);

  Result<RangeResponse> hit;
  cache_->Range({}, Get("k", false), hit.Done());
  const size_t probe = RangeCall(1);
  EXPECT_TRUE(fake_.Request<RangeRequest>(probe).count_only());
  fake_.Reply(probe, ProbeAnswer(10));
  ASSERT_TRUE(hit.Wait());
  EXPECT_EQ(hit.value()->kvs(0).value(), "v1");
  EXPECT_EQ(RangeCalls(), 2u);
  EXPECT_EQ(Counter("keel_cache_linearizable_hits_total"), 1u);
}

// The frame relay's straight-to-etcd linearizable reads: a range the cache
// does not hold always gets a ticket (a miss); a held range gets one only
// while no other ticket is out (overlapping reads share Range()'s probe);
// etcd's answer fills or refreshes the entry. Serializable reads never do.
TEST_F(CachingBackendTest, ExternalFillsForMissesAndForLoneReadsOfHeldRanges) {
  Start();
  MakeLive(0, 10);
  EXPECT_FALSE(cache_->BeginExternalFill(Get("k", true), kAnySize).has_value());

  std::optional<uint64_t> miss = cache_->BeginExternalFill(Get("k", false), kAnySize);
  ASSERT_TRUE(miss.has_value());
  EXPECT_TRUE(cache_->BeginExternalFill(Get("other", false), kAnySize).has_value());  // also a miss
  cache_->FinishExternalFill(*miss, Value(10, "k", "v1"));
  EXPECT_EQ(cache_->EntriesForTest(), 1u);
  EXPECT_EQ(Counter("etcd_grpc_proxy_cache_misses_total"), 2u);

  // "k" is held, but the ticket for "other" is still out: through Range().
  EXPECT_FALSE(cache_->BeginExternalFill(Get("k", false), kAnySize).has_value());
}

TEST_F(CachingBackendTest, LoneLinearizableReadOfAHeldRangeRefreshesIt) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  std::optional<uint64_t> lone = cache_->BeginExternalFill(Get("k", false), kAnySize);
  ASSERT_TRUE(lone.has_value());
  // A second read while the first is out goes through Range() (its probe).
  EXPECT_FALSE(cache_->BeginExternalFill(Get("k", false), kAnySize).has_value());
  PushEvents(11, {"k"});  // invalidates "k"; etcd's answer below is at 11
  cache_->FinishExternalFill(*lone, Value(11, "k", "v2"));
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v2");
  // Ended (here abandoned) tickets free the way for the next lone read.
  std::optional<uint64_t> next = cache_->BeginExternalFill(Get("k", false), kAnySize);
  ASSERT_TRUE(next.has_value());
  cache_->AbandonExternalFill(*next);
  EXPECT_TRUE(cache_->BeginExternalFill(Get("k", false), kAnySize).has_value());
  EXPECT_EQ(Counter("etcd_grpc_proxy_cache_misses_total"), 1u);  // Fill's own miss only
  EXPECT_EQ(Counter("keel_cache_straight_reads_total"), 3u);
}

// A lone straight read's answer replaces the entry it read (no event in
// between): later hits carry its newer revision. A held range larger than
// what the caller can keep of etcd's answer stays behind the probe.
TEST_F(CachingBackendTest, StraightReadRefreshesAHeldEntryUnlessItIsTooLarge) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  std::optional<uint64_t> lone = cache_->BeginExternalFill(Get("k", false), kAnySize);
  ASSERT_TRUE(lone.has_value());
  cache_->FinishExternalFill(*lone, Value(12, "k", "v1"));
  const RangeResponse hit = Hit({}, Get("k", true));
  EXPECT_EQ(hit.header().revision(), 12);
  EXPECT_EQ(hit.kvs(0).value(), "v1");
  EXPECT_FALSE(cache_->BeginExternalFill(Get("k", false), 16).has_value());
  EXPECT_TRUE(cache_->BeginExternalFill(Get("absent", false), 16).has_value());  // a miss
}

TEST_F(CachingBackendTest, SuccessfulAuthChangeFlushes) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<::etcdserverpb::AuthRoleRevokePermissionResponse> failed;
  cache_->RoleRevokePermission({}, {}, failed.Done());
  fake_.Fail(fake_.CallsTo("RoleRevokePermission")[0],
             absl::FailedPreconditionError("etcdserver: role name not found"));
  ASSERT_TRUE(failed.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 1u);
  Result<::etcdserverpb::AuthRoleRevokePermissionResponse> ok;
  cache_->RoleRevokePermission({}, {}, ok.Done());
  fake_.Reply(fake_.CallsTo("RoleRevokePermission")[1],
              ::etcdserverpb::AuthRoleRevokePermissionResponse{});
  ASSERT_TRUE(ok.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  // Read-only auth calls do not flush.
  Fill("k", "v1", 10);
  Result<::etcdserverpb::AuthenticateResponse> auth;
  cache_->Authenticate({}, {}, auth.Done());
  fake_.Reply(fake_.CallsTo("Authenticate")[0], ::etcdserverpb::AuthenticateResponse{});
  ASSERT_TRUE(auth.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 1u);
}

TEST_F(CachingBackendTest, LostWatchFlushesAndReopens) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  fake_.watch(0)->Finish(absl::UnavailableError("connection lost"));
  ASSERT_TRUE(fake_.WaitForWatches(2, kWait));
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  // Not live until the new watch is created: reads pass through.
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  fake_.Reply(RangeCall(1), Value(12, "k", "v2"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  MakeLive(1, 12);
  Fill("k", "v2", 12);
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v2");
}

TEST_F(CachingBackendTest, RefusedWatchLeavesTheCacheOffAndRetries) {
  Start();
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  ASSERT_TRUE(w->WaitForRequests(1, kWait));
  WatchResponse refused;  // what etcd 3.4 answers a token-less watch with auth on
  refused.mutable_header()->set_revision(10);
  refused.set_created(true);
  refused.set_canceled(true);
  refused.set_cancel_reason("etcdserver: permission denied");
  w->Push(refused);
  ASSERT_TRUE(w->WaitForCancel(kWait));
  ASSERT_TRUE(fake_.WaitForWatches(2, kWait));  // retried after backoff
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  fake_.Reply(RangeCall(0), Value(10, "k", "v"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
}

TEST_F(CachingBackendTest, AuthEnabledUpstreamTurnsTheCacheOff) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  // Auth enabled directly on etcd: a token-less miss is refused.
  Result<RangeResponse> r;
  cache_->Range({}, Get("other", true), r.Done());
  fake_.Fail(RangeCall(1), api::EtcdStatus(api::EtcdError::kUserEmpty));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value().status(), api::EtcdStatus(api::EtcdError::kUserEmpty));
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  ASSERT_TRUE(fake_.watch(0)->WaitForCancel(kWait));
  ASSERT_TRUE(fake_.WaitForWatches(2, kWait));  // reopened (and refused, with auth on)
  Result<RangeResponse> again;
  cache_->Range({}, Get("k", true), again.Done());
  fake_.Fail(RangeCall(2), api::EtcdStatus(api::EtcdError::kUserEmpty));
  ASSERT_TRUE(again.Wait());
  EXPECT_FALSE(again.value().ok());
}

TEST_F(CachingBackendTest, DestructionCancelsTheWatchAndForwardsWaitingReads) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  fake_.Reply(RangeCall(1), ProbeAnswer(50));  // waits for A >= 50
  EXPECT_FALSE(r.ready());
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  cache_.reset();
  EXPECT_TRUE(w->cancelled());
  EXPECT_TRUE(w->done());
  // The waiting read was forwarded; its answer still reaches the client.
  const size_t forwarded = RangeCall(2);
  fake_.Reply(forwarded, Value(50, "k", "v5"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value()->kvs(0).value(), "v5");
}

TEST_F(CachingBackendTest, InFlightFillMayCompleteAfterDestruction) {
  Start();
  MakeLive(0, 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  const size_t call = RangeCall(0);
  cache_.reset();
  fake_.Reply(call, Value(10, "k", "v"));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value()->kvs(0).value(), "v");
}

// ----- the freshness lease (the watch coalescer below hides upstream loss) -----

TEST_F(CachingBackendTest, SerializableHitsNeedAConfirmedFreshnessLease) {
  Start(LeaseOptions(absl::Minutes(10)));
  MakeLive(0, 10);
  // A miss fills (and makes the timer probe).
  Result<RangeResponse> fill;
  cache_->Range({}, Get("k", true), fill.Done());
  fake_.Reply(ReadCall(0), Value(10, "k", "v1"));
  ASSERT_TRUE(fill.Wait());
  ASSERT_EQ(cache_->EntriesForTest(), 1u);
  // The probe says the store is at 12; the watch is at 10: not confirmed.
  std::vector<size_t> probes;
  for (absl::Time end = absl::Now() + kWait; probes.empty() && absl::Now() < end;) {
    probes = PendingProbes();
    if (probes.empty()) cache_->WaitForFreshForTest(absl::Milliseconds(10));
  }
  ASSERT_FALSE(probes.empty()) << "no freshness probe";
  RangeRequest probe = fake_.Request<RangeRequest>(probes[0]);
  EXPECT_TRUE(fake_.Call(probes[0]).ctx.token.empty());
  EXPECT_TRUE(fake_.Call(probes[0]).ctx.require_leader);
  EXPECT_EQ(probe.limit(), 1);
  fake_.Reply(probes[0], ProbeAnswer(12));
  Result<RangeResponse> stale;
  cache_->Range({}, Get("k", true), stale.Done());
  EXPECT_FALSE(stale.ready()) << "served without a confirmed lease";
  fake_.Reply(ReadCall(1), Value(12, "k", "v1"));
  ASSERT_TRUE(stale.Wait());
  // Once the watch reaches 12 the probe confirms the lease: hits.
  PushEvents(12, {"other"});
  ASSERT_TRUE(cache_->WaitForFreshForTest(kWait));
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
}

TEST_F(CachingBackendTest, HitsStopWhenProbesStopConfirmingWhileTheWatchStaysLive) {
  // etcd down behind the coalescer: the watch never ends, A freezes, probes
  // go unanswered or fail.
  Start(LeaseOptions(absl::Seconds(1)));
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  ConfirmFreshness(10);
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
  // From now on the probes fail (connection refused), the watch stays live.
  bool forwarded = false;
  size_t read = 0;
  for (absl::Time end = absl::Now() + kWait; !forwarded && absl::Now() < end;) {
    for (size_t i : PendingProbes()) {
      fake_.Fail(i, absl::UnavailableError("connection refused"));
    }
    Result<RangeResponse> r;
    cache_->Range({}, Get("k", true), r.Done());
    if (!r.ready()) {
      forwarded = true;
      read = ReadCall(1);
      fake_.Fail(read, absl::UnavailableError("connection refused"));
      ASSERT_TRUE(r.Wait());
      EXPECT_EQ(r.value().status().code(), absl::StatusCode::kUnavailable);
    } else {
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  ASSERT_TRUE(forwarded) << "hits kept coming from a store nobody confirms";
  EXPECT_TRUE(cache_->WaitForLiveForTest(absl::ZeroDuration()));  // the watch never ended
  // etcd is back: probes confirm again, hits again.
  ConfirmFreshness(10);
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
}

TEST_F(CachingBackendTest, ProbeRefusedForAuthFlushesAtOnce) {
  Start(LeaseOptions(absl::Minutes(10)));
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  ConfirmFreshness(10);
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
  // Auth enabled directly on etcd: the next token-less probe is refused.
  bool refused = false;
  for (absl::Time end = absl::Now() + kWait; !refused && absl::Now() < end;) {
    for (size_t i : PendingProbes()) {
      fake_.Fail(i, api::EtcdStatus(api::EtcdError::kUserEmpty));
      refused = true;
    }
    if (!refused) cache_->WaitForFreshForTest(absl::Milliseconds(10));  // keeps probes coming
  }
  ASSERT_TRUE(refused);
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  ASSERT_TRUE(fake_.watch(0)->WaitForCancel(kWait));
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", true), r.Done());
  EXPECT_FALSE(r.ready());
  fake_.Fail(ReadCall(1), api::EtcdStatus(api::EtcdError::kUserEmpty));
  ASSERT_TRUE(r.Wait());
}

TEST_F(CachingBackendTest, LinearizableProbeRefusedForAuthFlushes) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  Result<RangeResponse> r;
  cache_->Range({}, Get("k", false), r.Done());
  fake_.Fail(RangeCall(1), api::EtcdStatus(api::EtcdError::kUserEmpty));
  EXPECT_EQ(cache_->EntriesForTest(), 0u);
  ASSERT_TRUE(fake_.watch(0)->WaitForCancel(kWait));
  fake_.Fail(RangeCall(2), api::EtcdStatus(api::EtcdError::kUserEmpty));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value().status(), api::EtcdStatus(api::EtcdError::kUserEmpty));
}

TEST_F(CachingBackendTest, RequireLeaderReadsAreForwarded) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  api::CallContext ctx;
  ctx.require_leader = true;
  Result<RangeResponse> r;
  cache_->Range(ctx, Get("k", true), r.Done());
  EXPECT_FALSE(r.ready()) << "a hasleader read was answered from cache";
  const size_t forwarded = RangeCall(1);
  EXPECT_TRUE(fake_.Call(forwarded).ctx.require_leader);
  fake_.Fail(forwarded, api::EtcdStatus(api::EtcdError::kNoLeader));
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value().status(), api::EtcdStatus(api::EtcdError::kNoLeader));
  // Without require_leader the entry is still served.
  EXPECT_EQ(Hit({}, Get("k", true)).kvs(0).value(), "v1");
}

TEST_F(CachingBackendTest, CancelledLinearizableWaitEndsAtOnce) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);
  api::CallContext ctx;
  ctx.cancel = std::make_shared<api::CancelSignal>();
  Result<RangeResponse> r;
  cache_->Range(ctx, Get("k", false), r.Done());
  fake_.Reply(RangeCall(1), ProbeAnswer(50));  // waits for A >= 50
  EXPECT_FALSE(r.ready());
  ctx.cancel->Cancel();
  ASSERT_TRUE(r.Wait());
  EXPECT_EQ(r.value().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(RangeCalls(), 2u);  // not forwarded
  // Cancelled before its probe returned: no wait at all.
  api::CallContext early;
  early.cancel = std::make_shared<api::CancelSignal>();
  Result<RangeResponse> r2;
  cache_->Range(early, Get("k", false), r2.Done());
  early.cancel->Cancel();
  fake_.Reply(RangeCall(2), ProbeAnswer(60));
  ASSERT_TRUE(r2.Wait());
  EXPECT_EQ(r2.value().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(RangeCalls(), 3u);
}

TEST_F(CachingBackendTest, BackoffRestartsOnlyAfterAWatchThatWorked) {
  CacheOptions options = TestOptions();
  options.max_watch_backoff = absl::Minutes(1);  // no reset by time here
  Start(options);
  // Created, then lost at once, three times: the backoff keeps doubling.
  for (size_t i = 0; i < 3; ++i) {
    MakeLive(i, 10);
    fake_.watch(i)->Finish(absl::UnavailableError("lost"));
    ASSERT_TRUE(fake_.WaitForWatches(i + 2, kWait));
  }
  EXPECT_EQ(cache_->WatchBackoffForTest(), absl::Milliseconds(80));
  // A watch that delivered an event restarts it.
  MakeLive(3, 10);
  PushEvents(11, {"k"}, 3);
  fake_.watch(3)->Finish(absl::UnavailableError("lost"));
  ASSERT_TRUE(fake_.WaitForWatches(5, kWait));
  EXPECT_EQ(cache_->WatchBackoffForTest(), absl::Milliseconds(20));
}

TEST_F(CachingBackendTest, ObserverOutlivesItsOnDone) {
  Start();
  MakeLive(0, 10);
  Fill("k", "v1", 10);  // cached, so the read probes and then waits
  Result<RangeResponse> waiting;
  int observers_inside_on_done = -1;
  cache_->Range({}, Get("k", false), [&](absl::StatusOr<RangeResponse> r) {
    // Runs inside the old watch's OnDone (the waiting read is forwarded and
    // answered inline): let the timer thread open the next watch meanwhile.
    EXPECT_TRUE(fake_.WaitForWatches(2, kWait));
    for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
      // The new observer exists once the new watch is open.
      if (cache_->ObserversForTest() >= 2) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    observers_inside_on_done = cache_->ObserversForTest();
    waiting.Done()(std::move(r));
  });
  fake_.Reply(RangeCall(1), ProbeAnswer(50));
  fake_.SetAutoReply("Range", Value(50, "k", "v"));
  fake_.watch(0)->Finish(absl::UnavailableError("lost"));
  ASSERT_TRUE(waiting.Wait());
  // The old observer was still alive while its OnDone ran.
  EXPECT_EQ(observers_inside_on_done, 2);
  ASSERT_TRUE(PollUntil([&] { return cache_->ObserversForTest() == 1; }));
}

TEST_F(CachingBackendTest, LogsOncePerTransition) {
  std::ostringstream out;
  common::SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  Start();
  WatchResponse refused;
  refused.mutable_header()->set_revision(10);
  refused.set_created(true);
  refused.set_canceled(true);
  refused.set_cancel_reason("etcdserver: permission denied");
  for (size_t i = 0; i < 3; ++i) {  // refused three times: one warning
    ASSERT_TRUE(fake_.WaitForWatches(i + 1, kWait));
    ASSERT_TRUE(fake_.watch(i)->WaitForRequests(1, kWait));
    fake_.watch(i)->Push(refused);
    ASSERT_TRUE(fake_.watch(i)->WaitForDone(kWait));
  }
  MakeLive(3, 10);                                         // serving: one info
  fake_.watch(3)->Finish(absl::UnavailableError("lost"));  // lost: one more warning
  ASSERT_TRUE(fake_.WaitForWatches(5, kWait));
  cache_.reset();
  common::SetLogSinkForTest(nullptr);
  const std::string log = out.str();
  auto count = [&](std::string_view needle) { return testutil::CountOf(log, needle); };
  EXPECT_EQ(count("range cache not serving"), 2u) << log;
  EXPECT_EQ(count("range cache serving"), 1u) << log;
  EXPECT_NE(log.find("permission denied"), std::string::npos) << log;
  EXPECT_NE(log.find("lost"), std::string::npos) << log;
}

}  // namespace
}  // namespace keel::cache
