#pragma once

// WatchSim: a WatchCoalescer driven against a tiny in-test model of etcd (a
// key-value store with a revision log, compaction, and etcd's watch stream
// semantics: created reply, historical catch-up in batches whose header is
// the current revision, live responses per revision, progress
// notifications, compaction cancels, cancel replies), plus recorders of what
// each client watcher received. The test chooses when probes are answered,
// streams open, upstream responses arrive, streams are lost and clients read,
// so every interleaving is reachable; then Expected() says what etcd itself
// would have sent each client watcher.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "coalesce/watch_coalescer.h"

namespace keel::coalesce::testing {

using ::etcdserverpb::ResponseHeader;
using ::etcdserverpb::WatchCreateRequest;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;
using ::mvccpb::Event;

inline bool InRange(const std::string& k, const std::string& key, const std::string& end) {
  if (end.empty()) return k == key;
  if (end == std::string(1, '\0')) return k >= key;
  return k >= key && k < end;
}

// One client watcher as the test asked for it and as it was served.
struct ClientWatcherRecord {
  WatchClientId client = 0;
  WatchCreateRequest request;
  bool refused = false;  // created+canceled with id -1
  WatchResponse refusal;
  int64_t id = -2;  // watch_id once created
  bool created = false;
  ResponseHeader created_header;
  std::vector<Event> events;
  std::vector<WatchResponse> responses;  // every response after created
  bool cancel_requested = false;
  bool client_removed = false;
  bool canceled = false;  // a canceled response arrived
  WatchResponse cancel_response;
  // The lowest revision not yet given to it (from its created reply, events
  // and progress notifications), as etcd's own watcher would track it.
  int64_t next = 0;
  int64_t next_at_cancel = 0;  // `next` when a canceled response arrived
};

class WatchSim {
 public:
  explicit WatchSim(WatchCoalescerOptions options = {}) : core(options) {}

  WatchCoalescer core;

  // ----- the etcd model -----
  int64_t rev = 1;
  int64_t compacted = -1;  // etcd's compactMainRev before any compaction
  std::map<std::string, ::mvccpb::KeyValue> kvs;
  std::vector<Event> log;
  int catchup_batch_revs = 2;  // distinct revisions per historical response

  struct UpWatcher {
    std::string key, end;
    bool prev_kv = false;
  };
  struct UpStream {
    std::string token;
    bool require_leader = false;
    bool open = false;
    std::map<int64_t, UpWatcher> watchers;
    std::deque<WatchResponse> pending;
    int creates = 0;
    int cancels = 0;
  };
  std::map<UpstreamStreamId, UpStream> streams;
  std::deque<UpstreamStreamId> to_open;
  std::deque<WatchProbe> probes;
  std::vector<WatchCreateRequest> upstream_creates;  // every create sent, in order
  int upstream_cancels = 0;
  int progress_replies = 0;
  WatchResponse last_progress;
  int closes = 0;

  // ----- clients -----
  std::vector<ClientWatcherRecord> cws;
  std::map<WatchClientId, std::deque<size_t>> pending_creates;
  std::map<WatchClientId, std::map<int64_t, size_t>> by_id;
  // Per client stream: the highest revision it was given (created headers,
  // events, progress notifications and replies).
  std::map<WatchClientId, int64_t> high_water;
  int progress_raised = 0;  // progress replies answered at the high-water mark

  ResponseHeader Header(int64_t revision) const {
    ResponseHeader h;
    h.set_cluster_id(7);
    h.set_member_id(8);
    h.set_raft_term(9);
    h.set_revision(revision);
    return h;
  }

  void Apply(const std::vector<WatchAction>& actions) {
    for (const WatchAction& a : actions) {
      if (const auto* p = std::get_if<WatchProbe>(&a)) probes.push_back(*p);
      if (const auto* o = std::get_if<WatchOpenUpstream>(&a)) {
        EXPECT_EQ(streams.count(o->stream), 0u);
        UpStream s;
        s.token = o->token;
        s.require_leader = o->require_leader;
        streams[o->stream] = s;
        to_open.push_back(o->stream);
      }
      if (const auto* s = std::get_if<WatchSendUpstream>(&a))
        UpstreamRequest(s->stream, s->request);
      if (const auto* c = std::get_if<WatchCloseUpstream>(&a)) {
        ++closes;
        streams.erase(c->stream);
      }
    }
  }

  void UpstreamRequest(UpstreamStreamId sid, const WatchRequest& req) {
    auto it = streams.find(sid);
    ASSERT_TRUE(it != streams.end()) << "write on unknown stream " << sid;
    UpStream& s = it->second;
    ASSERT_TRUE(s.open) << "write before the stream was opened";
    if (req.has_create_request()) {
      const WatchCreateRequest& cr = req.create_request();
      upstream_creates.push_back(cr);
      ++s.creates;
      EXPECT_TRUE(cr.progress_notify());
      EXPECT_EQ(cr.filters_size(), 0);
      EXPECT_GT(cr.watch_id(), 0);
      EXPECT_EQ(s.watchers.count(cr.watch_id()), 0u);
      WatchResponse created;
      *created.mutable_header() = Header(rev);
      created.set_watch_id(cr.watch_id());
      created.set_created(true);
      s.pending.push_back(created);
      int64_t start = cr.start_revision() == 0 ? rev + 1 : cr.start_revision();
      if (start < compacted) {
        WatchResponse cancel;
        cancel.mutable_header()->set_cluster_id(7);
        cancel.set_watch_id(cr.watch_id());
        cancel.set_canceled(true);
        cancel.set_compact_revision(compacted);
        s.pending.push_back(cancel);
        return;
      }
      // Historical catch-up, header = current revision.
      WatchResponse batch;
      auto flush = [&] {
        if (batch.events_size() == 0) return;
        *batch.mutable_header() = Header(rev);
        batch.set_watch_id(cr.watch_id());
        s.pending.push_back(batch);
        batch.Clear();
      };
      int revs = 0;
      int64_t last = 0;
      for (const Event& e : log) {
        const int64_t r = e.kv().mod_revision();
        if (r < start || !InRange(e.kv().key(), cr.key(), cr.range_end())) continue;
        if (r != last) {
          if (revs == catchup_batch_revs) {
            flush();
            revs = 0;
          }
          ++revs;
          last = r;
        }
        Event* out = batch.add_events();
        *out = e;
        if (!cr.prev_kv()) out->clear_prev_kv();
      }
      flush();
      s.watchers[cr.watch_id()] = UpWatcher{cr.key(), cr.range_end(), cr.prev_kv()};
    } else if (req.has_cancel_request()) {
      ++s.cancels;
      ++upstream_cancels;
      auto wit = s.watchers.find(req.cancel_request().watch_id());
      if (wit == s.watchers.end()) return;
      s.watchers.erase(wit);
      WatchResponse r;
      *r.mutable_header() = Header(rev);
      r.set_watch_id(req.cancel_request().watch_id());
      r.set_canceled(true);
      s.pending.push_back(r);
    }
  }

  // One revision with these events (several keys = a txn).
  void Write(const std::vector<std::pair<std::string, std::optional<std::string>>>& ops) {
    ++rev;
    std::vector<Event> evs;
    for (const auto& [key, value] : ops) {
      Event e;
      auto it = kvs.find(key);
      if (value.has_value()) {
        ::mvccpb::KeyValue kv;
        kv.set_key(key);
        kv.set_value(*value);
        kv.set_mod_revision(rev);
        kv.set_create_revision(it == kvs.end() ? rev : it->second.create_revision());
        kv.set_version(it == kvs.end() ? 1 : it->second.version() + 1);
        if (it != kvs.end()) *e.mutable_prev_kv() = it->second;
        e.set_type(Event::PUT);
        *e.mutable_kv() = kv;
        kvs[key] = kv;
      } else {
        if (it == kvs.end()) continue;
        e.set_type(Event::DELETE);
        *e.mutable_prev_kv() = it->second;
        e.mutable_kv()->set_key(key);
        e.mutable_kv()->set_mod_revision(rev);
        kvs.erase(it);
      }
      evs.push_back(e);
    }
    if (evs.empty()) {
      --rev;
      return;
    }
    for (const Event& e : evs) log.push_back(e);
    for (auto& [sid, s] : streams) {
      if (!s.open) continue;
      for (auto& [wid, w] : s.watchers) {
        WatchResponse r;
        for (const Event& e : evs) {
          if (!InRange(e.kv().key(), w.key, w.end)) continue;
          Event* out = r.add_events();
          *out = e;
          if (!w.prev_kv) out->clear_prev_kv();
        }
        if (r.events_size() == 0) continue;
        *r.mutable_header() = Header(rev);
        r.set_watch_id(wid);
        s.pending.push_back(r);
      }
    }
  }
  void Put(const std::string& key, const std::string& value) { Write({{key, value}}); }
  void Delete(const std::string& key) { Write({{key, std::nullopt}}); }

  // etcd's progress notification for every watcher of stream `sid`.
  void Progress(UpstreamStreamId sid) {
    UpStream& s = streams.at(sid);
    for (auto& [wid, w] : s.watchers) {
      WatchResponse r;
      *r.mutable_header() = Header(rev);
      r.set_watch_id(wid);
      s.pending.push_back(r);
    }
  }

  // ----- driving the core -----
  bool AnswerProbe(std::optional<absl::Status> error = std::nullopt) {
    if (probes.empty()) return false;
    WatchProbe p = probes.front();
    probes.pop_front();
    if (error.has_value()) {
      Apply(core.OnProbeResult(p.probe, *error));
    } else {
      Apply(core.OnProbeResult(p.probe, Header(rev)));
    }
    return true;
  }
  bool OpenOne() {
    while (!to_open.empty()) {
      UpstreamStreamId sid = to_open.front();
      to_open.pop_front();
      auto it = streams.find(sid);
      if (it == streams.end()) continue;
      it->second.open = true;
      Apply(core.OnUpstreamOpened(sid));
      return true;
    }
    return false;
  }
  bool DeliverOne(UpstreamStreamId sid) {
    auto it = streams.find(sid);
    if (it == streams.end() || it->second.pending.empty()) return false;
    WatchResponse r = it->second.pending.front();
    it->second.pending.pop_front();
    Apply(core.OnUpstreamResponse(sid, r));
    return true;
  }
  bool DeliverAny() {
    for (auto& [sid, s] : streams) {
      if (!s.pending.empty()) return DeliverOne(sid);
    }
    return false;
  }
  void Lose(UpstreamStreamId sid) {
    streams.erase(sid);
    Apply(core.OnUpstreamLost(sid));
  }

  void AddClient(WatchClientId client, std::string token = "", bool rl = false) {
    core.AddClient(client, std::move(token), rl);
    pending_creates[client];
    by_id[client];
  }
  // Returns the record index.
  size_t Create(WatchClientId client, WatchCreateRequest cr) {
    ClientWatcherRecord rec;
    rec.client = client;
    rec.request = cr;
    cws.push_back(rec);
    pending_creates[client].push_back(cws.size() - 1);
    WatchRequest req;
    *req.mutable_create_request() = cr;
    Apply(core.OnClientRequest(client, req));
    return cws.size() - 1;
  }
  void RequestProgress(WatchClientId client) {
    WatchRequest req;
    req.mutable_progress_request();
    Apply(core.OnClientRequest(client, req));
  }
  void Cancel(WatchClientId client, int64_t id) {
    auto it = by_id[client].find(id);
    if (it != by_id[client].end()) cws[it->second].cancel_requested = true;
    WatchRequest req;
    req.mutable_cancel_request()->set_watch_id(id);
    Apply(core.OnClientRequest(client, req));
  }
  void RemoveClient(WatchClientId client) {
    for (auto& rec : cws) {
      if (rec.client == client) rec.client_removed = true;
    }
    Apply(core.RemoveClient(client));
    pending_creates.erase(client);
    by_id.erase(client);
  }
  // Takes one response for `client`; false when none is queued and nothing
  // else happened.
  bool Pop(WatchClientId client) {
    auto [resp, actions] = core.PopResponse(client);
    Apply(actions);
    if (!resp.has_value()) return !actions.empty();
    Record(client, std::move(*resp).Build());
    return true;
  }
  void PopAll(WatchClientId client) {
    while (core.QueuedForTest(client) > 0) Pop(client);
  }
  // Runs everything to quiescence (all probes, opens, deliveries, reads).
  void Settle() {
    for (int i = 0; i < 100000; ++i) {
      bool progress = AnswerProbe() || OpenOne() || DeliverAny();
      for (auto& [client, q] : pending_creates) {
        if (Pop(client)) progress = true;
      }
      if (!progress) return;
    }
    ADD_FAILURE() << "WatchSim::Settle did not settle";
  }

  void Record(WatchClientId client, const WatchResponse& r) {
    const int64_t before = high_water[client];
    if (!r.canceled()) {
      const int64_t seen = r.events_size() > 0 ? r.events(r.events_size() - 1).kv().mod_revision()
                                               : r.header().revision();
      high_water[client] = std::max(before, seen);
    }
    if (r.created()) {
      auto& q = pending_creates[client];
      if (q.empty()) {
        ADD_FAILURE() << "created without a create: " << r.ShortDebugString();
        return;
      }
      ClientWatcherRecord& rec = cws[q.front()];
      q.pop_front();
      if (r.canceled()) {
        EXPECT_EQ(r.watch_id(), -1);
        rec.refused = true;
        rec.refusal = r;
        return;
      }
      rec.created = true;
      rec.id = r.watch_id();
      rec.created_header = r.header();
      rec.next = rec.request.start_revision() == 0 ? r.header().revision() + 1
                                                   : rec.request.start_revision();
      EXPECT_EQ(r.events_size(), 0);
      EXPECT_EQ(by_id[client].count(r.watch_id()), 0u) << "id reused while live";
      by_id[client][r.watch_id()] = &rec - cws.data();
      return;
    }
    if (r.watch_id() == -1) {
      // A progress reply: every event up to its revision was sent before it.
      ++progress_replies;
      last_progress = r;
      EXPECT_EQ(r.events_size(), 0);
      // Never below anything this stream was already given.
      EXPECT_GE(r.header().revision(), before)
          << "progress " << r.ShortDebugString() << " went back";
      if (r.header().revision() == before && before > 0) {
        // Raised to the high-water mark: the core documents that a lagging
        // group may then still have events up to it in flight.
        ++progress_raised;
        return;
      }
      for (const ClientWatcherRecord& rec : cws) {
        if (rec.client != client || !rec.created || rec.canceled || rec.cancel_requested) continue;
        size_t due = 0;
        for (const Event& e : Expected(rec)) {
          if (e.kv().mod_revision() <= r.header().revision()) ++due;
        }
        EXPECT_GE(rec.events.size(), due)
            << "progress " << r.ShortDebugString() << " before every event it covers reached "
            << rec.request.ShortDebugString();
      }
      return;
    }
    auto it = by_id[client].find(r.watch_id());
    if (it == by_id[client].end()) {
      ADD_FAILURE() << "response for unknown watch id: " << r.ShortDebugString();
      return;
    }
    ClientWatcherRecord& rec = cws[it->second];
    rec.responses.push_back(r);
    if (r.canceled()) {
      rec.canceled = true;
      rec.cancel_response = r;
      rec.next_at_cancel = rec.next;
      by_id[client].erase(it);
      return;
    }
    for (const Event& e : r.events()) rec.events.push_back(e);
    if (r.events_size() > 0) {
      rec.next = std::max(rec.next, r.events(r.events_size() - 1).kv().mod_revision() + 1);
    } else {
      rec.next = std::max(rec.next, r.header().revision() + 1);
    }
  }

  // What etcd would have sent `rec` as events (all of them, through now).
  std::vector<Event> Expected(const ClientWatcherRecord& rec) const {
    std::vector<Event> out;
    const WatchCreateRequest& cr = rec.request;
    const std::string key = cr.key().empty() ? std::string(1, '\0') : cr.key();
    const int64_t from =
        cr.start_revision() == 0 ? rec.created_header.revision() + 1 : cr.start_revision();
    bool no_put = false, no_delete = false;
    for (int f : cr.filters()) {
      if (f == WatchCreateRequest::NOPUT) no_put = true;
      if (f == WatchCreateRequest::NODELETE) no_delete = true;
    }
    for (const Event& e : log) {
      if (e.kv().mod_revision() < from || !InRange(e.kv().key(), key, cr.range_end())) continue;
      if (e.type() == Event::PUT && no_put) continue;
      if (e.type() == Event::DELETE && no_delete) continue;
      Event copy = e;
      if (!cr.prev_kv()) copy.clear_prev_kv();
      out.push_back(copy);
    }
    return out;
  }

  // Checks every created record: live ones got exactly Expected(), ended
  // ones a prefix of it; event responses are in revision order.
  void CheckAll() const {
    for (const ClientWatcherRecord& rec : cws) {
      if (!rec.created) continue;
      SCOPED_TRACE("watcher " + rec.request.ShortDebugString() + " id " + std::to_string(rec.id) +
                   " created at " + std::to_string(rec.created_header.revision()));
      EXPECT_EQ(rec.created_header.cluster_id(), 7u);
      EXPECT_EQ(rec.created_header.member_id(), 8u);
      EXPECT_EQ(rec.created_header.raft_term(), 9u);
      const std::vector<Event> want = Expected(rec);
      if (rec.canceled && rec.cancel_response.compact_revision() != 0) {
        // etcd cancels a watcher for compaction only when the compacted
        // revision is past the next one it still needs.
        EXPECT_GT(rec.cancel_response.compact_revision(), rec.next_at_cancel)
            << "compaction cancel of a watcher etcd would not have cancelled";
      }
      const bool ended = rec.cancel_requested || rec.client_removed || rec.canceled;
      if (!ended) {
        ASSERT_EQ(rec.events.size(), want.size());
      } else {
        ASSERT_LE(rec.events.size(), want.size());
      }
      for (size_t i = 0; i < rec.events.size(); ++i) {
        ASSERT_EQ(rec.events[i].SerializeAsString(), want[i].SerializeAsString())
            << "event " << i << ": got " << rec.events[i].ShortDebugString() << " want "
            << want[i].ShortDebugString();
      }
      int64_t last = 0;
      bool in_fragments = false;  // a revision continues only in the next fragment
      for (const WatchResponse& r : rec.responses) {
        if (r.canceled()) continue;
        if (r.events_size() == 0) {  // progress: never behind what was delivered
          EXPECT_GE(r.header().revision(), last);
          continue;
        }
        EXPECT_GE(r.header().revision(), r.events(r.events_size() - 1).kv().mod_revision());
        if (in_fragments) {
          EXPECT_GE(r.events(0).kv().mod_revision(), last);
        } else {
          EXPECT_GT(r.events(0).kv().mod_revision(), last);
        }
        in_fragments = r.fragment();
        last = r.events(r.events_size() - 1).kv().mod_revision();
      }
      // (A removed client's queue is dropped, possibly between fragments.)
      if (!rec.client_removed) {
        EXPECT_FALSE(in_fragments) << "a fragmented response never ended";
      }
    }
  }
};

inline WatchCreateRequest CreateReq(std::string key, std::string end = "", int64_t start = 0) {
  WatchCreateRequest cr;
  cr.set_key(std::move(key));
  cr.set_range_end(std::move(end));
  cr.set_start_revision(start);
  return cr;
}

}  // namespace keel::coalesce::testing
