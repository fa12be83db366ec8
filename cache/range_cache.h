#pragma once

// The pure core of the range cache (issue 5; spec/proxy.md 2.4, 3.2): Range
// responses keyed by (identity, normalised request), kept coherent by the
// events of ONE watch on the whole keyspace rather than by the writes this
// proxy happens to see. No I/O, threads or clocks: the glue
// (cache/caching_backend.h) feeds it the watch's events and asks it what to
// serve.
//
// Revisions:
//  - A, the applied revision: every event with revision <= A has been
//    applied. The glue raises it with the watch's created header and with
//    each event (a whole-keyspace watch sees every revision bump: every new
//    revision has at least one event).
//  - H, an entry's own revision: the header revision of the response it
//    stores. An event at revision r on a key inside the entry's interval
//    drops the entry when H < r.
//  - A valid entry reflects the store at max(H, A), and is served with that
//    header revision (other header fields as received).
//
// While the watch is not live the cache holds and serves nothing.

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "api/etcdserverpb/rpc.pb.h"

namespace keel::cache {

// A key interval with etcd's range_end rules, the one place where they live:
//  - empty range_end: the single key `key`;
//  - range_end "\x00": every key >= key (so key "\x00" or "" with range_end
//    "\x00" is the whole keyspace, spec 2.4 / #22397);
//  - otherwise [key, range_end), empty when range_end <= key.
// Immutable value type; thread-safe.
class KeyInterval {
 public:
  // The interval a request's (key, range_end) pair names.
  static KeyInterval FromRange(std::string_view key, std::string_view range_end);

  // True when `key` lies inside the interval.
  bool Contains(std::string_view key) const;
  // True for a single-key interval (empty range_end).
  bool is_point() const { return point_; }
  // True when the interval has no upper bound (range_end "\x00").
  bool unbounded() const { return unbounded_; }
  // The first key.
  const std::string& begin() const { return begin_; }
  // The exclusive upper bound; meaningful only when !is_point() && !unbounded().
  const std::string& end() const { return end_; }

 private:
  std::string begin_;
  std::string end_;
  bool point_ = false;
  bool unbounded_ = false;
};

// Identifies one fill: a Range forwarded upstream whose response may be
// inserted when it comes back (see RangeCache::BeginFill).
using FillId = uint64_t;

// What RangeCache::FinishFill did with a response.
enum class FillResult {
  kInserted,      // cached
  kNotLive,       // the watch is not live, or the cache was flushed since BeginFill
  kStale,         // an event the response does not reflect was applied already
  kTooLarge,      // larger than max_bytes / 8
  kNotCacheable,  // historical (revision != 0) request
};

// The cache. Thread-compatible: the owner (CachingBackend) locks.
class RangeCache {
 public:
  // The fixed per-entry cost counted besides its strings and response
  // (list node, hash and index nodes, KeyInterval, bookkeeping).
  static constexpr uint64_t kEntryOverhead = 256;

  // `max_bytes` bounds the sum of entry sizes (see EntrySize); least
  // recently used entries are evicted past it.
  explicit RangeCache(uint64_t max_bytes);
  RangeCache(const RangeCache&) = delete;
  RangeCache& operator=(const RangeCache&) = delete;

  // True for requests the cache may answer: latest-revision reads only
  // (revision == 0); historical reads always pass through.
  static bool Cacheable(const ::etcdserverpb::RangeRequest& request);
  // The request as the cache keys it: serializable cleared, and ascending
  // sort by key written as no sort (etcd returns the same order).
  static ::etcdserverpb::RangeRequest Normalize(::etcdserverpb::RangeRequest request);

  // ----- the watch -----

  // The watch is live and has delivered everything up to `revision` (its
  // created header): A = revision. Drops every entry and pending fill.
  void Start(int64_t revision);
  // The watch is lost (ended, cancelled, refused): drops everything, serves
  // nothing until the next Start.
  void Stop();
  // Drops every entry and pending fill; stays live with the same A (e.g.
  // after an auth change, which no event reports).
  void Flush();
  // One event on `key` at `revision`: drops each entry whose interval
  // contains `key` and whose H < revision, marks the pending fills over
  // `key`, then A = max(A, revision - 1): other events of the same revision
  // may still come. Ignored while not live. Cost: the point entries of `key`
  // (hash lookup), every range entry beginning at or before `key`, and
  // every pending fill.
  void ApplyEvent(std::string_view key, int64_t revision);
  // A = max(A, revision): every event up to `revision` has been applied (the
  // end of a watch response, which always holds whole revisions, or a
  // progress notification). Ignored while not live.
  void Advance(int64_t revision);

  // True between Start and Stop: the cache holds and serves entries.
  bool live() const { return live_; }
  // A; 0 while not live.
  int64_t applied_revision() const { return applied_; }

  // ----- reads -----

  // The cached response for `request` as `identity` sees it, with header
  // revision max(H, A), marked most recently used; nullopt when absent, not
  // cacheable or not live.
  std::optional<::etcdserverpb::RangeResponse> Lookup(std::string_view identity,
                                                      const ::etcdserverpb::RangeRequest& request);

  // Whether Lookup could answer `request` as `identity` sees it (without
  // marking anything used).
  bool Has(std::string_view identity, const ::etcdserverpb::RangeRequest& request) const;
  // The bytes the entry Lookup would answer from takes (its response, keys
  // and overhead, as counted against max_bytes); nullopt when !Has.
  std::optional<uint64_t> HeldBytes(std::string_view identity,
                                    const ::etcdserverpb::RangeRequest& request) const;

  // Registers a Range about to be forwarded upstream, before it is sent.
  // Every BeginFill must be followed by FinishFill or AbandonFill.
  FillId BeginFill(const ::etcdserverpb::RangeRequest& request);
  // Inserts the upstream `response` to the request registered as `fill`,
  // unless it may be stale: it is refused when the cache was flushed or
  // stopped since BeginFill, when H is older than an event applied before
  // BeginFill (whether such events touched the interval is not recorded), or
  // when an event on the request's interval with a revision > H was applied
  // since BeginFill. Replaces an entry for the same
  // key; may evict others.
  FillResult FinishFill(FillId fill, std::string_view identity,
                        const ::etcdserverpb::RangeRequest& request,
                        ::etcdserverpb::RangeResponse response);
  // Forgets a fill whose Range failed.
  void AbandonFill(FillId fill);

  // ----- accounting -----

  // Number of entries.
  size_t size() const { return lru_.size(); }
  // Sum of entry sizes (see EntrySize).
  uint64_t bytes() const { return bytes_; }
  // Entries evicted for space so far (not those invalidated or flushed).
  uint64_t evictions() const { return evictions_; }
  // What one entry costs: its cache key twice (entry and lookup index), its
  // interval's keys, the index's copy of its first key, the response's
  // ByteSizeLong and kEntryOverhead.
  static uint64_t EntrySize(const std::string& cache_key, const KeyInterval& interval,
                            const ::etcdserverpb::RangeResponse& response);
  // The same for `request` as `identity` would cache it.
  static uint64_t EntrySize(std::string_view identity, const ::etcdserverpb::RangeRequest& request,
                            const ::etcdserverpb::RangeResponse& response);
  // Fills registered and not finished.
  size_t pending_fills() const { return fills_.size(); }

 private:
  struct Entry {
    std::string cache_key;  // identity + normalised request
    KeyInterval interval;
    ::etcdserverpb::RangeResponse response;
    int64_t revision = 0;  // H
    uint64_t bytes = 0;
    std::multimap<std::string, Entry*>::iterator range_pos;  // when !interval.is_point()
  };
  struct Fill {
    KeyInterval interval;
    uint64_t generation = 0;
    int64_t seen_at_begin = 0;       // seen_ at BeginFill
    int64_t max_event_revision = 0;  // highest event on the interval since BeginFill
  };
  using Lru = std::list<Entry>;

  static std::string CacheKey(std::string_view identity,
                              const ::etcdserverpb::RangeRequest& normalised);
  void Remove(Lru::iterator it);
  void Clear();

  const uint64_t max_bytes_;
  bool live_ = false;
  int64_t applied_ = 0;
  int64_t seen_ = 0;         // highest revision of any event applied (may be A + 1)
  uint64_t generation_ = 0;  // bumped by Start, Stop and Flush
  uint64_t bytes_ = 0;
  uint64_t evictions_ = 0;
  FillId next_fill_ = 1;

  Lru lru_;  // front = most recently used
  std::unordered_map<std::string, Lru::iterator> by_key_;
  // Point entries by their key; range entries by their first key.
  std::unordered_map<std::string, std::unordered_set<Entry*>> points_;
  std::multimap<std::string, Entry*> ranges_;
  std::unordered_map<FillId, Fill> fills_;
};

}  // namespace keel::cache
