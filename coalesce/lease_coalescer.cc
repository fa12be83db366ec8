#include "coalesce/lease_coalescer.h"

#include <algorithm>
#include <cassert>
#include <utility>

namespace keel::coalesce {

void LeaseCoalescer::AddClient(ClientId client) {
  [[maybe_unused]] const bool inserted = clients_.try_emplace(client).second;
  assert(inserted && "LeaseCoalescer::AddClient: client id already registered");
}

std::vector<Action> LeaseCoalescer::OnClientRequest(ClientId client, int64_t lease_id) {
  std::vector<Action> actions;
  auto c = clients_.find(client);
  if (c == clients_.end() || c->second.half_closed) return actions;
  ++c->second.pending[lease_id];
  ++c->second.total_pending;

  LeaseState& lease = leases_[lease_id];
  lease.waiters.push_back(client);
  // Coalescing: the reply to the request in flight answers this one too. Its
  // refresh happened at most one upstream round trip before this request, so
  // the client may see the lease expire that much earlier than TTL after its
  // request, never later (etcd's proxy keeps leases alive ~2x TTL, #13031).
  if (lease.in_flight) return actions;
  switch (upstream_state_) {
    case UpstreamState::kNone:
      // Opened on demand; OnUpstreamOpened sends for every waiting lease.
      upstream_state_ = UpstreamState::kOpening;
      actions.push_back(OpenUpstream{++upstream_});
      break;
    case UpstreamState::kOpening:
      break;
    case UpstreamState::kOpen:
      lease.in_flight = true;
      actions.push_back(SendUpstream{upstream_, lease_id});
      break;
  }
  return actions;
}

std::vector<Action> LeaseCoalescer::OnClientHalfClose(ClientId client) {
  std::vector<Action> actions;
  auto c = clients_.find(client);
  if (c == clients_.end()) return actions;
  c->second.half_closed = true;
  MaybeFinish(client, actions);
  return actions;
}

void LeaseCoalescer::RemoveClient(ClientId client) {
  auto c = clients_.find(client);
  if (c == clients_.end()) return;
  for (const auto& [lease_id, count] : c->second.pending) {
    auto l = leases_.find(lease_id);
    if (l == leases_.end()) continue;
    std::deque<ClientId>& waiters = l->second.waiters;
    waiters.erase(std::remove(waiters.begin(), waiters.end(), client), waiters.end());
    MaybeErase(lease_id);
  }
  clients_.erase(c);
}

std::vector<Action> LeaseCoalescer::OnUpstreamOpened(UpstreamId upstream) {
  std::vector<Action> actions;
  if (upstream != upstream_ || upstream_state_ != UpstreamState::kOpening) return actions;
  upstream_state_ = UpstreamState::kOpen;
  for (auto& [lease_id, lease] : leases_) {
    if (lease.waiters.empty() || lease.in_flight) continue;
    lease.in_flight = true;
    actions.push_back(SendUpstream{upstream_, lease_id});
  }
  return actions;
}

std::vector<Action> LeaseCoalescer::OnUpstreamResponse(
    UpstreamId upstream, const ::etcdserverpb::LeaseKeepAliveResponse& response) {
  std::vector<Action> actions;
  if (upstream != upstream_ || upstream_state_ != UpstreamState::kOpen) return actions;
  auto l = leases_.find(response.id());
  if (l == leases_.end() || !l->second.in_flight) return actions;
  std::deque<ClientId> waiters = std::move(l->second.waiters);
  leases_.erase(l);

  ::etcdserverpb::LeaseKeepAliveResponse reply;
  *reply.mutable_header() = response.header();
  reply.set_id(response.id());
  // etcd's server answers a keep-alive for an unknown (revoked, expired)
  // lease with TTL 0 (v3rpc LeaseKeepAlive maps ErrLeaseNotFound to TTL 0).
  reply.set_ttl(std::max<int64_t>(response.ttl(), 0));

  std::vector<ClientId> touched;
  for (ClientId client : waiters) {
    auto c = clients_.find(client);
    if (c == clients_.end()) continue;
    auto p = c->second.pending.find(response.id());
    if (p == c->second.pending.end()) continue;
    if (--p->second == 0) c->second.pending.erase(p);
    --c->second.total_pending;
    actions.push_back(Reply{client, reply});
    touched.push_back(client);
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  for (ClientId client : touched) MaybeFinish(client, actions);
  return actions;
}

std::vector<Action> LeaseCoalescer::OnUpstreamLost(UpstreamId upstream) {
  std::vector<Action> actions;
  if (upstream != upstream_ || upstream_state_ == UpstreamState::kNone) return actions;
  // Requests in flight on the lost stream will never be answered: forget
  // them, and re-send once a new stream is open.
  for (auto l = leases_.begin(); l != leases_.end();) {
    l->second.in_flight = false;
    if (l->second.waiters.empty()) {
      l = leases_.erase(l);
    } else {
      ++l;
    }
  }
  if (leases_.empty()) {
    // Nothing waits: the next client request opens a stream on demand.
    upstream_state_ = UpstreamState::kNone;
    return actions;
  }
  upstream_state_ = UpstreamState::kOpening;
  actions.push_back(OpenUpstream{++upstream_});
  return actions;
}

size_t LeaseCoalescer::Pending(ClientId client) const {
  auto c = clients_.find(client);
  return c == clients_.end() ? 0 : c->second.total_pending;
}

size_t LeaseCoalescer::InFlightForTest() const {
  if (upstream_state_ != UpstreamState::kOpen) return 0;
  return static_cast<size_t>(std::count_if(leases_.begin(), leases_.end(),
                                           [](const auto& l) { return l.second.in_flight; }));
}

void LeaseCoalescer::MaybeFinish(ClientId client, std::vector<Action>& actions) {
  auto c = clients_.find(client);
  if (c == clients_.end() || !c->second.half_closed || c->second.total_pending != 0) return;
  clients_.erase(c);
  actions.push_back(FinishClient{client});
}

void LeaseCoalescer::MaybeErase(int64_t lease_id) {
  auto l = leases_.find(lease_id);
  if (l != leases_.end() && l->second.waiters.empty() && !l->second.in_flight) leases_.erase(l);
}

}  // namespace keel::coalesce
