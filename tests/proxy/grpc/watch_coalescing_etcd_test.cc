// WatchCoalescingBackend over a real etcd 3.4.23 (RemoteBackend): upstream
// watcher counts on etcd's own metric, a seeded differential test against
// the same watches made directly on etcd, compaction cancels, half-closed
// streams, and an etcd restart under a live watch.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "coalesce/watch_coalescing_backend.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "proxy/grpc/remote_backend.h"
#include "tests/testutil/await.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::etcdserverpb::WatchCreateRequest;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;
using ::keel::api::CallContext;
using ::keel::testutil::EtcdCluster;
using ::keel::testutil::WaitFor;

constexpr absl::Duration kWait = absl::Seconds(60);
constexpr auto kPoll = std::chrono::seconds(60);

using ::keel::testutil::Await;

// A client Watch stream that reads continuously and records everything.
class Stream final : public api::StreamObserver<WatchResponse> {
 public:
  Stream(api::Backend& backend, const CallContext& ctx = {}) {
    handle_ = backend.Watch(ctx, this);
    handle_->ReadNext();
  }
  ~Stream() override {
    handle_->Cancel();
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return done_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&done), kWait);
  }
  void OnResponse(WatchResponse r) override {
    {
      absl::MutexLock lock(&mu_);
      responses_.push_back(std::move(r));
    }
    handle_->ReadNext();
  }
  void OnDone(absl::Status s) override {
    absl::MutexLock lock(&mu_);
    done_ = std::move(s);
  }
  void Write(const WatchRequest& r) { handle_->Write(r); }
  void WritesDone() { handle_->WritesDone(); }
  std::vector<WatchResponse> responses() {
    absl::MutexLock lock(&mu_);
    return responses_;
  }
  // Waits until `pred(responses)` holds.
  bool Wait(const std::function<bool(const std::vector<WatchResponse>&)>& pred) {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(responses_); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
  }
  // Waits for the n-th response (1-based) and returns it.
  std::optional<WatchResponse> WaitNth(size_t n) {
    if (!Wait([n](const auto& v) { return v.size() >= n; })) return std::nullopt;
    return responses()[n - 1];
  }
  // Responses for watch id `id` (created ones by position are the caller's).
  std::vector<WatchResponse> For(int64_t id) {
    std::vector<WatchResponse> out;
    for (auto& r : responses()) {
      if (r.watch_id() == id) out.push_back(r);
    }
    return out;
  }

 private:
  std::unique_ptr<api::WatchStream> handle_;
  absl::Mutex mu_;
  std::vector<WatchResponse> responses_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
};

std::vector<::mvccpb::Event> EventsOf(const std::vector<WatchResponse>& rs) {
  std::vector<::mvccpb::Event> out;
  for (const auto& r : rs) {
    for (const auto& e : r.events()) out.push_back(e);
  }
  return out;
}

std::string Dump(const std::vector<::mvccpb::Event>& evs) {
  std::string s;
  for (const auto& e : evs) s += e.ShortDebugString() + "\n";
  return s;
}

WatchRequest Create(const std::string& key, const std::string& end = "", int64_t start = 0,
                    int64_t id = 0) {
  WatchRequest r;
  WatchCreateRequest* c = r.mutable_create_request();
  c->set_key(key);
  c->set_range_end(end);
  c->set_start_revision(start);
  c->set_watch_id(id);
  return r;
}

WatchRequest CancelReq(int64_t id) {
  WatchRequest r;
  r.mutable_cancel_request()->set_watch_id(id);
  return r;
}

// The shape etcd clients look at, for comparing a reply of etcd and ours.
std::string Shape(const WatchResponse& r) {
  WatchResponse s = r;
  s.clear_events();
  return s.ShortDebugString();
}

class WatchCoalescingEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ = std::make_unique<EtcdCluster>();
    std::string error;
    ASSERT_TRUE(cluster_->Start(&error)) << error;
    RemoteOptions o;
    o.endpoints = {cluster_->ClientAddr(0)};
    direct_ = std::make_unique<RemoteBackend>(o);
    upstream_ = std::make_unique<RemoteBackend>(o);
    layer_ = std::make_unique<coalesce::WatchCoalescingBackend>(*upstream_, &metrics_);
  }
  void TearDown() override {
    layer_.reset();
    upstream_.reset();
    direct_.reset();
    cluster_.reset();
  }

  int64_t Put(const std::string& k, const std::string& v) {
    etcdserverpb::PutRequest req;
    req.set_key(k);
    req.set_value(v);
    auto r = Await<etcdserverpb::PutResponse>(
        [&](auto done) { direct_->Put(CallContext{}, req, std::move(done)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header().revision() : 0;
  }
  void Delete(const std::string& k) {
    etcdserverpb::DeleteRangeRequest req;
    req.set_key(k);
    auto r = Await<etcdserverpb::DeleteRangeResponse>(
        [&](auto done) { direct_->DeleteRange(CallContext{}, req, std::move(done)); });
    EXPECT_TRUE(r.ok()) << r.status();
  }
  void Txn(const std::vector<std::string>& keys) {
    etcdserverpb::TxnRequest req;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto* op = req.add_success();
      if (i + 1 == keys.size() && keys.size() > 2) {
        op->mutable_request_delete_range()->set_key(keys[i]);
      } else {
        op->mutable_request_put()->set_key(keys[i]);
        op->mutable_request_put()->set_value("txn" + std::to_string(i));
      }
    }
    auto r = Await<etcdserverpb::TxnResponse>(
        [&](auto done) { direct_->Txn(CallContext{}, req, std::move(done)); });
    EXPECT_TRUE(r.ok()) << r.status();
  }
  void Compact(int64_t rev) {
    etcdserverpb::CompactionRequest req;
    req.set_revision(rev);
    req.set_physical(true);
    auto r = Await<etcdserverpb::CompactionResponse>(
        [&](auto done) { direct_->Compact(CallContext{}, req, std::move(done)); });
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // etcd's etcd_debugging_mvcc_watcher_total, -1 if unreadable.
  int EtcdWatchers() {
    auto r = common::HttpGet(common::HostPort{"127.0.0.1", cluster_->ClientPort(0)}, "/metrics",
                             absl::Seconds(20));
    if (!r.ok()) return -1;
    std::smatch m;
    static const std::regex re("\netcd_debugging_mvcc_watcher_total ([0-9]+)");
    if (!std::regex_search(r->body, m, re)) return -1;
    return std::stoi(m[1]);
  }

  std::unique_ptr<EtcdCluster> cluster_;
  common::MetricsRegistry metrics_;
  std::unique_ptr<RemoteBackend> direct_;
  std::unique_ptr<RemoteBackend> upstream_;
  std::unique_ptr<coalesce::WatchCoalescingBackend> layer_;
};

// Scenario 19: N client watchers on one key cost one etcd watcher; a range
// one more; none once they are gone. Unlike the scenario (and etcd's proxy),
// prev_kv is asked of etcd only for the watchers that want it, on a second
// etcd watcher of the key: etcd reads the old value for every event of a
// prev_kv watcher (coalesce/README.md).
TEST_F(WatchCoalescingEtcdTest, EtcdSeesOneWatcherPerGroup) {
  const int b0 = EtcdWatchers();
  ASSERT_GE(b0, 0);
  const int64_t first = Put("k", "old");
  {
    Stream s1(*layer_), s2(*layer_), s3(*layer_);
    s1.Write(Create("k"));
    s2.Write(Create("k"));
    for (Stream* s : {&s1, &s2}) ASSERT_TRUE(s->WaitNth(1).has_value());
    EXPECT_TRUE(WaitFor([&] { return EtcdWatchers() == b0 + 1; }, kPoll)) << EtcdWatchers();
    WatchRequest prev = Create("k");
    prev.mutable_create_request()->set_prev_kv(true);
    s3.Write(prev);
    ASSERT_TRUE(s3.WaitNth(1).has_value());
    EXPECT_TRUE(WaitFor([&] { return EtcdWatchers() == b0 + 2; }, kPoll)) << EtcdWatchers();
    s1.Write(Create("k", "l"));
    ASSERT_TRUE(s1.WaitNth(2).has_value());
    EXPECT_TRUE(WaitFor([&] { return EtcdWatchers() == b0 + 3; }, kPoll)) << EtcdWatchers();
    const int64_t rev = Put("k", "v");
    // The event as each watcher gets it (the first at `rev`).
    auto event_at_rev = [&](Stream& s) {
      std::optional<::mvccpb::Event> found;
      EXPECT_TRUE(s.Wait([&](const auto& v) {
        for (const auto& r : v) {
          if (r.events_size() > 0 && r.events(0).kv().mod_revision() == rev) {
            found = r.events(0);
            return true;
          }
        }
        return false;
      }));
      return found.value_or(::mvccpb::Event{});
    };
    EXPECT_FALSE(event_at_rev(s1).has_prev_kv());
    EXPECT_FALSE(event_at_rev(s2).has_prev_kv());
    const ::mvccpb::Event with_prev = event_at_rev(s3);
    EXPECT_EQ(with_prev.prev_kv().value(), "old");
    EXPECT_EQ(with_prev.prev_kv().mod_revision(), first);
    EXPECT_NE(metrics_.RenderText().find("keel_watch_client_watchers 4"), std::string::npos);
    EXPECT_NE(metrics_.RenderText().find("etcd_grpc_proxy_watchers_coalescing_total 1"),
              std::string::npos);
  }
  EXPECT_TRUE(WaitFor([&] { return EtcdWatchers() == b0; }, kPoll)) << EtcdWatchers();
  EXPECT_NE(metrics_.RenderText().find("keel_watch_upstream_streams 0"), std::string::npos);
}

// Failed creates: the same reply as etcd's, field for field.
TEST_F(WatchCoalescingEtcdTest, RefusedCreatesMatchEtcd) {
  Put("x", "1");
  // An invalid range is refused at once; a negative start is created and
  // then cancelled with compact_revision -1 (etcd 3.4.23).
  const std::vector<std::pair<WatchRequest, size_t>> cases = {{Create("b", "a"), 1},
                                                              {Create("a", "", -3), 2}};
  for (const auto& [c, n] : cases) {
    Stream d(*direct_), l(*layer_);
    d.Write(c);
    l.Write(c);
    for (size_t i = 1; i <= n; ++i) {
      auto want = d.WaitNth(i);
      auto got = l.WaitNth(i);
      ASSERT_TRUE(want.has_value() && got.has_value());
      EXPECT_EQ(Shape(*got), Shape(*want)) << c.ShortDebugString() << " reply " << i;
    }
  }
  // Duplicate client-chosen ids, and auto ids skipping ids in use.
  Stream d(*direct_), l(*layer_);
  for (Stream* s : {&d, &l}) {
    s->Write(Create("a", "", 0, 1));
    s->Write(Create("a", "", 0, 1));
    s->Write(Create("a"));
    s->Write(Create("a"));
  }
  for (size_t i = 1; i <= 4; ++i) {
    auto want = d.WaitNth(i);
    auto got = l.WaitNth(i);
    ASSERT_TRUE(want.has_value() && got.has_value());
    EXPECT_EQ(Shape(*got), Shape(*want)) << i;
  }
  // Cancel: known id -> canceled with the current header; unknown -> nothing.
  for (Stream* s : {&d, &l}) {
    s->Write(CancelReq(42));
    s->Write(CancelReq(1));
  }
  auto want = d.WaitNth(5);
  auto got = l.WaitNth(5);
  ASSERT_TRUE(want.has_value() && got.has_value());
  EXPECT_EQ(Shape(*got), Shape(*want));
}

// The differential test: the same watches on etcd and through the layer,
// random writes; every pair of event streams must be identical.
TEST_F(WatchCoalescingEtcdTest, DifferentialRandomized) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("KEEL_TEST_SEED")) seed = std::strtoull(env, nullptr, 10);
  std::cout << "DifferentialRandomized seed " << seed << " (replay: KEEL_TEST_SEED=" << seed << ")"
            << std::endl;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto rand = [&](uint64_t n) { return rng() % n; };
  auto key = [&] { return std::string("d") + static_cast<char>('a' + rand(5)); };
  auto write = [&] {
    switch (rand(5)) {
      case 0:
        Delete(key());
        break;
      case 1: {
        // Three distinct keys at one revision (etcd refuses duplicates).
        std::vector<std::string> keys;
        const int first = static_cast<int>(rand(3));
        for (int i = 0; i < 3; ++i)
          keys.push_back(std::string("d") + static_cast<char>('a' + first + i));
        Txn(keys);
        break;
      }
      default:
        Put(key(), std::to_string(rand(1000)));
    }
  };
  for (int i = 0; i < 15; ++i) write();

  constexpr int kStreams = 3;
  std::vector<std::unique_ptr<Stream>> direct, layer;
  for (int i = 0; i < kStreams; ++i) {
    direct.push_back(std::make_unique<Stream>(*direct_));
    layer.push_back(std::make_unique<Stream>(*layer_));
  }
  struct Pair {
    int stream;
    int64_t id;
    WatchRequest create;
    bool cancelled = false;
  };
  std::vector<Pair> pairs;
  for (int round = 0; round < 30; ++round) {
    for (uint64_t n = 1 + rand(2); n > 0; --n) {
      const int64_t id = 100 + static_cast<int64_t>(pairs.size());
      const int s = static_cast<int>(rand(kStreams));
      WatchRequest c;
      switch (rand(4)) {
        case 0:
          c = Create("db", "dd");
          break;
        case 1:
          c = Create("d", "e");
          break;
        default:
          c = Create(key());
      }
      WatchCreateRequest* cr = c.mutable_create_request();
      cr->set_watch_id(id);
      if (rand(3) == 0) cr->set_start_revision(1 + rand(30));
      if (rand(3) == 0) cr->set_prev_kv(true);
      if (rand(5) == 0) cr->add_filters(WatchCreateRequest::NOPUT);
      if (rand(5) == 0) cr->add_filters(WatchCreateRequest::NODELETE);
      direct[s]->Write(c);
      layer[s]->Write(c);
      // Created replies must be the same (full header, current revision).
      auto created = [id](const std::vector<WatchResponse>& v) {
        for (const auto& r : v) {
          if (r.watch_id() == id && r.created()) return true;
        }
        return false;
      };
      ASSERT_TRUE(direct[s]->Wait(created));
      ASSERT_TRUE(layer[s]->Wait(created));
      EXPECT_EQ(Shape(direct[s]->For(id)[0]), Shape(layer[s]->For(id)[0])) << c.ShortDebugString();
      pairs.push_back(Pair{s, id, c});
    }
    for (uint64_t n = 2 + rand(6); n > 0; --n) write();
    if (rand(4) == 0 && !pairs.empty()) {
      Pair& p = pairs[rand(pairs.size())];
      if (!p.cancelled) {
        p.cancelled = true;
        // Both sides must have delivered everything so far before the cancel,
        // or the cut would differ: wait for equality first.
        auto& d = *direct[p.stream];
        auto& l = *layer[p.stream];
        EXPECT_TRUE(WaitFor(
            [&] { return EventsOf(d.For(p.id)).size() == EventsOf(l.For(p.id)).size(); }, kPoll));
        d.Write(CancelReq(p.id));
        l.Write(CancelReq(p.id));
        auto canceled = [&p](const std::vector<WatchResponse>& v) {
          for (const auto& r : v) {
            if (r.watch_id() == p.id && r.canceled()) return true;
          }
          return false;
        };
        ASSERT_TRUE(d.Wait(canceled));
        ASSERT_TRUE(l.Wait(canceled));
        EXPECT_EQ(Shape(d.For(p.id).back()), Shape(l.For(p.id).back()));
      }
    }
  }
  const int64_t last = Put("zz", "end");
  size_t total = 0;
  for (const Pair& p : pairs) {
    SCOPED_TRACE("watch " + p.create.ShortDebugString() + " stream " + std::to_string(p.stream));
    auto& d = *direct[p.stream];
    auto& l = *layer[p.stream];
    if (p.cancelled) {
      // Cancelled while events were in flight: each side may cut the same
      // stream at a different point, so one must be a prefix of the other.
      const auto theirs = EventsOf(d.For(p.id));
      const auto ours = EventsOf(l.For(p.id));
      const size_t n = std::min(ours.size(), theirs.size());
      EXPECT_EQ(Dump(std::vector<::mvccpb::Event>(ours.begin(), ours.begin() + n)),
                Dump(std::vector<::mvccpb::Event>(theirs.begin(), theirs.begin() + n)));
      continue;
    }
    EXPECT_TRUE(
        WaitFor([&] { return Dump(EventsOf(d.For(p.id))) == Dump(EventsOf(l.For(p.id))); }, kPoll));
    const auto want = EventsOf(d.For(p.id));
    const auto got = EventsOf(l.For(p.id));
    if (Dump(got) != Dump(want)) {
      std::string shapes;
      for (const auto& r : l.For(p.id)) {
        shapes += Shape(r) + " events";
        for (const auto& e : r.events()) shapes += " " + std::to_string(e.kv().mod_revision());
        shapes += "\n";
      }
      ADD_FAILURE() << "events differ; ours:\n" << shapes << "\netcd's:\n" << Dump(want);
      return;
    }
    total += want.size();
    // Exactly one created on each side.
    int created = 0;
    for (const auto& r : l.For(p.id)) created += r.created() ? 1 : 0;
    EXPECT_EQ(created, 1);
  }
  EXPECT_GT(total, 0u);
  EXPECT_GT(last, 0);
}

// Scenario 27: a compacted start revision gets created then the compaction
// cancel, as from etcd; the same stream then watches from now.
TEST_F(WatchCoalescingEtcdTest, CompactionCancelThenNewWatchOnSameStream) {
  for (int i = 0; i < 5; ++i) Put("c", std::to_string(i));
  const int64_t compact_at = Put("c", "x");
  Compact(compact_at);
  Stream d(*direct_), l(*layer_);
  for (Stream* s : {&d, &l}) s->Write(Create("c", "", 2));
  for (size_t i = 1; i <= 2; ++i) {
    auto want = d.WaitNth(i);
    auto got = l.WaitNth(i);
    ASSERT_TRUE(want.has_value() && got.has_value());
    EXPECT_EQ(Shape(*got), Shape(*want)) << i;
  }
  EXPECT_EQ(l.responses()[1].compact_revision(), compact_at);
  EXPECT_TRUE(l.responses()[1].canceled());
  l.Write(Create("c"));
  ASSERT_TRUE(l.WaitNth(3).has_value());
  const int64_t rev = Put("c", "after");
  auto ev = l.WaitNth(4);
  ASSERT_TRUE(ev.has_value());
  ASSERT_EQ(ev->events_size(), 1);
  EXPECT_EQ(ev->events(0).kv().mod_revision(), rev);
}

// Scenario 24: a progress request gets one {watch_id -1} reply, never ahead
// of the events sent before it; with the watcher caught up, etcd's own.
TEST_F(WatchCoalescingEtcdTest, ProgressRequestMatchesEtcdWhenCaughtUp) {
  Stream d(*direct_), l(*layer_);
  for (Stream* s : {&d, &l}) s->Write(Create("p"));
  ASSERT_TRUE(d.WaitNth(1).has_value());
  ASSERT_TRUE(l.WaitNth(1).has_value());
  const int64_t rev = Put("p", "1");
  ASSERT_TRUE(d.WaitNth(2).has_value());
  ASSERT_TRUE(l.WaitNth(2).has_value());
  WatchRequest progress;
  progress.mutable_progress_request();
  for (Stream* s : {&d, &l}) s->Write(progress);
  auto want = d.WaitNth(3);
  auto got = l.WaitNth(3);
  ASSERT_TRUE(want.has_value() && got.has_value());
  EXPECT_EQ(Shape(*got), Shape(*want));
  EXPECT_EQ(got->header().revision(), rev);
  // Writes elsewhere: the reply may lag etcd's, never the events before it.
  Put("other", "x");
  l.Write(progress);
  got = l.WaitNth(4);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->watch_id(), -1);
  EXPECT_GE(got->header().revision(), rev);
  EXPECT_EQ(got->header().cluster_id(), want->header().cluster_id());
}

// Scenario 28: a half-closed stream keeps delivering.
TEST_F(WatchCoalescingEtcdTest, HalfClosedStreamKeepsDelivering) {
  Stream l(*layer_);
  l.Write(Create("h"));
  l.WritesDone();
  ASSERT_TRUE(l.WaitNth(1).has_value());
  const int64_t rev = Put("h", "1");
  auto ev = l.WaitNth(2);
  ASSERT_TRUE(ev.has_value());
  ASSERT_EQ(ev->events_size(), 1);
  EXPECT_EQ(ev->events(0).kv().mod_revision(), rev);
}

// Scenario 31: etcd restarts under a live watch: no second created, no lost
// or duplicated event.
TEST_F(WatchCoalescingEtcdTest, EtcdRestartIsInvisible) {
  Stream l(*layer_);
  l.Write(Create("r", "s"));
  ASSERT_TRUE(l.WaitNth(1).has_value());
  const int64_t r1 = Put("r1", "a");
  ASSERT_TRUE(l.WaitNth(2).has_value());
  cluster_->Stop(0);
  cluster_->Restart(0);
  ASSERT_TRUE(cluster_->WaitWritable(0));
  int64_t r2 = 0;
  // The direct backend may need a retry while the member comes back.
  ASSERT_TRUE(WaitFor(
      [&] {
        etcdserverpb::PutRequest req;
        req.set_key("r2");
        req.set_value("b");
        auto r = Await<etcdserverpb::PutResponse>(
            [&](auto done) { direct_->Put(CallContext{}, req, std::move(done)); });
        if (r.ok()) r2 = r->header().revision();
        return r.ok();
      },
      kPoll));
  const int64_t r3 = Put("r3", "c");
  ASSERT_TRUE(l.Wait([&](const auto& v) {
    for (const auto& r : v) {
      for (const auto& e : r.events()) {
        if (e.kv().mod_revision() == r3) return true;
      }
    }
    return false;
  }));
  const auto all = l.responses();
  int created = 0;
  std::vector<int64_t> revs;
  for (const auto& r : all) {
    created += r.created() ? 1 : 0;
    EXPECT_FALSE(r.canceled()) << r.ShortDebugString();
    for (const auto& e : r.events()) revs.push_back(e.kv().mod_revision());
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(revs, (std::vector<int64_t>{r1, r2, r3}));
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
