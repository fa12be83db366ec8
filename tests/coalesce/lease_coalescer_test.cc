#include "coalesce/lease_coalescer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace keel::coalesce {
namespace {

using ::etcdserverpb::LeaseKeepAliveResponse;

LeaseKeepAliveResponse Upstream(int64_t lease_id, int64_t ttl, int64_t revision = 1) {
  LeaseKeepAliveResponse r;
  r.mutable_header()->set_cluster_id(11);
  r.mutable_header()->set_member_id(22);
  r.mutable_header()->set_raft_term(3);
  r.mutable_header()->set_revision(revision);
  r.set_id(lease_id);
  r.set_ttl(ttl);
  return r;
}

// Splits an action list by kind, keeping each kind's order.
struct Split {
  std::vector<OpenUpstream> opens;
  std::vector<SendUpstream> sends;
  std::vector<Reply> replies;
  std::vector<FinishClient> finishes;
};

Split SplitActions(const std::vector<Action>& actions) {
  Split s;
  for (const Action& a : actions) {
    if (const auto* o = std::get_if<OpenUpstream>(&a)) s.opens.push_back(*o);
    if (const auto* o = std::get_if<SendUpstream>(&a)) s.sends.push_back(*o);
    if (const auto* o = std::get_if<Reply>(&a)) s.replies.push_back(*o);
    if (const auto* o = std::get_if<FinishClient>(&a)) s.finishes.push_back(*o);
  }
  return s;
}

// A coalescer whose upstream stream 1 is open.
class LeaseCoalescerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    core_.AddClient(100);
    Split s = SplitActions(core_.OnClientRequest(100, 999));
    ASSERT_EQ(s.opens.size(), 1u);
    ASSERT_EQ(s.opens[0].upstream, 1u);
    s = SplitActions(core_.OnUpstreamOpened(1));
    ASSERT_EQ(s.sends.size(), 1u);
    ASSERT_EQ(SplitActions(core_.OnUpstreamResponse(1, Upstream(999, 5))).replies.size(), 1u);
    core_.RemoveClient(100);
  }

  LeaseCoalescer core_;
};

TEST(LeaseCoalescer, FirstRequestOpensUpstreamSendsAndReplies) {
  LeaseCoalescer core;
  core.AddClient(1);
  std::vector<Action> actions = core.OnClientRequest(1, 7);
  ASSERT_EQ(actions.size(), 1u);
  ASSERT_TRUE(std::holds_alternative<OpenUpstream>(actions[0]));
  const UpstreamId up = std::get<OpenUpstream>(actions[0]).upstream;

  actions = core.OnUpstreamOpened(up);
  ASSERT_EQ(actions.size(), 1u);
  const auto& send = std::get<SendUpstream>(actions[0]);
  EXPECT_EQ(send.upstream, up);
  EXPECT_EQ(send.lease_id, 7);

  actions = core.OnUpstreamResponse(up, Upstream(7, 10, /*revision=*/42));
  ASSERT_EQ(actions.size(), 1u);
  const auto& reply = std::get<Reply>(actions[0]);
  EXPECT_EQ(reply.client, 1u);
  EXPECT_EQ(reply.response.id(), 7);
  EXPECT_EQ(reply.response.ttl(), 10);
  EXPECT_EQ(reply.response.header().revision(), 42);
  EXPECT_EQ(reply.response.header().cluster_id(), 11u);
  EXPECT_EQ(reply.response.header().member_id(), 22u);
  EXPECT_EQ(reply.response.header().raft_term(), 3u);
  EXPECT_EQ(core.Pending(1), 0u);
  EXPECT_EQ(core.InFlightForTest(), 0u);
}

// Scenario 33: 50 clients keeping one lease alive cost one upstream request
// per round, and every client request gets its reply from that round.
TEST_F(LeaseCoalescerTest, FiftyClientsOneLeaseOneUpstreamRequestPerRound) {
  for (ClientId c = 1; c <= 50; ++c) core_.AddClient(c);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<SendUpstream> sends;
    for (ClientId c = 1; c <= 50; ++c) {
      Split s = SplitActions(core_.OnClientRequest(c, 5));
      EXPECT_TRUE(s.opens.empty());
      EXPECT_TRUE(s.replies.empty());
      sends.insert(sends.end(), s.sends.begin(), s.sends.end());
    }
    ASSERT_EQ(sends.size(), 1u);
    EXPECT_EQ(sends[0].lease_id, 5);
    EXPECT_EQ(sends[0].upstream, 1u);

    Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(5, 30, 100 + round)));
    ASSERT_EQ(s.replies.size(), 50u);
    EXPECT_TRUE(s.sends.empty());
    EXPECT_TRUE(s.finishes.empty());
    std::set<ClientId> answered;
    for (const Reply& r : s.replies) {
      answered.insert(r.client);
      EXPECT_EQ(r.response.id(), 5);
      EXPECT_EQ(r.response.ttl(), 30);
      EXPECT_EQ(r.response.header().revision(), 100 + round);
    }
    EXPECT_EQ(answered.size(), 50u);
    // Nothing more: no second reply for anyone when a duplicate arrives.
    EXPECT_TRUE(core_.OnUpstreamResponse(1, Upstream(5, 30)).empty());
  }
}

// Scenario 34: five requests on one stream, five replies with ID and TTL.
TEST_F(LeaseCoalescerTest, EveryRequestOnOneStreamGetsItsOwnReply) {
  core_.AddClient(1);
  int sends = 0;
  for (int i = 0; i < 5; ++i) sends += SplitActions(core_.OnClientRequest(1, 8)).sends.size();
  EXPECT_EQ(sends, 1);
  EXPECT_EQ(core_.Pending(1), 5u);
  Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(8, 6)));
  ASSERT_EQ(s.replies.size(), 5u);
  for (const Reply& r : s.replies) {
    EXPECT_EQ(r.client, 1u);
    EXPECT_EQ(r.response.id(), 8);
    EXPECT_EQ(r.response.ttl(), 6);
  }
  EXPECT_EQ(core_.Pending(1), 0u);
}

// Scenario 35: the lease is refreshed only because a client asked; a request
// after a reply is a new upstream request, never answered from the old reply.
TEST_F(LeaseCoalescerTest, NoRefreshWithoutAClientRequest) {
  core_.AddClient(1);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(1, 9)).sends.size(), 1u);
  ASSERT_EQ(SplitActions(core_.OnUpstreamResponse(1, Upstream(9, 6))).replies.size(), 1u);
  EXPECT_EQ(core_.InFlightForTest(), 0u);
  // An unsolicited upstream reply for that lease answers nobody.
  EXPECT_TRUE(core_.OnUpstreamResponse(1, Upstream(9, 6)).empty());

  Split s = SplitActions(core_.OnClientRequest(1, 9));
  ASSERT_EQ(s.sends.size(), 1u);
  EXPECT_TRUE(s.replies.empty());
  EXPECT_EQ(core_.InFlightForTest(), 1u);
}

// Scenario 36: revoked or expired (upstream TTL <= 0) reaches every waiting
// client as TTL 0 with the lease's ID, as etcd's server answers.
TEST_F(LeaseCoalescerTest, RevokedLeaseAnswersTtlZeroToEveryWaiter) {
  for (ClientId c = 1; c <= 3; ++c) core_.AddClient(c);
  for (ClientId c = 1; c <= 3; ++c) core_.OnClientRequest(c, 12);
  Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(12, -1)));
  ASSERT_EQ(s.replies.size(), 3u);
  for (const Reply& r : s.replies) {
    EXPECT_EQ(r.response.id(), 12);
    EXPECT_EQ(r.response.ttl(), 0);
  }
  // A later request asks upstream again (etcd answers every keep-alive).
  ASSERT_EQ(SplitActions(core_.OnClientRequest(2, 12)).sends.size(), 1u);
  s = SplitActions(core_.OnUpstreamResponse(1, Upstream(12, 0)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 2u);
  EXPECT_EQ(s.replies[0].response.ttl(), 0);
}

// A lost upstream stream: one reopen, then one re-send per lease that has
// waiting requests; late events of the lost stream are ignored.
TEST_F(LeaseCoalescerTest, LostUpstreamReopensAndResendsPendingLeases) {
  core_.AddClient(1);
  core_.AddClient(2);
  core_.AddClient(3);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(1, 21)).sends.size(), 1u);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(2, 21)).sends.size(), 0u);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(2, 22)).sends.size(), 1u);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(3, 23)).sends.size(), 1u);
  ASSERT_EQ(SplitActions(core_.OnUpstreamResponse(1, Upstream(23, 5))).replies.size(), 1u);

  Split s = SplitActions(core_.OnUpstreamLost(1));
  ASSERT_EQ(s.opens.size(), 1u);
  EXPECT_EQ(s.opens[0].upstream, 2u);
  EXPECT_TRUE(s.sends.empty());
  EXPECT_EQ(core_.InFlightForTest(), 0u);

  // Stale: a late reply and a second loss report from stream 1.
  EXPECT_TRUE(core_.OnUpstreamResponse(1, Upstream(21, 5)).empty());
  EXPECT_TRUE(core_.OnUpstreamLost(1).empty());
  // Requests while the new stream opens wait for it; no extra open.
  EXPECT_TRUE(core_.OnClientRequest(3, 21).empty());

  s = SplitActions(core_.OnUpstreamOpened(2));
  ASSERT_EQ(s.sends.size(), 2u);
  EXPECT_EQ(s.sends[0].lease_id, 21);
  EXPECT_EQ(s.sends[1].lease_id, 22);
  EXPECT_EQ(s.sends[0].upstream, 2u);
  EXPECT_EQ(s.sends[1].upstream, 2u);

  s = SplitActions(core_.OnUpstreamResponse(2, Upstream(21, 7)));
  ASSERT_EQ(s.replies.size(), 3u);
  EXPECT_EQ(s.replies[0].client, 1u);
  EXPECT_EQ(s.replies[1].client, 2u);
  EXPECT_EQ(s.replies[2].client, 3u);
  s = SplitActions(core_.OnUpstreamResponse(2, Upstream(22, 7)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 2u);
  for (ClientId c = 1; c <= 3; ++c) EXPECT_EQ(core_.Pending(c), 0u);
}

// A stream lost with nothing pending is not reopened until a client asks;
// a failed open (lost while opening) is retried while requests wait.
TEST_F(LeaseCoalescerTest, LostIdleUpstreamOpensOnDemandAndFailedOpenRetries) {
  EXPECT_TRUE(core_.OnUpstreamLost(1).empty());
  core_.AddClient(1);
  Split s = SplitActions(core_.OnClientRequest(1, 31));
  ASSERT_EQ(s.opens.size(), 1u);
  EXPECT_EQ(s.opens[0].upstream, 2u);
  EXPECT_TRUE(s.sends.empty());

  s = SplitActions(core_.OnUpstreamLost(2));
  ASSERT_EQ(s.opens.size(), 1u);
  EXPECT_EQ(s.opens[0].upstream, 3u);
  EXPECT_TRUE(core_.OnUpstreamOpened(2).empty());  // stale

  s = SplitActions(core_.OnUpstreamOpened(3));
  ASSERT_EQ(s.sends.size(), 1u);
  EXPECT_EQ(s.sends[0].lease_id, 31);
  s = SplitActions(core_.OnUpstreamResponse(3, Upstream(31, 4)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 1u);
}

// Scenario 37: a half-closed client still gets its replies, then is finished;
// a client that half-closes with nothing pending is finished at once.
TEST_F(LeaseCoalescerTest, HalfClosedClientGetsRepliesThenFinish) {
  core_.AddClient(1);
  core_.AddClient(2);
  core_.OnClientRequest(1, 41);
  core_.OnClientRequest(1, 42);
  core_.OnClientRequest(2, 41);
  EXPECT_TRUE(core_.OnClientHalfClose(1).empty());
  // Requests after a half-close cannot happen on a real stream; ignored.
  EXPECT_TRUE(core_.OnClientRequest(1, 43).empty());

  std::vector<Action> actions = core_.OnUpstreamResponse(1, Upstream(41, 9));
  Split s = SplitActions(actions);
  ASSERT_EQ(s.replies.size(), 2u);
  EXPECT_TRUE(s.finishes.empty());  // lease 42 still pending for client 1

  actions = core_.OnUpstreamResponse(1, Upstream(42, 9));
  ASSERT_EQ(actions.size(), 2u);
  ASSERT_TRUE(std::holds_alternative<Reply>(actions[0]));
  EXPECT_EQ(std::get<Reply>(actions[0]).client, 1u);
  ASSERT_TRUE(std::holds_alternative<FinishClient>(actions[1]));
  EXPECT_EQ(std::get<FinishClient>(actions[1]).client, 1u);
  EXPECT_EQ(core_.client_count(), 1u);

  actions = core_.OnClientHalfClose(2);
  ASSERT_EQ(actions.size(), 1u);
  EXPECT_EQ(std::get<FinishClient>(actions[0]).client, 2u);
  EXPECT_EQ(core_.client_count(), 0u);
  EXPECT_TRUE(core_.OnClientHalfClose(2).empty());
}

// A client that goes away loses its pending requests; the others still get
// theirs, and the removed client gets nothing more.
TEST_F(LeaseCoalescerTest, GoneClientIsDroppedOthersUnaffected) {
  core_.AddClient(1);
  core_.AddClient(2);
  core_.OnClientRequest(1, 51);
  core_.OnClientRequest(2, 51);
  core_.OnClientRequest(1, 52);
  core_.RemoveClient(1);
  EXPECT_EQ(core_.Pending(1), 0u);
  EXPECT_TRUE(core_.OnClientRequest(1, 51).empty());
  EXPECT_TRUE(core_.OnClientHalfClose(1).empty());

  Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(51, 3)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 2u);
  // Lease 52's only waiter left; its reply answers nobody.
  EXPECT_TRUE(core_.OnUpstreamResponse(1, Upstream(52, 3)).empty());
  // And the next request for it is sent again.
  EXPECT_EQ(SplitActions(core_.OnClientRequest(2, 52)).sends.size(), 1u);
}

// A client gone while its lease is in flight: a newcomer's request on that
// lease is still coalesced behind the request in flight.
TEST_F(LeaseCoalescerTest, GoneSoleWaiterKeepsRequestInFlight) {
  core_.AddClient(1);
  core_.AddClient(2);
  ASSERT_EQ(SplitActions(core_.OnClientRequest(1, 61)).sends.size(), 1u);
  core_.RemoveClient(1);
  EXPECT_EQ(core_.InFlightForTest(), 1u);
  EXPECT_TRUE(core_.OnClientRequest(2, 61).empty());
  Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(61, 8)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 2u);
}

// Interleaved leases: each upstream reply answers exactly its lease's
// requests, in request order per client.
TEST_F(LeaseCoalescerTest, InterleavedLeasesAnswerOnlyTheirOwnRequests) {
  core_.AddClient(1);
  core_.AddClient(2);
  std::vector<SendUpstream> sends;
  for (auto [client, lease] : std::vector<std::pair<ClientId, int64_t>>{
           {1, 71}, {1, 72}, {2, 72}, {1, 71}, {2, 73}, {2, 71}}) {
    Split s = SplitActions(core_.OnClientRequest(client, lease));
    sends.insert(sends.end(), s.sends.begin(), s.sends.end());
  }
  ASSERT_EQ(sends.size(), 3u);
  EXPECT_EQ(sends[0].lease_id, 71);
  EXPECT_EQ(sends[1].lease_id, 72);
  EXPECT_EQ(sends[2].lease_id, 73);
  EXPECT_EQ(core_.InFlightForTest(), 3u);

  Split s = SplitActions(core_.OnUpstreamResponse(1, Upstream(72, 4, 7)));
  ASSERT_EQ(s.replies.size(), 2u);
  EXPECT_EQ(s.replies[0].client, 1u);
  EXPECT_EQ(s.replies[1].client, 2u);
  for (const Reply& r : s.replies) EXPECT_EQ(r.response.id(), 72);

  s = SplitActions(core_.OnUpstreamResponse(1, Upstream(71, 4, 8)));
  ASSERT_EQ(s.replies.size(), 3u);
  EXPECT_EQ(s.replies[0].client, 1u);
  EXPECT_EQ(s.replies[1].client, 1u);
  EXPECT_EQ(s.replies[2].client, 2u);
  for (const Reply& r : s.replies) EXPECT_EQ(r.response.id(), 71);
  EXPECT_EQ(core_.Pending(1), 0u);
  EXPECT_EQ(core_.Pending(2), 1u);

  s = SplitActions(core_.OnUpstreamResponse(1, Upstream(73, 4, 9)));
  ASSERT_EQ(s.replies.size(), 1u);
  EXPECT_EQ(s.replies[0].client, 2u);
  EXPECT_EQ(s.replies[0].response.id(), 73);
}

// Randomized: clients come, ask, half-close and go; the upstream answers in
// order, loses its stream, opens slowly and delivers stale events. After every
// step and at the end: each request answered exactly once (unless its client
// went away) by a reply from after the request, per-lease order kept, no action
// for a gone or finished client, an upstream request only for a lease some
// client is waiting on, upstream requests answered <= client requests (a
// request lost with its stream is re-sent, so sends alone may exceed them),
// and once the upstream answers everything nothing is left pending.
class Simulation {
 public:
  explicit Simulation(uint64_t seed) : rng_(seed) {}

  void Run(int steps) {
    for (int i = 0; i < steps && !::testing::Test::HasFatalFailure(); ++i) Step();
    Drain();
  }

 private:
  struct Client {
    bool half_closed = false;
    bool finished = false;
    bool removed = false;
    // Per lease: the clock at each unanswered request, oldest first.
    std::map<int64_t, std::deque<int64_t>> outstanding;
    // Per lease: revision of the last reply (replies keep request order).
    std::map<int64_t, int64_t> last_revision;
  };

  int Pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }

  bool Live(const Client& c) const { return !c.removed && !c.finished; }

  std::vector<ClientId> LiveClients(bool allow_half_closed) const {
    std::vector<ClientId> ids;
    for (const auto& [id, c] : clients_) {
      if (Live(c) && (allow_half_closed || !c.half_closed)) ids.push_back(id);
    }
    return ids;
  }

  void Step() {
    ++clock_;
    switch (Pick(12)) {
      case 0:
        if (LiveClients(true).size() < 20) {
          core_.AddClient(next_client_);
          clients_[next_client_++];
        }
        break;
      case 1:
      case 2:
      case 3:
      case 4: {
        std::vector<ClientId> ids = LiveClients(false);
        if (ids.empty()) break;
        const ClientId id = ids[Pick(ids.size())];
        const int64_t lease = 1 + Pick(5);
        clients_[id].outstanding[lease].push_back(clock_);
        ++client_requests_;
        Execute(core_.OnClientRequest(id, lease));
        break;
      }
      case 5: {
        std::vector<ClientId> ids = LiveClients(false);
        if (ids.empty() || Pick(3) != 0) break;
        const ClientId id = ids[Pick(ids.size())];
        clients_[id].half_closed = true;
        Execute(core_.OnClientHalfClose(id));
        break;
      }
      case 6: {
        std::vector<ClientId> ids = LiveClients(true);
        if (ids.empty() || Pick(3) != 0) break;
        const ClientId id = ids[Pick(ids.size())];
        clients_[id].removed = true;
        clients_[id].outstanding.clear();
        core_.RemoveClient(id);
        break;
      }
      case 7:
        if (opening_ != 0) Open();
        break;
      case 8:
      case 9:
      case 10:
        if (open_ != 0 && !wire_.empty()) Respond(kTtls[Pick(4)]);
        break;
      case 11:
        if (Pick(4) != 0) {
          // Stale events from an old stream change nothing.
          if (!old_.empty()) {
            const UpstreamId old = old_[Pick(old_.size())];
            EXPECT_TRUE(core_.OnUpstreamLost(old).empty());
            EXPECT_TRUE(
                core_.OnUpstreamResponse(old, ::etcdserverpb::LeaseKeepAliveResponse()).empty());
            EXPECT_TRUE(core_.OnUpstreamOpened(old).empty());
          }
          break;
        }
        if (open_ != 0 || opening_ != 0) {
          const UpstreamId lost = open_ != 0 ? open_ : opening_;
          old_.push_back(lost);
          open_ = opening_ = 0;
          wire_.clear();
          Execute(core_.OnUpstreamLost(lost));
        }
        break;
    }
    ASSERT_LE(upstream_answered_, client_requests_);
  }

  void Open() {
    open_ = opening_;
    opening_ = 0;
    Execute(core_.OnUpstreamOpened(open_));
  }

  void Respond(int64_t ttl) {
    const int64_t lease = wire_.front();
    wire_.pop_front();
    ++upstream_answered_;
    ttl_at_[clock_] = ttl;
    LeaseKeepAliveResponse r;
    r.mutable_header()->set_revision(clock_);
    r.set_id(lease);
    r.set_ttl(ttl);
    Execute(core_.OnUpstreamResponse(open_, r));
  }

  void Execute(const std::vector<Action>& actions) {
    for (const Action& a : actions) {
      if (const auto* o = std::get_if<OpenUpstream>(&a)) {
        EXPECT_EQ(open_, 0u) << "open while a stream is open";
        EXPECT_EQ(opening_, 0u) << "two opens at once";
        EXPECT_GT(o->upstream, last_upstream_) << "upstream ids must grow";
        last_upstream_ = o->upstream;
        opening_ = o->upstream;
      } else if (const auto* s = std::get_if<SendUpstream>(&a)) {
        EXPECT_EQ(s->upstream, open_) << "send on a stream that is not open";
        for (int64_t l : wire_) EXPECT_NE(l, s->lease_id) << "two requests in flight for a lease";
        bool someone_waits = false;
        for (const auto& [id, c] : clients_) {
          if (Live(c) && c.outstanding.count(s->lease_id) != 0) someone_waits = true;
        }
        EXPECT_TRUE(someone_waits) << "upstream request nobody asked for: " << s->lease_id;
        wire_.push_back(s->lease_id);
      } else if (const auto* r = std::get_if<Reply>(&a)) {
        auto c = clients_.find(r->client);
        ASSERT_NE(c, clients_.end()) << "reply to unknown client " << r->client;
        ASSERT_TRUE(Live(c->second)) << "reply to gone/finished client " << r->client;
        const int64_t lease = r->response.id();
        std::deque<int64_t>& q = c->second.outstanding[lease];
        ASSERT_FALSE(q.empty()) << "extra reply to client " << r->client << " lease " << lease;
        const int64_t rev = r->response.header().revision();
        EXPECT_GT(rev, q.front()) << "reply from before the request";
        EXPECT_GE(rev, c->second.last_revision[lease]) << "per-lease order broken";
        c->second.last_revision[lease] = rev;
        EXPECT_EQ(r->response.ttl(), std::max<int64_t>(0, ttl_at_[rev]));
        q.pop_front();
        if (q.empty()) c->second.outstanding.erase(lease);
      } else if (const auto* f = std::get_if<FinishClient>(&a)) {
        auto c = clients_.find(f->client);
        ASSERT_NE(c, clients_.end());
        ASSERT_TRUE(Live(c->second)) << "finish of gone/finished client " << f->client;
        EXPECT_TRUE(c->second.half_closed) << "finish before half-close";
        EXPECT_TRUE(c->second.outstanding.empty()) << "finish with replies owed";
        c->second.finished = true;
      }
    }
  }

  bool AnythingOwed() const {
    for (const auto& [id, c] : clients_) {
      if (Live(c) && !c.outstanding.empty()) return true;
    }
    return false;
  }

  void Drain() {
    while (AnythingOwed() && !::testing::Test::HasFatalFailure()) {
      ++clock_;
      if (opening_ != 0) {
        Open();
      } else if (open_ != 0 && !wire_.empty()) {
        Respond(10);
      } else {
        ADD_FAILURE() << "stuck: replies owed but nothing in flight or opening";
        return;
      }
    }
    for (const auto& [id, c] : clients_) {
      if (!Live(c)) continue;
      EXPECT_FALSE(c.half_closed) << "half-closed client " << id << " never finished";
      EXPECT_EQ(core_.Pending(id), 0u);
    }
    EXPECT_LE(upstream_answered_, client_requests_);
  }

  static constexpr int64_t kTtls[4] = {-1, 0, 5, 10};

  std::mt19937_64 rng_;
  LeaseCoalescer core_;
  int64_t clock_ = 0;
  ClientId next_client_ = 1;
  std::map<ClientId, Client> clients_;
  UpstreamId opening_ = 0;
  UpstreamId open_ = 0;
  UpstreamId last_upstream_ = 0;
  std::vector<UpstreamId> old_;
  std::deque<int64_t> wire_;           // leases sent on the open stream, in order
  std::map<int64_t, int64_t> ttl_at_;  // upstream TTL by response revision
  int64_t client_requests_ = 0;
  int64_t upstream_answered_ = 0;  // upstream requests that got a reply
};

TEST(LeaseCoalescerRandomized, InvariantsHold) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("KEEL_TEST_SEED")) seed = std::strtoull(env, nullptr, 10);
  std::cout << "LeaseCoalescerRandomized seed " << seed << " (replay: KEEL_TEST_SEED=" << seed
            << ")" << std::endl;
  for (uint64_t i = 0; i < 30 && !HasFailure(); ++i) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " run " + std::to_string(i));
    Simulation sim(seed + i);
    sim.Run(3000);
  }
}

}  // namespace
}  // namespace keel::coalesce
