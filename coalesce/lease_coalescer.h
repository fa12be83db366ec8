#pragma once

// The pure core of lease keep-alive coalescing (issue 5; spec/proxy.md 2.7,
// scenarios 33-38): N client LeaseKeepAlive streams share one upstream
// LeaseKeepAlive stream, and every client sees what etcd itself would send:
//  - each client request is answered by exactly one reply, after at most one
//    upstream round trip (etcd's proxy answers up to TTL/3 later);
//  - a lease is refreshed upstream only because a client asked: no timers, no
//    background refresh, so it expires on the client's own TTL after its last
//    keep-alive (etcd's proxy keeps it ~2x TTL, #13031);
//  - an upstream TTL <= 0 reaches every waiting client as TTL 0, as etcd's
//    server answers unknown leases (etcd's proxy answers -1);
//  - a half-closed client gets its replies and then an OK finish (#9751).
//
// The glue (coalesce/lease_coalescing_backend.h, a ForwardingBackend; not part of
// this core): one LeaseCoalescer per upstream stream (with and without
// require_leader), all under one absl::Mutex. Every input is
// "lock, call the core, unlock, execute the returned actions in order":
//  - LeaseKeepAlive(ctx, observer) gives the client a fresh ClientId, calls
//    AddClient and returns a BidiStream whose Write(req) calls
//    OnClientRequest(id, req.ID()), WritesDone() calls OnClientHalfClose(id),
//    and Cancel()/destruction calls RemoveClient(id) then observer->OnDone
//    (CANCELLED).
//  - Reply{client, response}: queue the response for that client's observer
//    and deliver one per ReadNext() (the Backend's pull flow control). A
//    client's queue is bounded by its own outstanding requests.
//  - FinishClient{client}: once that client's queued replies are delivered,
//    observer->OnDone(OK); the core has already forgotten the client.
//  - OpenUpstream{upstream}: inner.LeaseKeepAlive(ctx, upstream observer)
//    with only the core's require_leader set in ctx (no token: etcd does not
//    check auth on keep-alives), remember the handle under `upstream`, call
//    ReadNext(), then OnUpstreamOpened(upstream). Backoff after repeated
//    failures is the glue's (it may call OnUpstreamOpened later); the core
//    has no clock.
//  - SendUpstream{upstream, lease_id}: Write({ID: lease_id}) on that stream if
//    it is still the current one, else drop it (the core already re-sent it).
//  - Upstream observer: OnResponse -> OnUpstreamResponse(upstream, resp) and
//    ReadNext(); OnDone(any status) -> OnUpstreamLost(upstream).
//  - Errors a client gets (require-leader clients when their upstream ends
//    with `etcdserver: no leader`, a client whose backlog overflows) are the
//    glue's: it finishes that stream with the error itself and calls
//    RemoveClient. The glue keeps one core per upstream stream identity
//    (with and without require_leader).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <variant>
#include <vector>

#include "api/etcdserverpb/rpc.pb.h"

namespace keel::coalesce {

// Opaque id of one client LeaseKeepAlive stream, chosen by the glue; never
// reused while registered.
using ClientId = uint64_t;
// Generation of the upstream LeaseKeepAlive stream, chosen by the core
// (1, 2, ...). Events carrying an older generation are stale and ignored.
using UpstreamId = uint64_t;

// Open a new upstream LeaseKeepAlive stream with this generation (the first
// one, or a replacement for a lost one), then report OnUpstreamOpened.
struct OpenUpstream {
  UpstreamId upstream = 0;
};
// Write LeaseKeepAliveRequest{ID: lease_id} on upstream stream `upstream`.
struct SendUpstream {
  UpstreamId upstream = 0;
  int64_t lease_id = 0;
};
// Send `response` to client `client` (one reply to one of its requests).
struct Reply {
  ClientId client = 0;
  ::etcdserverpb::LeaseKeepAliveResponse response;
};
// Client `client` half-closed and has had every reply: finish its stream OK.
// The core has already forgotten it (no RemoveClient needed, but harmless).
struct FinishClient {
  ClientId client = 0;
};

// What the glue must do, in list order.
using Action = std::variant<OpenUpstream, SendUpstream, Reply, FinishClient>;

// Decides, for every client keep-alive request, when to write to the single
// upstream stream and which replies go to which client. Never does I/O, never
// reads a clock. Thread-compatible: the owner serializes all calls.
//
// Guarantees (checked by tests/coalesce/lease_coalescer_test.cc):
//  - at most one upstream request per lease is in flight on a stream; a
//    request that arrives while one is in flight waits for that one's reply
//    (coalescing), so upstream requests answered <= client requests (a
//    request lost with its stream is sent again on the next one);
//  - every request of a registered client is answered exactly once, once
//    an upstream stream answers; none is answered after RemoveClient;
//  - replies to one client keep the order of its requests for each lease
//    (replies for different leases may overtake each other);
//  - a reply carries the upstream reply's header, the requested ID and the
//    upstream TTL, or 0 when that TTL is <= 0.
class LeaseCoalescer {
 public:
  LeaseCoalescer() = default;
  LeaseCoalescer(const LeaseCoalescer&) = delete;
  LeaseCoalescer& operator=(const LeaseCoalescer&) = delete;

  // Registers a new client stream. REQUIRES: `client` is not registered.
  void AddClient(ClientId client);

  // Client `client` asked to keep lease `lease_id` alive. Returns
  // SendUpstream (and OpenUpstream first when no upstream stream exists)
  // unless a request for that lease is already in flight or waits for a
  // stream being opened. Ignored (no actions) for an unregistered or
  // half-closed client.
  std::vector<Action> OnClientRequest(ClientId client, int64_t lease_id);

  // Client `client` will send no more requests. Returns FinishClient at once
  // when nothing is pending for it; otherwise that FinishClient comes with the
  // action list that delivers its last reply. Ignored for unknown clients.
  std::vector<Action> OnClientHalfClose(ClientId client);

  // Client `client` is gone (cancelled, failed, or finished by the glue): its
  // pending requests are dropped and it gets no further action. Other clients
  // are unaffected; an upstream request already in flight stays in flight.
  // Ignored for unknown clients.
  void RemoveClient(ClientId client);

  // Upstream stream `upstream` (from OpenUpstream) accepts writes. Returns one
  // SendUpstream per lease that has pending requests. Ignored when stale.
  std::vector<Action> OnUpstreamOpened(UpstreamId upstream);

  // An upstream reply on stream `upstream`. Answers every pending request for
  // response.ID() whose upstream request is in flight, then FinishClient for
  // half-closed clients left with nothing pending. Ignored when stale or when
  // no request for that lease is in flight.
  std::vector<Action> OnUpstreamResponse(UpstreamId upstream,
                                         const ::etcdserverpb::LeaseKeepAliveResponse& response);

  // Upstream stream `upstream` ended or failed (any status). When requests
  // are pending, returns OpenUpstream for a new generation; they are re-sent
  // (one per lease) after its OnUpstreamOpened. Ignored when stale.
  std::vector<Action> OnUpstreamLost(UpstreamId upstream);

  // Registered clients (half-closed ones included until finished).
  size_t client_count() const { return clients_.size(); }
  // Requests of `client` still waiting for a reply (0 for unknown clients).
  // The glue bounds a client's backlog with it.
  size_t Pending(ClientId client) const;
  // Leases with a request in flight on the current upstream stream.
  size_t InFlightForTest() const;

 private:
  enum class UpstreamState { kNone, kOpening, kOpen };

  struct LeaseState {
    // One entry per pending request, oldest first.
    std::deque<ClientId> waiters;
    // An upstream request for this lease is in flight on the current stream.
    bool in_flight = false;
  };
  struct ClientState {
    // Pending requests per lease.
    std::map<int64_t, size_t> pending;
    size_t total_pending = 0;
    bool half_closed = false;
  };

  // Appends FinishClient for `client` and forgets it if it is half-closed
  // with nothing pending.
  void MaybeFinish(ClientId client, std::vector<Action>& actions);
  // Drops `lease_id`'s entry when nothing waits and nothing is in flight.
  void MaybeErase(int64_t lease_id);

  UpstreamState upstream_state_ = UpstreamState::kNone;
  UpstreamId upstream_ = 0;
  // Ordered maps: re-sends after a reconnect come in a deterministic order.
  std::map<int64_t, LeaseState> leases_;
  std::map<ClientId, ClientState> clients_;
};

}  // namespace keel::coalesce
