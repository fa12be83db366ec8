#include "cache/range_cache.h"

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace keel::cache {
namespace {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;

const std::string kNul(1, '\0');

RangeRequest Req(const std::string& key, const std::string& range_end = "") {
  RangeRequest r;
  r.set_key(key);
  r.set_range_end(range_end);
  return r;
}

RangeResponse Resp(int64_t revision, const std::vector<std::pair<std::string, std::string>>& kvs) {
  RangeResponse r;
  r.mutable_header()->set_revision(revision);
  r.mutable_header()->set_cluster_id(7);
  r.mutable_header()->set_member_id(8);
  r.mutable_header()->set_raft_term(9);
  for (const auto& [k, v] : kvs) {
    auto* kv = r.add_kvs();
    kv->set_key(k);
    kv->set_value(v);
  }
  r.set_count(static_cast<int64_t>(kvs.size()));
  return r;
}

// Inserts through a fill registered now.
FillResult Put(RangeCache& c, const std::string& identity, const RangeRequest& req,
               RangeResponse resp) {
  FillId f = c.BeginFill(req);
  return c.FinishFill(f, identity, req, std::move(resp));
}

TEST(KeyInterval, EtcdRangeEndRules) {
  KeyInterval point = KeyInterval::FromRange("a", "");
  EXPECT_TRUE(point.is_point());
  EXPECT_TRUE(point.Contains("a"));
  EXPECT_FALSE(point.Contains("ab"));
  EXPECT_FALSE(point.Contains(""));

  KeyInterval range = KeyInterval::FromRange("b", "d");
  EXPECT_FALSE(range.Contains("a"));
  EXPECT_TRUE(range.Contains("b"));
  EXPECT_TRUE(range.Contains("czzz"));
  EXPECT_FALSE(range.Contains("d"));

  KeyInterval from_key = KeyInterval::FromRange("m", kNul);
  EXPECT_TRUE(from_key.unbounded());
  EXPECT_FALSE(from_key.Contains("l"));
  EXPECT_TRUE(from_key.Contains("m"));
  EXPECT_TRUE(from_key.Contains("\xff\xff"));

  KeyInterval all = KeyInterval::FromRange(kNul, kNul);  // get --prefix ""
  EXPECT_TRUE(all.Contains(kNul));
  EXPECT_TRUE(all.Contains("a"));
  EXPECT_TRUE(all.Contains(std::string("\x01", 1)));

  KeyInterval all_from_empty = KeyInterval::FromRange("", kNul);
  EXPECT_TRUE(all_from_empty.Contains(""));
  EXPECT_TRUE(all_from_empty.Contains(kNul));
  EXPECT_TRUE(all_from_empty.Contains("zz"));

  KeyInterval empty_key_point = KeyInterval::FromRange("", "");
  EXPECT_TRUE(empty_key_point.Contains(""));
  EXPECT_FALSE(empty_key_point.Contains(kNul));

  KeyInterval inverted = KeyInterval::FromRange("d", "b");  // etcd answers nothing
  EXPECT_FALSE(inverted.Contains("c"));
  EXPECT_FALSE(inverted.Contains("d"));

  // A range end with a NUL inside is an ordinary bound, not "+infinity".
  KeyInterval nul_inside = KeyInterval::FromRange("a", std::string("a\0", 2));
  EXPECT_TRUE(nul_inside.Contains("a"));
  EXPECT_FALSE(nul_inside.Contains(std::string("a\0", 2)));
}

TEST(RangeCache, NotLiveHoldsAndServesNothing) {
  RangeCache c(1 << 20);
  EXPECT_EQ(Put(c, "", Req("a"), Resp(5, {{"a", "1"}})), FillResult::kNotLive);
  EXPECT_FALSE(c.Lookup("", Req("a")).has_value());
  c.Start(5);
  ASSERT_EQ(Put(c, "", Req("a"), Resp(5, {{"a", "1"}})), FillResult::kInserted);
  EXPECT_TRUE(c.Lookup("", Req("a")).has_value());
  c.Stop();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.bytes(), 0u);
  EXPECT_FALSE(c.Lookup("", Req("a")).has_value());
  c.Start(6);
  EXPECT_FALSE(c.Lookup("", Req("a")).has_value());
}

TEST(RangeCache, InvalidationOnlyWhenEntryIsOlderThanEvent) {
  RangeCache c(1 << 20);
  c.Start(10);
  ASSERT_EQ(Put(c, "", Req("a"), Resp(10, {{"a", "1"}})), FillResult::kInserted);
  c.ApplyEvent("a", 10);  // the response already reflects revision 10
  EXPECT_TRUE(c.Lookup("", Req("a")).has_value());
  c.ApplyEvent("b", 11);  // another key
  EXPECT_TRUE(c.Lookup("", Req("a")).has_value());
  c.ApplyEvent("ab", 12);  // a key that only starts with "a"
  EXPECT_TRUE(c.Lookup("", Req("a")).has_value());
  c.ApplyEvent("a", 13);
  EXPECT_FALSE(c.Lookup("", Req("a")).has_value());
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.bytes(), 0u);
}

TEST(RangeCache, RangeAndOpenEndedEntriesAreInvalidated) {
  RangeCache c(1 << 20);
  c.Start(3);
  ASSERT_EQ(Put(c, "", Req("b", "d"), Resp(3, {})), FillResult::kInserted);
  ASSERT_EQ(Put(c, "", Req("m", kNul), Resp(3, {})), FillResult::kInserted);   // --from-key
  ASSERT_EQ(Put(c, "", Req(kNul, kNul), Resp(3, {})), FillResult::kInserted);  // --prefix ""
  ASSERT_EQ(c.size(), 3u);

  c.ApplyEvent("a", 4);  // only "everything" covers "a"
  EXPECT_FALSE(c.Lookup("", Req(kNul, kNul)).has_value());
  EXPECT_TRUE(c.Lookup("", Req("b", "d")).has_value());
  EXPECT_TRUE(c.Lookup("", Req("m", kNul)).has_value());

  c.ApplyEvent("d", 5);  // the exclusive end of [b, d)
  EXPECT_TRUE(c.Lookup("", Req("b", "d")).has_value());
  c.ApplyEvent("c", 6);
  EXPECT_FALSE(c.Lookup("", Req("b", "d")).has_value());

  c.ApplyEvent("l", 7);
  EXPECT_TRUE(c.Lookup("", Req("m", kNul)).has_value());
  c.ApplyEvent("\xff", 8);  // far past m: still inside "all keys >= m"
  EXPECT_FALSE(c.Lookup("", Req("m", kNul)).has_value());
  EXPECT_EQ(c.size(), 0u);
}

TEST(RangeCache, ServedRevisionIsMaxOfEntryAndApplied) {
  RangeCache c(1 << 20);
  c.Start(5);
  ASSERT_EQ(Put(c, "", Req("a"), Resp(5, {{"a", "1"}})), FillResult::kInserted);
  auto hit = c.Lookup("", Req("a"));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->header().revision(), 5);
  c.ApplyEvent("b", 8);
  // Revision 8 may have more events (one on "a"?) until the response ends.
  EXPECT_EQ(c.Lookup("", Req("a"))->header().revision(), 7);
  c.Advance(8);
  hit = c.Lookup("", Req("a"));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->header().revision(), 8);
  EXPECT_EQ(hit->header().cluster_id(), 7u);
  EXPECT_EQ(hit->header().member_id(), 8u);
  EXPECT_EQ(hit->header().raft_term(), 9u);
  ASSERT_EQ(hit->kvs_size(), 1);
  EXPECT_EQ(hit->kvs(0).value(), "1");
  c.Advance(12);  // progress notification
  EXPECT_EQ(c.Lookup("", Req("a"))->header().revision(), 12);
}

TEST(RangeCache, NormalisedRequestsShareAnEntry) {
  RangeCache c(1 << 20);
  c.Start(1);
  RangeRequest linear = Req("a");
  ASSERT_EQ(Put(c, "", linear, Resp(1, {{"a", "1"}})), FillResult::kInserted);
  RangeRequest serializable = Req("a");
  serializable.set_serializable(true);
  EXPECT_TRUE(c.Lookup("", serializable).has_value());
  RangeRequest ascend_by_key = Req("a");
  ascend_by_key.set_sort_order(RangeRequest::ASCEND);
  ascend_by_key.set_sort_target(RangeRequest::KEY);
  EXPECT_TRUE(c.Lookup("", ascend_by_key).has_value());
  RangeRequest descend = Req("a");
  descend.set_sort_order(RangeRequest::DESCEND);
  EXPECT_FALSE(c.Lookup("", descend).has_value());
  RangeRequest limited = Req("a");
  limited.set_limit(1);
  EXPECT_FALSE(c.Lookup("", limited).has_value());
  RangeRequest keys_only = Req("a");
  keys_only.set_keys_only(true);
  EXPECT_FALSE(c.Lookup("", keys_only).has_value());
}

TEST(RangeCache, HistoricalReadsAreNeitherCachedNorServed) {
  RangeCache c(1 << 20);
  c.Start(10);
  RangeRequest old = Req("a");
  old.set_revision(4);
  EXPECT_FALSE(RangeCache::Cacheable(old));
  EXPECT_EQ(Put(c, "", old, Resp(10, {{"a", "0"}})), FillResult::kNotCacheable);
  EXPECT_FALSE(c.Lookup("", old).has_value());
  EXPECT_EQ(c.size(), 0u);
}

TEST(RangeCache, IdentitiesAreIsolated) {
  RangeCache c(1 << 20);
  c.Start(1);
  ASSERT_EQ(Put(c, "root-token", Req("/secret"), Resp(1, {{"/secret", "s"}})),
            FillResult::kInserted);
  EXPECT_TRUE(c.Lookup("root-token", Req("/secret")).has_value());
  EXPECT_FALSE(c.Lookup("alice-token", Req("/secret")).has_value());
  EXPECT_FALSE(c.Lookup("", Req("/secret")).has_value());
  // Identities that are prefixes of each other do not collide.
  ASSERT_EQ(Put(c, "1", Req("k"), Resp(1, {{"k", "one"}})), FillResult::kInserted);
  EXPECT_FALSE(c.Lookup("", Req("k")).has_value());
  EXPECT_FALSE(c.Lookup("11", Req("k")).has_value());
}

TEST(RangeCache, LruEvictionByBytes) {
  const std::string value(400, 'x');
  // Measure one entry (all of them have the same size), then give the cache
  // room for exactly eight: each may take up to 1/8 of the budget.
  uint64_t entry_bytes = 0;
  {
    RangeCache scratch(1 << 20);
    scratch.Start(1);
    ASSERT_EQ(Put(scratch, "", Req("k0"), Resp(1, {{"k0", value}})), FillResult::kInserted);
    entry_bytes = scratch.bytes();
  }
  ASSERT_GT(entry_bytes, value.size());
  RangeCache big(8 * entry_bytes);
  big.Start(1);
  for (int i = 0; i < 8; ++i) {
    std::string k = "k" + std::to_string(i);
    ASSERT_EQ(Put(big, "", Req(k), Resp(1, {{k, value}})), FillResult::kInserted) << i;
  }
  EXPECT_EQ(big.evictions(), 0u);
  EXPECT_EQ(big.bytes(), 8 * entry_bytes);
  ASSERT_EQ(big.size(), 8u);
  // Touch k0 so that k1 is the least recently used, then add one more.
  ASSERT_TRUE(big.Lookup("", Req("k0")).has_value());
  ASSERT_EQ(Put(big, "", Req("k8"), Resp(1, {{"k8", value}})), FillResult::kInserted);
  EXPECT_EQ(big.evictions(), 1u);
  EXPECT_EQ(big.size(), 8u);
  EXPECT_TRUE(big.Lookup("", Req("k0")).has_value());
  EXPECT_FALSE(big.Lookup("", Req("k1")).has_value());
  EXPECT_TRUE(big.Lookup("", Req("k8")).has_value());
  EXPECT_EQ(big.bytes(), 8 * entry_bytes);
  // Evicted entries leave the index too: an event on k1 finds nothing.
  big.ApplyEvent("k1", 2);
  EXPECT_EQ(big.size(), 8u);
}

TEST(RangeCache, EntryLargerThanAnEighthIsNotCached) {
  RangeCache c(16000);  // entries up to 2000 bytes, overhead included
  c.Start(1);
  EXPECT_EQ(Put(c, "", Req("a"), Resp(1, {{"a", std::string(2000, 'x')}})), FillResult::kTooLarge);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(Put(c, "", Req("a"), Resp(1, {{"a", std::string(1500, 'x')}})), FillResult::kInserted);
}

TEST(RangeCache, SizeCountsKeyCopiesAndAFixedOverhead) {
  // --range-cache-max-bytes must bound real memory: the key is held in the
  // cache key, its lookup index, the interval and the interval index, and
  // every entry has fixed costs besides its strings.
  const std::string key(1000, 'k');
  RangeCache c(1 << 20);
  c.Start(1);
  const RangeResponse response = Resp(1, {{key, "v"}});
  ASSERT_EQ(Put(c, "", Req(key), response), FillResult::kInserted);
  EXPECT_GE(c.bytes(), 4 * key.size() + response.ByteSizeLong() + RangeCache::kEntryOverhead);
  EXPECT_EQ(c.bytes(), RangeCache::EntrySize("", Req(key), response));
  // A range entry also counts its end.
  RangeCache r(1 << 20);
  r.Start(1);
  const std::string end(1000, 'z');
  ASSERT_EQ(Put(r, "", Req(key, end), response), FillResult::kInserted);
  EXPECT_GE(r.bytes(), 5 * key.size() + response.ByteSizeLong() + RangeCache::kEntryOverhead);
}

TEST(RangeCache, ReplacingAnEntryKeepsAccountingExact) {
  RangeCache c(1 << 20);
  c.Start(1);
  ASSERT_EQ(Put(c, "", Req("a"), Resp(1, {{"a", "short"}})), FillResult::kInserted);
  const uint64_t before = c.bytes();
  ASSERT_EQ(Put(c, "", Req("a"), Resp(1, {{"a", "a much longer value"}})), FillResult::kInserted);
  EXPECT_EQ(c.size(), 1u);
  EXPECT_GT(c.bytes(), before);
  EXPECT_EQ(c.Lookup("", Req("a"))->kvs(0).value(), "a much longer value");
  c.ApplyEvent("a", 2);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.bytes(), 0u);
}

TEST(RangeCache, FillRacingAnEventIsRefused) {
  RangeCache c(1 << 20);
  c.Start(5);
  // The read is sent at A=5; an event on its key at 7 is applied before the
  // response (evaluated at 6) comes back: inserting it would be stale forever.
  FillId f = c.BeginFill(Req("a"));
  c.ApplyEvent("a", 7);
  EXPECT_EQ(c.FinishFill(f, "", Req("a"), Resp(6, {{"a", "old"}})), FillResult::kStale);
  // Evaluated at 7 it reflects the event: fine.
  f = c.BeginFill(Req("a"));
  c.ApplyEvent("b", 8);  // not its key
  c.Advance(8);
  EXPECT_EQ(c.FinishFill(f, "", Req("a"), Resp(7, {{"a", "new"}})), FillResult::kInserted);
  EXPECT_EQ(c.Lookup("", Req("a"))->header().revision(), 8);
  // A lagging member answers from before A at BeginFill: unknown events.
  f = c.BeginFill(Req("c"));
  EXPECT_EQ(c.FinishFill(f, "", Req("c"), Resp(7, {})), FillResult::kStale);
  // Range fills see events anywhere in their interval.
  f = c.BeginFill(Req("a", kNul));
  c.ApplyEvent("zz", 9);
  EXPECT_EQ(c.FinishFill(f, "", Req("a", kNul), Resp(8, {})), FillResult::kStale);
  EXPECT_EQ(c.pending_fills(), 0u);
}

TEST(RangeCache, FlushAndStopCancelPendingFills) {
  RangeCache c(1 << 20);
  c.Start(5);
  FillId f = c.BeginFill(Req("a"));
  c.Flush();
  EXPECT_TRUE(c.live());
  EXPECT_EQ(c.applied_revision(), 5);
  EXPECT_EQ(c.FinishFill(f, "", Req("a"), Resp(5, {{"a", "1"}})), FillResult::kNotLive);
  f = c.BeginFill(Req("a"));
  c.Stop();
  c.Start(9);
  EXPECT_EQ(c.FinishFill(f, "", Req("a"), Resp(9, {{"a", "1"}})), FillResult::kNotLive);
  f = c.BeginFill(Req("a"));
  c.AbandonFill(f);
  EXPECT_EQ(c.pending_fills(), 0u);
  EXPECT_EQ(c.size(), 0u);
}

// ----- randomized, against a model of the store -----

struct ModelKv {
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
};
using Store = std::map<std::string, ModelKv>;

// The store at every revision, as etcd would answer a Range at it.
class Model {
 public:
  Model() { states_.push_back(Store{}), states_.push_back(Store{}); }  // revisions 0 and 1
  int64_t revision() const { return static_cast<int64_t>(states_.size()) - 1; }

  // One revision: puts (value non-empty) and deletes; returns the event keys.
  std::vector<std::string> Write(const std::map<std::string, std::string>& ops) {
    Store next = states_.back();
    const int64_t rev = revision() + 1;
    std::vector<std::string> events;
    for (const auto& [key, value] : ops) {
      if (value.empty()) {
        if (next.erase(key) > 0) events.push_back(key);
        continue;
      }
      ModelKv& kv = next[key];
      if (kv.create_revision == 0) kv.create_revision = rev;
      kv.mod_revision = rev;
      ++kv.version;
      kv.value = value;
      events.push_back(key);
    }
    if (events.empty()) return events;  // etcd does not bump the revision
    states_.push_back(std::move(next));
    return events;
  }

  RangeResponse Range(const RangeRequest& req, int64_t at) const {
    const Store& s = states_.at(static_cast<size_t>(at));
    KeyInterval interval = KeyInterval::FromRange(req.key(), req.range_end());
    RangeResponse r;
    r.mutable_header()->set_revision(at);
    r.mutable_header()->set_cluster_id(7);
    int64_t count = 0;
    for (const auto& [key, kv] : s) {
      if (!interval.Contains(key)) continue;
      ++count;
      if (req.limit() > 0 && r.kvs_size() >= req.limit()) continue;
      auto* out = r.add_kvs();
      out->set_key(key);
      out->set_value(kv.value);
      out->set_create_revision(kv.create_revision);
      out->set_mod_revision(kv.mod_revision);
      out->set_version(kv.version);
    }
    r.set_count(count);
    r.set_more(req.limit() > 0 && count > req.limit());
    return r;
  }

 private:
  std::vector<Store> states_;
};

uint64_t SeedFromEnv() {
  if (const char* s = std::getenv("KEEL_TEST_SEED"); s != nullptr)
    return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

TEST(RangeCacheRandomized, NeverServesWhatTheStoreDidNotHoldAtTheClaimedRevision) {
  const uint64_t seed = SeedFromEnv();
  std::cout << "seed " << seed << " (replay with KEEL_TEST_SEED=" << seed << ")" << std::endl;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };

  const std::vector<std::string> keys = {"a", "aa", "ab", "b", "ba", "c", "m", "z", kNul, "\xff"};
  std::vector<RangeRequest> requests;
  for (const std::string& k : keys) requests.push_back(Req(k));
  // Keys nobody writes: their entries live until evicted.
  for (int i = 0; i < 20; ++i) requests.push_back(Req("q" + std::to_string(i)));
  requests.push_back(Req("a", "b"));
  requests.push_back(Req("a", "c"));
  requests.push_back(Req("b", "z"));
  requests.push_back(Req("ab", "ba"));
  requests.push_back(Req("b", kNul));
  requests.push_back(Req("m", kNul));
  requests.push_back(Req(kNul, kNul));
  requests.push_back(Req("", kNul));
  RangeRequest limited = Req(kNul, kNul);
  limited.set_limit(2);
  requests.push_back(limited);
  const std::vector<std::string> identities = {"", "tok", "other-token"};

  Model model;
  // A small budget, so that eviction happens too.
  constexpr uint64_t kBudget = 6000;
  RangeCache cache(kBudget);
  std::vector<std::pair<std::string, int64_t>> undelivered;  // events, in order
  struct Pending {
    FillId id;
    RangeRequest request;
    std::string identity;
  };
  std::vector<Pending> pending;
  int hits = 0;
  int inserted = 0;
  uint64_t max_bytes_seen = 0;

  auto restart = [&] {
    cache.Stop();
    undelivered.clear();
    cache.Start(model.revision());
    pending.clear();
  };
  restart();

  for (int step = 0; step < 20000; ++step) {
    const size_t op = pick(1000);
    if (op < 60) {  // a write of one to three keys in one revision
      std::map<std::string, std::string> ops;
      const size_t n = 1 + pick(3);
      for (size_t i = 0; i < n; ++i) {
        ops[keys[pick(keys.size())]] = pick(4) == 0 ? "" : "v" + std::to_string(step);
      }
      const int64_t before = model.revision();
      std::vector<std::string> events = model.Write(ops);
      for (const std::string& k : events) undelivered.emplace_back(k, before + 1);
    } else if (op < 260) {  // the watch delivers some events
      size_t n = std::min(undelivered.size(), 1 + pick(6));
      for (size_t i = 0; i < n; ++i) cache.ApplyEvent(undelivered[i].first, undelivered[i].second);
      // A response ends at a revision boundary; lookups in the middle of a
      // revision (before its Advance) must be right too.
      if (n > 0 &&
          (n == undelivered.size() || undelivered[n].second != undelivered[n - 1].second)) {
        cache.Advance(undelivered[n - 1].second);
      }
      undelivered.erase(undelivered.begin(), undelivered.begin() + static_cast<long>(n));
    } else if (op < 460) {  // a read is forwarded upstream
      const RangeRequest& req = requests[pick(requests.size())];
      pending.push_back(Pending{cache.BeginFill(req), req, identities[pick(identities.size())]});
    } else if (op < 660 && !pending.empty()) {  // its answer, maybe from a lagging member
      const size_t i = pick(pending.size());
      Pending p = pending[i];
      pending.erase(pending.begin() + static_cast<long>(i));
      if (pick(10) == 0) {
        cache.AbandonFill(p.id);
        continue;
      }
      const int64_t at = std::max<int64_t>(1, model.revision() - static_cast<int64_t>(pick(4)));
      if (cache.FinishFill(p.id, p.identity, p.request, model.Range(p.request, at)) ==
          FillResult::kInserted) {
        ++inserted;
      }
    } else if (op < 995) {  // a lookup
      const RangeRequest& req = requests[pick(requests.size())];
      std::optional<RangeResponse> hit = cache.Lookup(identities[pick(identities.size())], req);
      if (!hit.has_value()) continue;
      ++hits;
      const int64_t claimed = hit->header().revision();
      ASSERT_LE(claimed, model.revision()) << "step " << step;
      ASSERT_GE(claimed, cache.applied_revision()) << "step " << step;
      RangeResponse expected = model.Range(req, claimed);
      ASSERT_EQ(hit->SerializeAsString(), expected.SerializeAsString())
          << "step " << step << " key '" << req.key() << "' end '" << req.range_end() << "' at "
          << claimed << "\n got " << hit->ShortDebugString() << "\n want "
          << expected.ShortDebugString();
    } else if (op < 998) {
      if (pick(5) == 0) cache.Flush();
    } else if (pick(5) == 0) {
      restart();
    }
    ASSERT_LE(cache.bytes(), kBudget);
    max_bytes_seen = std::max<uint64_t>(max_bytes_seen, cache.bytes());
  }
  std::cout << "hits " << hits << " inserted " << inserted << " evictions " << cache.evictions()
            << " max bytes " << max_bytes_seen << std::endl;
  // The run must exercise the interesting paths, or it proves nothing.
  EXPECT_GT(hits, 100);
  EXPECT_GT(cache.evictions(), 0u);
}

}  // namespace
}  // namespace keel::cache
