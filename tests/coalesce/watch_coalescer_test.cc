#include "coalesce/watch_coalescer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "api/errors.h"
#include "tests/coalesce/watch_sim.h"

namespace keel::coalesce {
namespace {

using testing::CreateReq;
using testing::WatchSim;

// Two clients on one key: one upstream watcher, one created each (the probe's
// header, never the upstream one), the same events to both.
TEST(WatchCoalescer, SameKeyCoalescesIntoOneUpstreamWatcher) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  sim.Put("a", "0");
  const size_t c1 = sim.Create(1, CreateReq("a"));
  const size_t c2 = sim.Create(2, CreateReq("a"));
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 1u);
  EXPECT_EQ(sim.streams.size(), 1u);
  EXPECT_EQ(sim.core.upstream_watchers(), 1u);
  EXPECT_EQ(sim.core.client_watchers(), 2u);
  EXPECT_EQ(sim.core.watchers_coalescing(), 1u);
  ASSERT_TRUE(sim.cws[c1].created);
  ASSERT_TRUE(sim.cws[c2].created);
  EXPECT_EQ(sim.cws[c1].created_header.revision(), 2);
  EXPECT_EQ(sim.cws[c1].id, 0);
  EXPECT_EQ(sim.cws[c2].id, 0);
  sim.Put("a", "1");
  sim.Write({{"a", "2"}, {"b", "x"}});
  sim.Delete("a");
  sim.Settle();
  EXPECT_EQ(sim.cws[c1].events.size(), 3u);
  EXPECT_EQ(sim.cws[c2].events.size(), 3u);
  EXPECT_EQ(sim.cws[c1].responses.size(), 3u);
  EXPECT_EQ(sim.core.events_coalescing_total(), 3u);
  sim.CheckAll();
  // A range is another group.
  sim.Create(1, CreateReq("a", "c"));
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 2u);
  EXPECT_EQ(sim.core.upstream_watchers(), 2u);
}

TEST(WatchCoalescer, ValidationFailuresHaveEtcdShapes) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t bad_range = sim.Create(1, CreateReq("b", "a"));
  auto seven = CreateReq("a");
  seven.set_watch_id(7);
  const size_t first7 = sim.Create(1, seven);
  const size_t dup7 = sim.Create(1, seven);
  const size_t whole = sim.Create(1, CreateReq("", std::string(1, '\0')));
  sim.Settle();
  ASSERT_TRUE(sim.cws[bad_range].refused);
  EXPECT_EQ(sim.cws[bad_range].refusal.cancel_reason(), "mvcc: watcher range is empty");
  EXPECT_EQ(sim.cws[bad_range].refusal.header().revision(), 1);
  EXPECT_EQ(sim.cws[bad_range].refusal.header().cluster_id(), 7u);
  ASSERT_TRUE(sim.cws[first7].created);
  EXPECT_EQ(sim.cws[first7].id, 7);
  ASSERT_TRUE(sim.cws[dup7].refused);
  EXPECT_EQ(sim.cws[dup7].refusal.cancel_reason(),
            "mvcc: duplicate watch ID provided on the WatchStream");
  ASSERT_TRUE(sim.cws[whole].created);
  EXPECT_EQ(sim.cws[whole].id, 0);
  // Auto ids skip ids in use: 0 is taken, 7 is taken.
  auto zero_then = CreateReq("x");
  const size_t next = sim.Create(1, zero_then);
  sim.Settle();
  EXPECT_EQ(sim.cws[next].id, 1);
  // The empty key is watched as "\x00".
  bool saw_nul = false;
  for (const auto& cr : sim.upstream_creates) {
    if (cr.key() == std::string(1, '\0')) saw_nul = true;
  }
  EXPECT_TRUE(saw_nul);
}

// A negative start is etcd's to refuse: created (ours), then etcd's
// compaction cancel (compact_revision -1 before any compaction), as etcd
// 3.4.23 answers it.
TEST(WatchCoalescer, NegativeStartIsCancelledByEtcd) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t c = sim.Create(1, CreateReq("a", "", -3));
  sim.Settle();
  ASSERT_TRUE(sim.cws[c].created);
  ASSERT_TRUE(sim.cws[c].canceled);
  EXPECT_EQ(sim.cws[c].cancel_response.compact_revision(), -1);
  EXPECT_EQ(sim.upstream_creates.size(), 1u);
  EXPECT_EQ(sim.upstream_creates[0].start_revision(), -3);
}

TEST(WatchCoalescer, ProbeErrorRefusesTheCreateWithItsMessage) {
  WatchSim sim;
  sim.AddClient(1, "tok");
  const size_t c = sim.Create(1, CreateReq("a"));
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes[0].token, "tok");
  EXPECT_EQ(sim.probes[0].key, "a");  // with a token, the client's own range
  sim.AnswerProbe(api::EtcdStatus(api::EtcdError::kPermissionDenied));
  sim.Settle();
  ASSERT_TRUE(sim.cws[c].refused);
  // etcd 3.4.23's reason: its gRPC error as gRPC-Go prints it.
  EXPECT_EQ(sim.cws[c].refusal.cancel_reason(),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied");
  // A header is always there (clientv3 3.4 dereferences it): the latest one
  // seen, here none yet.
  EXPECT_TRUE(sim.cws[c].refusal.has_header());
  EXPECT_TRUE(sim.upstream_creates.empty());
  // With an earlier probe, its header.
  sim.AddClient(2);
  sim.Create(2, CreateReq("a"));
  sim.Put("a", "1");
  sim.AnswerProbe();
  const size_t c2 = sim.Create(1, CreateReq("b"));
  sim.AnswerProbe(api::EtcdStatus(api::EtcdError::kNoLeader));
  sim.Settle();
  ASSERT_TRUE(sim.cws[c2].refused);
  EXPECT_EQ(sim.cws[c2].refusal.cancel_reason(), "etcdserver: no leader");
  EXPECT_EQ(sim.cws[c2].refusal.header().revision(), 2);
  EXPECT_EQ(sim.cws[c2].refusal.header().cluster_id(), 7u);
}

// Watchers of one group (one upstream watcher) each get their own filters.
TEST(WatchCoalescer, FiltersPerWatcherOfOneGroup) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  auto noput = CreateReq("a");
  noput.add_filters(::etcdserverpb::WatchCreateRequest::NOPUT);
  noput.set_prev_kv(true);
  auto all = CreateReq("a");
  all.set_prev_kv(true);
  const size_t c1 = sim.Create(1, noput);
  const size_t c2 = sim.Create(2, all);
  sim.Settle();
  EXPECT_EQ(sim.core.upstream_watchers(), 1u);
  sim.Put("a", "1");
  sim.Put("a", "2");
  sim.Delete("a");
  sim.Settle();
  ASSERT_EQ(sim.cws[c1].events.size(), 1u);
  EXPECT_EQ(sim.cws[c1].events[0].type(), ::mvccpb::Event::DELETE);
  EXPECT_EQ(sim.cws[c1].events[0].prev_kv().value(), "2");
  EXPECT_EQ(sim.cws[c1].responses.size(), 1u);  // the filtered responses were not sent
  ASSERT_EQ(sim.cws[c2].events.size(), 3u);
  EXPECT_EQ(sim.cws[c2].events[1].prev_kv().value(), "1");
  sim.CheckAll();
}

// etcd reads the old value of every event for a prev_kv watcher, so only
// the watchers that ask for prev_kv share an upstream watcher that asks for
// it; the others share one that does not (the fake etcd then leaves prev_kv
// out, and CheckAll compares each stream with what etcd would send it).
TEST(WatchCoalescer, PrevKvIsAskedOfEtcdOnlyForWatchersThatWantIt) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  auto with_prev = CreateReq("a");
  with_prev.set_prev_kv(true);
  const size_t plain1 = sim.Create(1, CreateReq("a"));
  const size_t plain2 = sim.Create(2, CreateReq("a"));
  sim.Settle();
  ASSERT_EQ(sim.upstream_creates.size(), 1u);
  EXPECT_FALSE(sim.upstream_creates[0].prev_kv());
  const size_t prev1 = sim.Create(1, with_prev);
  const size_t prev2 = sim.Create(2, with_prev);
  sim.Settle();
  ASSERT_EQ(sim.upstream_creates.size(), 2u);
  EXPECT_TRUE(sim.upstream_creates[1].prev_kv());
  EXPECT_EQ(sim.core.upstream_watchers(), 2u);
  EXPECT_EQ(sim.core.watchers_coalescing(), 2u);
  sim.Put("a", "1");
  sim.Put("a", "2");
  sim.Delete("a");
  sim.Settle();
  for (size_t c : {plain1, plain2, prev1, prev2}) ASSERT_EQ(sim.cws[c].events.size(), 3u);
  EXPECT_FALSE(sim.cws[plain1].events[1].has_prev_kv());
  EXPECT_EQ(sim.cws[prev2].events[1].prev_kv().value(), "1");
  // Historical watchers get a dedicated upstream watcher each, asking for
  // prev_kv as they do; caught up, each moves into the group of its kind.
  auto old_plain = CreateReq("a", "", 2);
  auto old_prev = CreateReq("a", "", 2);
  old_prev.set_prev_kv(true);
  const size_t hist_plain = sim.Create(1, old_plain);
  const size_t hist_prev = sim.Create(2, old_prev);
  sim.Settle();
  ASSERT_EQ(sim.upstream_creates.size(), 4u);
  EXPECT_FALSE(sim.upstream_creates[2].prev_kv());
  EXPECT_TRUE(sim.upstream_creates[3].prev_kv());
  ASSERT_EQ(sim.cws[hist_prev].events.size(), 3u);
  EXPECT_EQ(sim.cws[hist_prev].events[2].prev_kv().value(), "2");
  sim.Put("a", "3");
  sim.Settle();
  EXPECT_EQ(sim.core.upstream_watchers(), 2u);
  EXPECT_EQ(sim.cws[hist_plain].events.size(), 4u);
  EXPECT_EQ(sim.cws[hist_prev].events.size(), 4u);
  sim.CheckAll();
}

TEST(WatchCoalescer, CancelRepliesWithCurrentHeaderAndReleasesUpstream) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t c = sim.Create(1, CreateReq("a"));
  sim.Settle();
  sim.Put("a", "1");
  sim.Settle();
  sim.Cancel(1, 99);  // unknown: no reply
  sim.Settle();
  EXPECT_EQ(sim.cws[c].responses.size(), 1u);
  sim.Cancel(1, sim.cws[c].id);
  sim.Put("a", "2");
  sim.Settle();
  ASSERT_TRUE(sim.cws[c].canceled);
  EXPECT_EQ(sim.cws[c].cancel_response.header().revision(), 3);
  EXPECT_EQ(sim.cws[c].cancel_response.compact_revision(), 0);
  EXPECT_EQ(sim.upstream_cancels, 1);
  EXPECT_EQ(sim.closes, 1);
  EXPECT_EQ(sim.core.upstream_watchers(), 0u);
  EXPECT_EQ(sim.core.upstream_streams(), 0u);
  EXPECT_EQ(sim.core.client_watchers(), 0u);
  sim.CheckAll();
}

TEST(WatchCoalescer, RemovedClientLeavesItsGroups) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  sim.Create(1, CreateReq("a"));
  sim.Create(1, CreateReq("b"));
  sim.Create(2, CreateReq("a"));
  sim.Settle();
  EXPECT_EQ(sim.core.upstream_watchers(), 2u);
  sim.RemoveClient(1);
  EXPECT_EQ(sim.core.upstream_watchers(), 1u);
  EXPECT_EQ(sim.core.client_watchers(), 1u);
  EXPECT_EQ(sim.upstream_cancels, 1);
  sim.Put("a", "1");
  sim.Settle();
  sim.CheckAll();
}

// Compaction (or any upstream cancel) ends every c-watcher of the group with
// compact_revision forwarded; the dead group is never joined again.
TEST(WatchCoalescer, UpstreamCancelEndsTheGroupForGood) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  const size_t c1 = sim.Create(1, CreateReq("a"));
  const size_t c2 = sim.Create(2, CreateReq("a"));
  sim.Settle();
  const UpstreamStreamId sid = sim.streams.begin()->first;
  const int64_t uwid = sim.upstream_creates[0].watch_id();
  ::etcdserverpb::WatchResponse cancel;
  cancel.set_watch_id(uwid);
  cancel.set_canceled(true);
  cancel.set_compact_revision(5);
  cancel.set_cancel_reason("some reason");
  sim.streams[sid].watchers.erase(uwid);
  sim.Apply(sim.core.OnUpstreamResponse(sid, cancel));
  sim.Settle();
  for (size_t c : {c1, c2}) {
    ASSERT_TRUE(sim.cws[c].canceled);
    EXPECT_EQ(sim.cws[c].cancel_response.compact_revision(), 5);
    EXPECT_EQ(sim.cws[c].cancel_response.cancel_reason(), "some reason");
    EXPECT_FALSE(sim.cws[c].cancel_response.created());
  }
  EXPECT_EQ(sim.core.client_watchers(), 0u);
  const size_t c3 = sim.Create(1, CreateReq("a"));
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 2u);
  sim.Put("a", "x");
  sim.Settle();
  EXPECT_EQ(sim.cws[c3].events.size(), 1u);
  sim.CheckAll();
}

// A historical start that etcd compacted: created (ours), then etcd's
// compaction cancel.
TEST(WatchCoalescer, CompactedStartGetsCreatedThenCompactionCancel) {
  WatchSim sim;
  sim.AddClient(1);
  for (int i = 0; i < 5; ++i) sim.Put("a", std::to_string(i));
  sim.compacted = 4;
  const size_t live = sim.Create(1, CreateReq("a"));
  const size_t c = sim.Create(1, CreateReq("a", "", 2));
  sim.Settle();
  ASSERT_TRUE(sim.cws[c].created);
  ASSERT_TRUE(sim.cws[c].canceled);
  EXPECT_EQ(sim.cws[c].cancel_response.compact_revision(), 4);
  EXPECT_FALSE(sim.cws[live].canceled);  // the shared group is not hurt
  sim.Put("a", "z");
  sim.Settle();
  EXPECT_EQ(sim.cws[live].events.size(), 1u);
  sim.CheckAll();
}

// Upstream stream lost: the watchers are created again from where they
// stopped; clients see no second created, no loss, no duplicate.
TEST(WatchCoalescer, UpstreamLossIsInvisible) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t c = sim.Create(1, CreateReq("a", "z"));
  sim.Settle();
  sim.Put("a", "1");
  sim.Put("b", "1");
  sim.DeliverAny();  // one of the two arrives
  const UpstreamStreamId sid = sim.streams.begin()->first;
  sim.Lose(sid);  // the other is lost with the stream
  sim.Put("c", "1");
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 2u);
  EXPECT_EQ(sim.upstream_creates[1].start_revision(), 3);  // after rev 2, received
  EXPECT_EQ(sim.cws[c].events.size(), 3u);
  sim.CheckAll();
  // A stale report about the old stream changes nothing.
  sim.Apply(sim.core.OnUpstreamLost(sid));
  EXPECT_EQ(sim.core.upstream_streams(), 1u);
}

// Reconnect from a revision compacted meanwhile: explicit compaction cancel.
TEST(WatchCoalescer, UpstreamLossPastCompactionCancelsExplicitly) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t c = sim.Create(1, CreateReq("a"));
  sim.Settle();
  const UpstreamStreamId sid = sim.streams.begin()->first;
  sim.Lose(sid);
  sim.Put("a", "1");
  sim.Put("a", "2");
  sim.compacted = 3;
  sim.Settle();
  ASSERT_TRUE(sim.cws[c].canceled);
  EXPECT_EQ(sim.cws[c].cancel_response.compact_revision(), 3);
  sim.CheckAll();
}

// A "from now" joiner whose probe is older than the group's progress gets the
// events in between from the group's history; a historical start older than
// the group gets a dedicated watcher; a future one filters the group.
TEST(WatchCoalescer, LateJoinersGetExactlyTheirEvents) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  sim.Create(1, CreateReq("a"));
  sim.Settle();
  sim.Put("a", "1");  // rev 2
  // Client 2's probe answers at rev 2, before the group has seen rev 2.
  const size_t late = sim.Create(2, CreateReq("a"));
  sim.AnswerProbe();
  sim.Put("a", "2");  // rev 3
  sim.Settle();
  EXPECT_EQ(sim.cws[late].created_header.revision(), 2);
  EXPECT_EQ(sim.cws[late].events.size(), 1u);
  EXPECT_EQ(sim.upstream_creates.size(), 1u);
  // Replay from history: probe at 3 answered, group already at 3... make the
  // group lag: a probe answered at rev 4 while the group is at 3 is a join.
  const size_t hist = sim.Create(2, CreateReq("a", "", 2));
  const size_t future = sim.Create(2, CreateReq("a", "", 6));
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 2u);  // the historical one is dedicated
  EXPECT_EQ(sim.upstream_creates[1].start_revision(), 2);
  EXPECT_EQ(sim.core.resyncs_total(), 1u);
  for (int i = 0; i < 5; ++i) sim.Put("a", "x" + std::to_string(i));
  sim.Settle();
  EXPECT_EQ(sim.cws[hist].events.size(), 7u);
  // Once the dedicated watcher answered (so etcd did not find revision 2
  // compacted), the group's history reached back to it: merged, cancelled.
  EXPECT_EQ(sim.core.upstream_watchers(), 1u);
  EXPECT_EQ(sim.upstream_cancels, 1);
  EXPECT_EQ(sim.cws[future].events.size(), 3u);  // revs 6, 7, 8
  EXPECT_EQ(sim.cws[future].created_header.revision(), 3);
  sim.CheckAll();
}

TEST(WatchCoalescer, ProgressNotificationsOnlyToWatchersThatAsked) {
  WatchSim sim;
  sim.AddClient(1);
  auto pn = CreateReq("a");
  pn.set_progress_notify(true);
  const size_t c1 = sim.Create(1, pn);
  const size_t c2 = sim.Create(1, CreateReq("a"));
  sim.Settle();
  sim.Put("b", "1");
  sim.Progress(sim.streams.begin()->first);
  sim.Settle();
  ASSERT_EQ(sim.cws[c1].responses.size(), 1u);
  EXPECT_EQ(sim.cws[c1].responses[0].header().revision(), 2);
  EXPECT_EQ(sim.cws[c1].responses[0].events_size(), 0);
  EXPECT_EQ(sim.cws[c2].responses.size(), 0u);
}

// A progress request is answered once, {watch_id -1}, behind every event up
// to its revision: the current one when every group has caught up.
TEST(WatchCoalescer, ProgressRequestNeverGetsAheadOfEvents) {
  WatchSim sim;
  sim.AddClient(1);
  sim.Create(1, CreateReq("a"));
  sim.Settle();
  sim.Put("a", "1");  // rev 2, not yet delivered upstream
  sim.RequestProgress(1);
  sim.AnswerProbe();
  ASSERT_TRUE(sim.Pop(1));
  EXPECT_EQ(sim.progress_replies, 1);
  EXPECT_EQ(sim.last_progress.header().revision(), 1);  // rev 2 is still in flight
  EXPECT_EQ(sim.last_progress.header().member_id(), 8u);
  sim.Settle();
  sim.RequestProgress(1);
  sim.Settle();
  EXPECT_EQ(sim.progress_replies, 2);
  EXPECT_EQ(sim.last_progress.header().revision(), 2);
  sim.CheckAll();
}

// fragment: a large response is split for the watcher that asked, in
// order, each piece holding at least one event, the last one unmarked.
TEST(WatchCoalescer, FragmentSplitsLargeResponsesForWatchersThatAsked) {
  WatchCoalescerOptions options;
  options.fragment_bytes = 200;
  WatchSim sim(options);
  sim.AddClient(1);
  auto frag = CreateReq("", std::string(1, '\0'));
  frag.set_fragment(true);
  const size_t f = sim.Create(1, frag);
  const size_t plain = sim.Create(1, CreateReq("", std::string(1, '\0')));
  sim.Settle();
  std::vector<std::pair<std::string, std::optional<std::string>>> txn;
  for (int i = 0; i < 6; ++i) txn.push_back({"k" + std::to_string(i), std::string(60, 'v')});
  sim.Write(txn);
  sim.Settle();
  ASSERT_EQ(sim.cws[plain].responses.size(), 1u);
  EXPECT_FALSE(sim.cws[plain].responses[0].fragment());
  const auto& pieces = sim.cws[f].responses;
  ASSERT_GT(pieces.size(), 1u);
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(pieces[i].fragment(), i + 1 < pieces.size());
    EXPECT_GE(pieces[i].events_size(), 1);
    if (pieces[i].events_size() > 1) {
      EXPECT_LT(pieces[i].ByteSizeLong(), 200u);
    }
  }
  EXPECT_EQ(sim.cws[f].events.size(), 6u);
  sim.CheckAll();
}

TEST(WatchCoalescer, RequireLeaderAndTokenSplitGroupsAndStreams) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2, "", true);
  sim.AddClient(3, "tok");
  for (WatchClientId c : {1, 2, 3}) sim.Create(c, CreateReq("a"));
  sim.Settle();
  EXPECT_EQ(sim.streams.size(), 3u);
  EXPECT_EQ(sim.core.upstream_watchers(), 3u);
  int rl = 0;
  for (auto& [sid, s] : sim.streams) rl += s.require_leader ? 1 : 0;
  EXPECT_EQ(rl, 1);
}

// A client that does not read overflows its queue: its watcher is dropped
// and resynced from its next revision once it drains; nothing is lost.
TEST(WatchCoalescer, SlowClientIsResyncedWithoutLoss) {
  WatchCoalescerOptions options;
  options.client_queue_limit = 4;
  options.client_queue_per_watcher = 0;
  options.history_responses = 2;
  WatchSim sim(options);
  sim.AddClient(1);
  sim.AddClient(2);
  const size_t slow = sim.Create(1, CreateReq("a"));
  const size_t fast = sim.Create(2, CreateReq("a"));
  sim.Settle();
  for (int i = 0; i < 20; ++i) {
    sim.Put("a", std::to_string(i));
    while (sim.DeliverAny()) {
    }
    sim.PopAll(2);
  }
  EXPECT_LE(sim.core.QueuedForTest(1), 4u);
  EXPECT_GE(sim.core.resyncs_total(), 1u);
  EXPECT_EQ(sim.cws[fast].events.size(), 20u);
  sim.Settle();
  EXPECT_EQ(sim.cws[slow].events.size(), 20u);
  sim.CheckAll();
}

// A progress reply never goes below what the stream was already given: a
// watcher on an idle key keeps its group at its old revision, but another
// watcher of the same stream was created at a later one (clientv3 resumes
// every watcher from a progress reply: going back would repeat events).
TEST(WatchCoalescer, ProgressReplyNeverBelowTheStreamsHighWater) {
  WatchSim sim;
  sim.AddClient(1);
  sim.Create(1, CreateReq("a"));  // created at rev 1; key "a" stays idle
  sim.Settle();
  for (int i = 0; i < 3; ++i) sim.Put("b", std::to_string(i));  // revs 2..4
  sim.Settle();
  const size_t second = sim.Create(1, CreateReq("a"));  // joins the idle group
  sim.Settle();
  ASSERT_EQ(sim.cws[second].created_header.revision(), 4);
  sim.RequestProgress(1);
  sim.Settle();
  ASSERT_EQ(sim.progress_replies, 1);
  EXPECT_EQ(sim.last_progress.header().revision(), 4);
  sim.Put("a", "1");
  sim.Settle();
  EXPECT_EQ(sim.cws[second].events.size(), 1u);
  sim.CheckAll();
}

// After an upstream loss, a group idle since before its (only) receiver was
// created is re-created from the receiver's next revision, so a compaction
// of revisions nobody needs does not cancel it.
TEST(WatchCoalescer, ReconnectStartsFromWhatTheReceiversNeed) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t first = sim.Create(1, CreateReq("a"));  // group from rev 2
  sim.Settle();
  for (int i = 0; i < 4; ++i) sim.Put("b", std::to_string(i));  // revs 2..5
  const size_t second = sim.Create(1, CreateReq("a"));          // next 6
  sim.Settle();
  sim.Cancel(1, sim.cws[first].id);
  sim.Settle();
  sim.Lose(sim.streams.begin()->first);
  sim.compacted = 4;
  sim.Settle();
  EXPECT_FALSE(sim.cws[second].canceled);
  EXPECT_EQ(sim.upstream_creates.back().start_revision(), 6);
  sim.Put("a", "1");
  sim.Settle();
  EXPECT_EQ(sim.cws[second].events.size(), 1u);
  sim.CheckAll();
}

// A compaction cancel ends only the receivers whose next revision was
// compacted; the others continue on a watcher of their own.
TEST(WatchCoalescer, CompactionCancelEndsOnlyWatchersThatNeedCompactedRevisions) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  const size_t old_one = sim.Create(1, CreateReq("a"));  // next 2
  sim.Settle();
  for (int i = 0; i < 4; ++i) sim.Put("b", std::to_string(i));  // revs 2..5
  const size_t new_one = sim.Create(2, CreateReq("a"));         // next 6
  sim.Settle();
  sim.Lose(sim.streams.begin()->first);
  sim.compacted = 4;
  sim.Settle();
  ASSERT_TRUE(sim.cws[old_one].canceled);
  EXPECT_EQ(sim.cws[old_one].cancel_response.compact_revision(), 4);
  EXPECT_FALSE(sim.cws[new_one].canceled);
  sim.Put("a", "1");
  sim.Settle();
  EXPECT_EQ(sim.cws[new_one].events.size(), 1u);
  sim.CheckAll();
}

// A stream whose watchers all left while it was being opened is closed when
// it reports open.
TEST(WatchCoalescer, OpenedStreamNobodyWantsIsClosed) {
  WatchSim sim;
  sim.AddClient(1);
  const size_t c = sim.Create(1, CreateReq("a"));
  sim.AnswerProbe();
  ASSERT_EQ(sim.to_open.size(), 1u);
  const UpstreamStreamId sid = sim.to_open.front();
  sim.PopAll(1);
  sim.Cancel(1, sim.cws[c].id);
  EXPECT_EQ(sim.closes, 1);
  const std::vector<WatchAction> actions = sim.core.OnUpstreamOpened(sid);
  ASSERT_EQ(actions.size(), 1u);
  const auto* close = std::get_if<WatchCloseUpstream>(&actions[0]);
  ASSERT_NE(close, nullptr);
  EXPECT_EQ(close->stream, sid);
}

// A client writing requests without reading is ended with RESOURCE_EXHAUSTED
// instead of queueing without bound.
TEST(WatchCoalescer, RequestBacklogIsBounded) {
  WatchCoalescerOptions options;
  options.client_request_limit = 4;
  options.client_queue_limit = 2;
  options.client_queue_per_watcher = 0;
  WatchSim sim(options);
  sim.AddClient(1);
  ::etcdserverpb::WatchRequest progress;
  progress.mutable_progress_request();
  std::optional<WatchEndClient> end;
  for (int i = 0; i < 100 && !end.has_value(); ++i) {
    for (const WatchAction& a : sim.core.OnClientRequest(1, progress)) {
      if (const auto* e = std::get_if<WatchEndClient>(&a)) end = *e;
    }
    sim.AnswerProbe();  // replies pile up unread
  }
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->client, 1u);
  EXPECT_EQ(end->status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sim.core.QueuedForTest(1), 0u);  // forgotten
  // Requests waiting for probes count too.
  sim.AddClient(2);
  ::etcdserverpb::WatchRequest create;
  *create.mutable_create_request() = CreateReq("a");
  bool ended = false;
  for (int i = 0; i < 6; ++i) {  // one in its probe, four waiting, one too many
    for (const WatchAction& a : sim.core.OnClientRequest(2, create)) {
      if (std::holds_alternative<WatchEndClient>(a)) ended = true;
    }
  }
  EXPECT_TRUE(ended);
}

// A create whose probe etcd could not answer (no quorum, an election: its
// read timed out) is not refused: the probe is sent again until it succeeds,
// the client's later requests waiting behind it.
TEST(WatchCoalescer, ACreateWaitsForTheQuorumInsteadOfBeingRefused) {
  WatchSim sim;
  sim.AddClient(1, "tok");
  const size_t c = sim.Create(1, CreateReq("a"));
  sim.Put("a", "0");  // before the create is answered: not its event
  // No quorum: the read timed out in etcd, past its deadline (etcd 3.4's
  // UNKNOWN), then past ours.
  sim.AnswerProbe(absl::UnavailableError("etcdserver: request timed out"));
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes[0].error, "etcdserver: request timed out");  // for the glue's log
  sim.AnswerProbe(absl::UnknownError("context deadline exceeded"));
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes[0].retry, 2);
  EXPECT_EQ(sim.probes[0].token, "tok");
  EXPECT_EQ(sim.probes[0].key, "a");
  sim.Cancel(1, 0);  // waits behind the create, as every later request does
  sim.AnswerProbe(absl::DeadlineExceededError("deadline exceeded"));
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes[0].retry, 3);
  EXPECT_EQ(sim.core.probe_retries_total(), 3u);
  sim.Settle();  // the quorum is back: the next try succeeds
  ASSERT_FALSE(sim.cws[c].refused);
  ASSERT_TRUE(sim.cws[c].created);
  EXPECT_EQ(sim.cws[c].created_header.revision(), sim.rev);
  EXPECT_TRUE(sim.cws[c].events.empty());
  EXPECT_TRUE(sim.cws[c].canceled);  // then the cancel that waited behind it
  // A client that leaves while its create waits ends the tries.
  sim.AddClient(2);
  sim.Create(2, CreateReq("b"));
  sim.AnswerProbe(absl::UnavailableError("etcdserver: leader changed"));
  ASSERT_EQ(sim.probes.size(), 1u);
  sim.RemoveClient(2);
  sim.AnswerProbe(absl::UnavailableError("etcdserver: leader changed"));
  EXPECT_TRUE(sim.probes.empty());
  // A require-leader client waits too, but not for `no leader` (its stream
  // is one etcd ends): that create is refused with it.
  sim.AddClient(3, "", /*rl=*/true);
  const size_t c3 = sim.Create(3, CreateReq("c"));
  sim.AnswerProbe(absl::UnavailableError("etcdserver: leader changed"));
  ASSERT_EQ(sim.probes.size(), 1u);
  sim.AnswerProbe(api::EtcdStatus(api::EtcdError::kNoLeader));
  sim.Settle();
  ASSERT_TRUE(sim.cws[c3].refused);
  EXPECT_EQ(sim.cws[c3].refusal.cancel_reason(), "etcdserver: no leader");
}

// Creates that queued behind a probe share the next one (sent after they all
// arrived): 10,000 watchers opened on one stream cost a handful of probes,
// not 10,000 round trips. With a token only creates on the same range share.
TEST(WatchCoalescer, QueuedCreatesShareOneProbe) {
  WatchSim sim;
  sim.AddClient(1);
  sim.Put("a", "0");
  std::vector<size_t> recs;
  for (const char* key : {"a", "b", "c", "a", "d"}) recs.push_back(sim.Create(1, CreateReq(key)));
  EXPECT_EQ(sim.probes.size(), 1u);  // the first create's; the rest wait
  sim.AnswerProbe();
  EXPECT_EQ(sim.probes.size(), 1u);  // one for the four that waited
  sim.Put("b", "1");                 // after the second probe was sent...
  sim.AnswerProbe();                 // ...answered at the new revision
  EXPECT_TRUE(sim.probes.empty());
  sim.Settle();
  for (size_t i = 0; i < recs.size(); ++i) {
    ASSERT_TRUE(sim.cws[recs[i]].created);
    EXPECT_EQ(sim.cws[recs[i]].id, static_cast<int64_t>(i));
  }
  EXPECT_EQ(sim.cws[recs[1]].created_header.revision(), 3);
  EXPECT_TRUE(sim.cws[recs[1]].events.empty());  // the put at 3 is not after it
  sim.CheckAll();

  sim.AddClient(2, "token");
  for (const char* key : {"x", "y", "y", "z"}) sim.Create(2, CreateReq(key));
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes.front().key, "x");
  sim.AnswerProbe();
  ASSERT_EQ(sim.probes.size(), 1u);  // both y creates
  EXPECT_EQ(sim.probes.front().key, "y");
  sim.AnswerProbe();
  ASSERT_EQ(sim.probes.size(), 1u);
  EXPECT_EQ(sim.probes.front().key, "z");
  sim.AnswerProbe();
  EXPECT_TRUE(sim.probes.empty());
  sim.Settle();
  sim.CheckAll();
}

// One event on a key that many watchers of one stream watch is one response
// per watcher: the queue grows with the stream's watchers, so such a stream
// is not "slow" (resynced) just for having many watchers.
TEST(WatchCoalescer, QueueGrowsWithTheStreamsWatchers) {
  WatchCoalescerOptions options;
  options.client_queue_limit = 4;
  WatchSim sim(options);
  sim.AddClient(1);
  std::vector<size_t> recs;
  for (int i = 0; i < 50; ++i) recs.push_back(sim.Create(1, CreateReq("a")));
  sim.Settle();
  sim.Put("a", "1");
  sim.Put("a", "2");
  while (sim.DeliverAny()) {
  }
  EXPECT_EQ(sim.core.QueuedForTest(1), 100u);  // nobody dropped
  EXPECT_EQ(sim.core.resyncs_total(), 0u);
  sim.Settle();
  for (size_t r : recs) EXPECT_EQ(sim.cws[r].events.size(), 2u);
  sim.CheckAll();
}

// Client queues and group histories are bounded by bytes too.
TEST(WatchCoalescer, QueueAndHistoryAreBoundedByBytes) {
  WatchCoalescerOptions options;
  options.client_queue_bytes = 2000;
  options.history_bytes = 2000;
  WatchSim sim(options);
  sim.AddClient(1);
  sim.AddClient(2);
  const size_t slow = sim.Create(1, CreateReq("a"));
  sim.Create(2, CreateReq("a"));
  sim.Settle();
  const std::string big(500, 'v');
  for (int i = 0; i < 20; ++i) {
    sim.Put("a", big + std::to_string(i));
    while (sim.DeliverAny()) {
    }
    sim.PopAll(2);
  }
  EXPECT_LE(sim.core.QueuedForTest(1), 4u);
  EXPECT_GE(sim.core.resyncs_total(), 1u);
  sim.Settle();
  EXPECT_EQ(sim.cws[slow].events.size(), 20u);
  // The group's history (bounded by bytes) no longer reached back to where
  // the slow watcher stopped: it caught up on a watcher of its own.
  EXPECT_GT(sim.upstream_creates.size(), 1u);
  sim.CheckAll();
}

// A client's queue is charged what its watchers' responses weigh, each
// watcher's view to the byte: responses that sum to exactly the bound stay
// queued, one byte less and the last one is resynced.
TEST(WatchCoalescer, QueueIsChargedWhatEachWatcherGets) {
  constexpr int kWatchers = 10;
  const std::string big(500, 'v');
  // The run: ten watchers of one stream, with prev_kv; a small put (read at
  // once), then a big one over a big value (its responses carry a big
  // prev_kv) left queued. Returns the sizes of the big one's responses as the
  // client got them.
  auto run = [&](size_t queue_bytes, uint64_t* resyncs) {
    WatchCoalescerOptions options;
    options.client_queue_bytes = queue_bytes;
    WatchSim sim(options);
    sim.AddClient(1);
    std::vector<size_t> recs;
    auto with_prev = CreateReq("a");
    with_prev.set_prev_kv(true);
    for (int i = 0; i < kWatchers; ++i) recs.push_back(sim.Create(1, with_prev));
    sim.Settle();
    sim.Put("a", big);
    sim.Settle();
    sim.Put("a", big + "!");
    while (sim.DeliverAny()) {
    }
    *resyncs = sim.core.resyncs_total();
    sim.Settle();
    size_t total = 0;
    for (size_t r : recs) {
      EXPECT_EQ(sim.cws[r].events.size(), 2u);
      EXPECT_EQ(sim.cws[r].events.back().prev_kv().value(), big);
      total += sim.cws[r].responses.back().ByteSizeLong();
    }
    sim.CheckAll();
    return total;
  };
  uint64_t resyncs = 0;
  const size_t total = run(16 << 20, &resyncs);
  EXPECT_EQ(resyncs, 0u);
  ASSERT_GT(total, 0u);
  EXPECT_EQ(run(total, &resyncs), total);
  EXPECT_EQ(resyncs, 0u);
  run(total - 1, &resyncs);
  EXPECT_EQ(resyncs, 1u);
}

// A historical watcher with no group for its key becomes that key's shared
// group once etcd has answered it: later watchers on the key join it.
TEST(WatchCoalescer, CaughtUpHistoricalWatcherBecomesTheSharedGroup) {
  WatchSim sim;
  sim.AddClient(1);
  sim.AddClient(2);
  sim.Put("a", "1");  // rev 2
  sim.Put("a", "2");  // rev 3
  const size_t hist = sim.Create(1, CreateReq("a", "", 2));
  sim.Settle();
  ASSERT_EQ(sim.cws[hist].events.size(), 2u);
  const size_t now = sim.Create(2, CreateReq("a"));
  const size_t other_start = sim.Create(2, CreateReq("a", "", 4));
  sim.Settle();
  EXPECT_EQ(sim.upstream_creates.size(), 1u);
  EXPECT_EQ(sim.core.upstream_watchers(), 1u);
  EXPECT_EQ(sim.core.watchers_coalescing(), 2u);
  sim.Put("a", "3");
  sim.Settle();
  EXPECT_EQ(sim.cws[hist].events.size(), 3u);
  EXPECT_EQ(sim.cws[now].events.size(), 1u);
  EXPECT_EQ(sim.cws[other_start].events.size(), 1u);
  sim.CheckAll();
}

// Randomized: creates, cancels, client removals, writes and txns, progress,
// compaction, upstream losses, slow readers, in random interleavings; every
// client watcher must get exactly etcd's stream.
class Randomized {
 public:
  explicit Randomized(uint64_t seed) : rng_(seed) {
    WatchCoalescerOptions options;
    options.client_queue_limit = 1 + Rand(12);
    options.client_queue_per_watcher = Rand(3);
    options.history_responses = Rand(6);
    options.fragment_bytes = 60 + Rand(200);
    sim_ = std::make_unique<WatchSim>(options);
    sim_->catchup_batch_revs = 1 + Rand(3);
  }

  void Run(int steps) {
    for (int i = 0; i < steps; ++i) Step();
    sim_->Settle();
    sim_->CheckAll();
    for (const auto& rec : sim_->cws) {
      if (rec.created && !rec.canceled && !rec.cancel_requested && !rec.client_removed) ++live_;
    }
  }
  int live() const { return live_; }

 private:
  uint64_t Rand(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  std::string Key() { return std::string(1, static_cast<char>('a' + Rand(5))); }

  void Step() {
    WatchSim& s = *sim_;
    switch (Rand(20)) {
      case 0:
        if (clients_.size() < 6) {
          const WatchClientId id = next_client_++;
          // Two identities, so that groups and streams split by token.
          s.AddClient(id, Rand(4) == 0 ? "tok" : "", false);
          clients_.push_back(id);
        }
        break;
      case 1:
      case 2:
      case 3: {
        if (clients_.empty()) break;
        const WatchClientId c = clients_[Rand(clients_.size())];
        ::etcdserverpb::WatchCreateRequest cr;
        switch (Rand(4)) {
          case 0:
            cr = testing::CreateReq("a", "d");
            break;
          case 1:
            cr = testing::CreateReq("", std::string(1, '\0'));
            break;
          default:
            cr = testing::CreateReq(Key());
        }
        if (Rand(3) == 0) cr.set_start_revision(1 + Rand(s.rev + 3));
        if (Rand(3) == 0) cr.set_prev_kv(true);
        if (Rand(5) == 0) cr.add_filters(::etcdserverpb::WatchCreateRequest::NOPUT);
        if (Rand(5) == 0) cr.add_filters(::etcdserverpb::WatchCreateRequest::NODELETE);
        if (Rand(3) == 0) cr.set_progress_notify(true);
        if (Rand(4) == 0) cr.set_fragment(true);
        s.Create(c, cr);
        break;
      }
      case 4: {
        if (clients_.empty()) break;
        const WatchClientId c = clients_[Rand(clients_.size())];
        auto& ids = s.by_id[c];
        if (ids.empty()) break;
        auto it = ids.begin();
        std::advance(it, Rand(ids.size()));
        s.Cancel(c, it->first);
        break;
      }
      case 5:
        if (!clients_.empty() && Rand(4) == 0) {
          const size_t i = Rand(clients_.size());
          s.RemoveClient(clients_[i]);
          clients_.erase(clients_.begin() + i);
        }
        break;
      case 6:
      case 7:
        s.Put(Key(), std::to_string(Rand(100)));
        break;
      case 8:
        s.Delete(Key());
        break;
      case 9:
        s.Write({{Key(), "t1"}, {Key(), "t2"}, {Key(), std::nullopt}});
        break;
      case 10:
        if (Rand(6) == 0) s.compacted = std::max<int64_t>(s.compacted, 1 + Rand(s.rev));
        break;
      case 11:
        if (!s.streams.empty() && Rand(3) == 0) {
          auto it = s.streams.begin();
          std::advance(it, Rand(s.streams.size()));
          if (it->second.open) s.Lose(it->first);
        }
        break;
      case 12:
        if (!clients_.empty() && Rand(2) == 0) {
          s.RequestProgress(clients_[Rand(clients_.size())]);
          break;
        }
        if (!s.streams.empty()) {
          auto it = s.streams.begin();
          std::advance(it, Rand(s.streams.size()));
          if (it->second.open) s.Progress(it->first);
        }
        break;
      case 13:
        s.AnswerProbe();
        break;
      case 14:
        s.OpenOne();
        break;
      case 15:
      case 16:
      case 17:
        for (uint64_t n = Rand(4); n > 0; --n) s.DeliverAny();
        break;
      default:
        if (!clients_.empty()) {
          // Client 1 (when present) is the slow reader.
          const WatchClientId c = clients_[Rand(clients_.size())];
          if (c == 1 && Rand(8) != 0) break;
          for (uint64_t n = Rand(5); n > 0; --n) s.Pop(c);
        }
    }
  }

  std::mt19937_64 rng_;
  std::unique_ptr<WatchSim> sim_;
  std::vector<WatchClientId> clients_;
  WatchClientId next_client_ = 1;
  int live_ = 0;
};

TEST(WatchCoalescerRandomized, EveryWatcherGetsEtcdsStream) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("KEEL_TEST_SEED")) seed = std::strtoull(env, nullptr, 10);
  std::cout << "WatchCoalescerRandomized seed " << seed << " (replay: KEEL_TEST_SEED=" << seed
            << ")" << std::endl;
  int live = 0;
  for (int i = 0; i < 300; ++i) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " run " + std::to_string(i));
    Randomized r(seed + i);
    r.Run(400);
    live += r.live();
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(live, 0);  // the runs did check live watchers exactly
}

}  // namespace
}  // namespace keel::coalesce
