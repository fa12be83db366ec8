#include "cache/range_cache.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace keel::cache {

using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;

KeyInterval KeyInterval::FromRange(std::string_view key, std::string_view range_end) {
  KeyInterval interval;
  interval.begin_ = std::string(key);
  if (range_end.empty()) {
    interval.point_ = true;
  } else if (range_end == std::string_view("\0", 1)) {
    // etcd: range_end "\x00" means every key >= key (clientv3 WithFromKey,
    // and WithPrefix on an empty key). etcd's proxy misses this (#22397).
    interval.unbounded_ = true;
  } else {
    interval.end_ = std::string(range_end);
  }
  return interval;
}

bool KeyInterval::Contains(std::string_view key) const {
  if (point_) return key == begin_;
  if (key < std::string_view(begin_)) return false;
  return unbounded_ || key < std::string_view(end_);
}

uint64_t RangeCache::EntrySize(const std::string& cache_key, const KeyInterval& interval,
                               const RangeResponse& response) {
  // The cache key twice (the entry and by_key_), the interval's keys and the
  // index's copy of its first key, the response, and the fixed cost of the
  // entry, its list node and its index nodes.
  return 2 * cache_key.size() + 2 * interval.begin().size() + interval.end().size() +
         response.ByteSizeLong() + kEntryOverhead;
}

uint64_t RangeCache::EntrySize(std::string_view identity, const RangeRequest& request,
                               const RangeResponse& response) {
  return EntrySize(CacheKey(identity, Normalize(request)),
                   KeyInterval::FromRange(request.key(), request.range_end()), response);
}

RangeCache::RangeCache(uint64_t max_bytes) : max_bytes_(max_bytes) {}

bool RangeCache::Cacheable(const RangeRequest& request) { return request.revision() == 0; }

RangeRequest RangeCache::Normalize(RangeRequest request) {
  request.set_serializable(false);
  // etcd's proxy does the same: ascending by key is the store's own order.
  if (request.sort_order() == RangeRequest::ASCEND && request.sort_target() == RangeRequest::KEY) {
    request.set_sort_order(RangeRequest::NONE);
  }
  return request;
}

std::string RangeCache::CacheKey(std::string_view identity, const RangeRequest& normalised) {
  // Length-prefixed identity so that no (identity, request) pair can collide
  // with another. RangeRequest has no map fields: its serialisation is stable.
  std::string key = std::to_string(identity.size());
  key.push_back(':');
  key.append(identity);
  normalised.AppendToString(&key);
  return key;
}

void RangeCache::Start(int64_t revision) {
  Clear();
  live_ = true;
  applied_ = revision;
  seen_ = revision;
}

void RangeCache::Stop() {
  Clear();
  live_ = false;
  applied_ = 0;
  seen_ = 0;
}

void RangeCache::Flush() { Clear(); }

void RangeCache::Clear() {
  ++generation_;
  lru_.clear();
  by_key_.clear();
  points_.clear();
  ranges_.clear();
  fills_.clear();
  bytes_ = 0;
}

void RangeCache::Remove(Lru::iterator it) {
  Entry* entry = &*it;
  if (entry->interval.is_point()) {
    auto p = points_.find(entry->interval.begin());
    if (p != points_.end()) {
      p->second.erase(entry);
      if (p->second.empty()) points_.erase(p);
    }
  } else {
    ranges_.erase(entry->range_pos);
  }
  by_key_.erase(entry->cache_key);
  bytes_ -= entry->bytes;
  lru_.erase(it);
}

void RangeCache::ApplyEvent(std::string_view key, int64_t revision) {
  if (!live_) return;
  std::vector<Entry*> drop;
  if (auto p = points_.find(std::string(key)); p != points_.end()) {
    for (Entry* e : p->second) {
      if (e->revision < revision) drop.push_back(e);
    }
  }
  // Range entries starting at or before `key`; each checked against its end.
  const auto last = ranges_.upper_bound(std::string(key));
  for (auto it = ranges_.begin(); it != last; ++it) {
    Entry* e = it->second;
    if (e->revision < revision && e->interval.Contains(key)) drop.push_back(e);
  }
  for (Entry* e : drop) Remove(by_key_.at(e->cache_key));
  for (auto& [id, fill] : fills_) {
    if (fill.interval.Contains(key)) {
      fill.max_event_revision = std::max(fill.max_event_revision, revision);
    }
  }
  applied_ = std::max(applied_, revision - 1);
  seen_ = std::max(seen_, revision);
}

void RangeCache::Advance(int64_t revision) {
  if (!live_) return;
  applied_ = std::max(applied_, revision);
  seen_ = std::max(seen_, revision);
}

std::optional<RangeResponse> RangeCache::Lookup(std::string_view identity,
                                                const RangeRequest& request) {
  if (!live_ || !Cacheable(request)) return std::nullopt;
  auto it = by_key_.find(CacheKey(identity, Normalize(request)));
  if (it == by_key_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  const Entry& entry = *it->second;
  RangeResponse response = entry.response;
  response.mutable_header()->set_revision(std::max(entry.revision, applied_));
  return response;
}

bool RangeCache::Has(std::string_view identity, const RangeRequest& request) const {
  return HeldBytes(identity, request).has_value();
}

std::optional<uint64_t> RangeCache::HeldBytes(std::string_view identity,
                                              const RangeRequest& request) const {
  if (!live_ || !Cacheable(request)) return std::nullopt;
  auto it = by_key_.find(CacheKey(identity, Normalize(request)));
  if (it == by_key_.end()) return std::nullopt;
  return it->second->bytes;
}

FillId RangeCache::BeginFill(const RangeRequest& request) {
  const FillId id = next_fill_++;
  fills_.emplace(
      id, Fill{KeyInterval::FromRange(request.key(), request.range_end()), generation_, seen_, 0});
  return id;
}

void RangeCache::AbandonFill(FillId fill) { fills_.erase(fill); }

FillResult RangeCache::FinishFill(FillId fill, std::string_view identity,
                                  const RangeRequest& request, RangeResponse response) {
  auto f = fills_.find(fill);
  if (f == fills_.end()) return FillResult::kNotLive;  // dropped by Start/Stop/Flush
  const Fill record = f->second;
  fills_.erase(f);
  if (!live_ || record.generation != generation_) return FillResult::kNotLive;
  if (!Cacheable(request)) return FillResult::kNotCacheable;
  const int64_t h = response.header().revision();
  // Events in (h, seen_at_begin] were applied before the fill was
  // registered, so whether they touched this interval is unknown.
  if (h < record.seen_at_begin || record.max_event_revision > h) return FillResult::kStale;

  std::string key = CacheKey(identity, Normalize(request));
  KeyInterval interval = KeyInterval::FromRange(request.key(), request.range_end());
  const uint64_t size = EntrySize(key, interval, response);
  if (size > max_bytes_ / 8) return FillResult::kTooLarge;
  if (auto old = by_key_.find(key); old != by_key_.end()) Remove(old->second);

  lru_.push_front(Entry{std::move(key), std::move(interval), std::move(response), h, size, {}});
  Entry* entry = &lru_.front();
  by_key_.emplace(entry->cache_key, lru_.begin());
  if (entry->interval.is_point()) {
    points_[entry->interval.begin()].insert(entry);
  } else {
    entry->range_pos = ranges_.emplace(entry->interval.begin(), entry);
  }
  bytes_ += size;
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    Remove(std::prev(lru_.end()));
    ++evictions_;
  }
  return FillResult::kInserted;
}

}  // namespace keel::cache
