#include "coalesce/watch_coalescer.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>

#include "api/errors.h"
#include "google/protobuf/wire_format_lite.h"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::ResponseHeader;
using ::etcdserverpb::WatchCreateRequest;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;

// The cancel_reason of a create refused by the permission check. etcd
// 3.4.23 refuses every failed check (permission denied, bad or missing token,
// stale auth revision) with the text of its gRPC PermissionDenied error as
// gRPC-Go prints it; other probe failures (no leader, timeout, unreachable)
// pass their own message.
std::string RefusalReason(const absl::Status& status) {
  const std::optional<api::EtcdError> e = api::ParseEtcdError(status);
  const bool auth = e == api::EtcdError::kPermissionDenied || e == api::EtcdError::kUserEmpty ||
                    e == api::EtcdError::kInvalidAuthToken ||
                    e == api::EtcdError::kAuthOldRevision || e == api::EtcdError::kUserNotFound;
  if (!auth) return std::string(status.message());
  return std::string(api::kGrpcPermissionDeniedPrefix) +
         std::string(api::EtcdStatus(api::EtcdError::kPermissionDenied).message());
}

// Whether a probe failed because etcd could not answer it (no quorum, an
// election, no endpoint reachable, too slow for the probe's deadline) rather
// than because of the client's request. etcd 3.4 answers a request whose own
// deadline passed while it waited for a quorum with gRPC-Go's text for it
// under UNKNOWN. `etcdserver: no leader` comes only to require-leader
// clients, whose streams etcd ends: their create is refused with it.
bool WaitsForQuorum(const absl::Status& status) {
  if (api::ParseEtcdError(status) == api::EtcdError::kNoLeader) return false;
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded ||
         (status.code() == absl::StatusCode::kUnknown &&
          status.message() == "context deadline exceeded");
}

// The key etcd watches for `key` (an empty key means "\x00").
std::string NormalizeKey(const std::string& key) {
  return key.empty() ? std::string(1, '\0') : key;
}

// etcd's ErrEmptyWatcherRange rule: a non-empty range_end that is not "\x00"
// must sort after the key.
bool ValidRange(const std::string& key, const std::string& range_end) {
  if (range_end.empty() || range_end == std::string(1, '\0')) return true;
  return key < range_end;
}

int64_t LastRevision(const WatchResponse& r) {
  return r.events(r.events_size() - 1).kv().mod_revision();
}

// The highest revision a response tells its receiver about: a created
// header, a progress notification or reply, the last event's revision.
// Cancels tell nothing about the watcher's progress.
int64_t RevisionOf(const WatchResponse& r) {
  if (r.canceled()) return 0;
  if (r.events_size() > 0) return LastRevision(r);
  return r.header().revision();
}

using google::protobuf::internal::WireFormatLite;

// A length-delimited field of `n` bytes (field numbers below 16: a one-byte
// tag).
size_t FieldBytes(size_t n) { return 1 + WireFormatLite::LengthDelimitedSize(n); }

// Whether a watcher with these filters leaves event `e` out.
bool FilteredOut(const ::mvccpb::Event& e, bool no_put, bool no_delete) {
  return (e.type() == ::mvccpb::Event::PUT && no_put) ||
         (e.type() == ::mvccpb::Event::DELETE && no_delete);
}

// `src`'s events from revision `from` on that pass the filters, added to
// `out`. Field by field, and prev_kv only for a watcher that asked for it
// (its group's upstream watcher asked etcd for it as its watchers do).
void AddEvents(const WatchResponse& src, int64_t from, bool prev_kv, bool no_put, bool no_delete,
               WatchResponse& out) {
  for (const auto& e : src.events()) {
    if (e.kv().mod_revision() < from || FilteredOut(e, no_put, no_delete)) continue;
    ::mvccpb::Event* ne = out.add_events();
    ne->set_type(e.type());
    if (e.has_kv()) *ne->mutable_kv() = e.kv();
    if (prev_kv && e.has_prev_kv()) *ne->mutable_prev_kv() = e.prev_kv();
  }
}

}  // namespace

WatchCoalescer::WatchCoalescer(WatchCoalescerOptions options) : options_(options) {}

void WatchCoalescer::Clear() {
  clients_.clear();
  groups_.clear();
  joinable_.clear();
  streams_.clear();
  stream_by_key_.clear();
  probes_.clear();
  client_watcher_count_ = 0;
}

void WatchCoalescer::AddClient(WatchClientId client, std::string token, bool require_leader) {
  Client& c = clients_[client];
  c.token = std::move(token);
  c.require_leader = require_leader;
}

std::vector<WatchAction> WatchCoalescer::OnClientRequest(WatchClientId client,
                                                         const WatchRequest& request) {
  std::vector<WatchAction> actions;
  auto it = clients_.find(client);
  if (it == clients_.end()) return actions;
  Client& c = it->second;
  if (c.requests.size() >= options_.client_request_limit ||
      c.out.size() >= QueueLimit(c) + options_.client_request_limit) {
    // A client writing without reading: end it rather than queue without
    // bound (as the lease side does).
    DropClient(client, actions);
    actions.push_back(WatchEndClient{
        client,
        absl::ResourceExhaustedError(
            "watch stream ended: more than " + std::to_string(options_.client_request_limit) +
            " watch requests waiting or replies unread (the client is not reading)")});
    return actions;
  }
  c.requests.push_back(request);
  ProcessRequests(client, actions);
  return actions;
}

std::vector<WatchAction> WatchCoalescer::RemoveClient(WatchClientId client) {
  std::vector<WatchAction> actions;
  DropClient(client, actions);
  return actions;
}

void WatchCoalescer::DropClient(WatchClientId client, std::vector<WatchAction>& actions) {
  auto it = clients_.find(client);
  if (it == clients_.end()) return;
  for (auto& [id, w] : it->second.watchers) Detach(client, w, actions);
  client_watcher_count_ -= it->second.watchers.size();
  clients_.erase(it);
  // Its probes in flight become stale: OnProbeResult finds no client.
}

ProbeId WatchCoalescer::NewProbe(const Client& c, std::string key, std::string range_end,
                                 PendingProbe p, std::vector<WatchAction>& actions) {
  const ProbeId id = next_probe_++;
  // Without a token there is no permission to check: a fixed point key keeps
  // the read cheap and lets RevisionProbe share it between all clients.
  if (c.token.empty()) {
    key = std::string(1, '\0');
    range_end.clear();
  }
  p.key = key;
  p.range_end = range_end;
  actions.push_back(WatchProbe{id, c.token, c.require_leader, std::move(key), std::move(range_end),
                               p.retry, std::move(p.last_error)});
  probes_.emplace(id, std::move(p));
  return id;
}

void WatchCoalescer::ProcessRequests(WatchClientId client, std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  while (!c.busy && !c.requests.empty()) {
    WatchRequest req = std::move(c.requests.front());
    c.requests.pop_front();
    if (req.has_create_request()) {
      // The permission check covers the client's range; an invalid range is
      // refused after the probe, so probe its key alone. Without a token
      // every create probes the same fixed key.
      auto probe_range = [&c](const WatchCreateRequest& cr) {
        if (c.token.empty()) return std::pair<std::string, std::string>();
        std::string key = NormalizeKey(cr.key());
        std::string end = ValidRange(key, cr.range_end()) ? cr.range_end() : std::string();
        return std::pair(std::move(key), std::move(end));
      };
      auto [key, end] = probe_range(req.create_request());
      PendingProbe p;
      p.client = client;
      p.kind = ProbeKind::kCreate;
      p.creates.push_back(std::move(*req.mutable_create_request()));
      // The following creates that need the same probe share it: it is sent
      // after they all arrived, so its revision is as fresh for each of them.
      while (!c.requests.empty() && c.requests.front().has_create_request() &&
             probe_range(c.requests.front().create_request()) == std::pair(key, end)) {
        p.creates.push_back(std::move(*c.requests.front().mutable_create_request()));
        c.requests.pop_front();
      }
      c.busy = true;
      NewProbe(c, std::move(key), std::move(end), std::move(p), actions);
    } else if (req.has_cancel_request()) {
      const int64_t id = req.cancel_request().watch_id();
      auto wit = c.watchers.find(id);
      if (wit == c.watchers.end()) continue;  // etcd: no reply for an unknown id
      ClientWatcher& w = wit->second;
      PendingProbe p;
      p.client = client;
      p.kind = ProbeKind::kCancel;
      p.watch_id = id;
      p.fallback_header = w.last_header;
      std::string key = w.key;
      std::string end = w.range_end;
      Detach(client, w, actions);
      c.watchers.erase(wit);
      c.resync_waiting.erase(id);
      --client_watcher_count_;
      // Events of this watcher still queued stay: etcd too may send events
      // between a cancel request and its reply.
      c.busy = true;
      NewProbe(c, std::move(key), std::move(end), std::move(p), actions);
    } else if (req.has_progress_request()) {
      PendingProbe p;
      p.client = client;
      p.kind = ProbeKind::kProgress;
      // etcd checks no permission here: probe a range the token may read.
      std::string key(1, '\0');
      std::string end;
      if (!c.watchers.empty()) {
        key = c.watchers.begin()->second.key;
        end = c.watchers.begin()->second.range_end;
        p.fallback_header = c.watchers.begin()->second.last_header;
      }
      c.busy = true;
      NewProbe(c, std::move(key), std::move(end), std::move(p), actions);
    }
  }
}

std::vector<WatchAction> WatchCoalescer::OnProbeResult(
    ProbeId probe, const absl::StatusOr<ResponseHeader>& result) {
  std::vector<WatchAction> actions;
  auto pit = probes_.find(probe);
  if (pit == probes_.end()) return actions;
  PendingProbe p = std::move(pit->second);
  probes_.erase(pit);
  if (result.ok()) last_header_ = *result;
  auto cit = clients_.find(p.client);
  if (cit == clients_.end()) return actions;
  if (p.kind == ProbeKind::kCreate && !result.ok() && WaitsForQuorum(result.status())) {
    // etcd accepts a watch while it has no leader (under its own revision);
    // ours needs a linearizable one, so the create waits for the quorum
    // rather than fail, its probe sent again (the client stays busy).
    ++p.retry;
    ++probe_retries_total_;
    std::string key = p.key;
    std::string end = p.range_end;
    p.last_error = std::string(result.status().message());
    NewProbe(cit->second, std::move(key), std::move(end), std::move(p), actions);
    return actions;
  }
  cit->second.busy = false;
  if (p.kind == ProbeKind::kCreate) {
    for (const WatchCreateRequest& create : p.creates) {
      if (clients_.count(p.client) == 0) break;
      FinishCreate(p.client, create, result, actions);
    }
  } else if (p.kind == ProbeKind::kProgress) {
    FinishProgress(p.client, result.ok() ? &*result : nullptr, p.fallback_header, actions);
  } else {
    WatchResponse out;
    *out.mutable_header() = result.ok() ? *result : p.fallback_header;
    out.set_watch_id(p.watch_id);
    out.set_canceled(true);
    Push(p.client, std::move(out), actions);
  }
  ProcessRequests(p.client, actions);
  return actions;
}

void WatchCoalescer::FinishProgress(WatchClientId client, const ResponseHeader* probed,
                                    const ResponseHeader& fallback,
                                    std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  // etcd answers with its current revision. Ours: the probed revision,
  // lowered to the revision through which each of the client's watchers has
  // been given every event (everything below its own and its group's next),
  // queued behind those events; then raised to the stream's high-water mark
  // (a progress reply never goes back: clientv3 resumes every watcher from
  // it, Kubernetes' watch cache takes it as its revision). Only a watcher
  // whose group lags that mark (an idle range, or events still in flight)
  // can make the raised reply ahead of it; etcd 3.4.23's own reply can
  // overtake queued events the same way (README).
  int64_t revision = probed != nullptr ? probed->revision() : std::numeric_limits<int64_t>::max();
  for (const auto& [id, w] : c.watchers) {
    int64_t through = w.next - 1;
    if (w.group != 0) through = std::max(through, groups_.at(w.group).next - 1);
    revision = std::min(revision, through);
  }
  if (revision == std::numeric_limits<int64_t>::max()) revision = 0;
  revision = std::max(revision, c.high_water);
  WatchResponse out;
  *out.mutable_header() = probed != nullptr ? *probed : fallback;
  out.mutable_header()->set_revision(std::max<int64_t>(revision, 0));
  out.set_watch_id(-1);
  Push(client, std::move(out), actions);
}

void WatchCoalescer::FinishCreate(WatchClientId client, const WatchCreateRequest& cr,
                                  const absl::StatusOr<ResponseHeader>& result,
                                  std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  auto fail = [&](const ResponseHeader* header, std::string reason) {
    WatchResponse out;
    // Always a header: clientv3 3.4 dereferences it (a refusal without one
    // crashes etcdctl). Without a probed one, the latest seen.
    *out.mutable_header() = header != nullptr ? *header : last_header_;
    out.set_watch_id(-1);
    out.set_created(true);
    out.set_canceled(true);
    out.set_cancel_reason(std::move(reason));
    Push(client, std::move(out), actions);
  };
  if (!result.ok()) {
    // etcd's shape for a refused permission check (etcd's header is its
    // current one; ours the latest this proxy has seen).
    fail(nullptr, RefusalReason(result.status()));
    return;
  }
  const ResponseHeader& header = *result;
  std::string key = NormalizeKey(cr.key());
  if (!ValidRange(key, cr.range_end())) {
    fail(&header, std::string(api::kWatchRangeEmptyReason));
    return;
  }
  int64_t id = cr.watch_id();
  if (id == 0) {  // etcd's AutoWatchID: the next id not in use on the stream
    while (c.watchers.count(c.next_auto_id) != 0) ++c.next_auto_id;
    id = c.next_auto_id++;
  } else if (c.watchers.count(id) != 0) {
    fail(&header, std::string(api::kWatchDuplicateIdReason));
    return;
  }
  ClientWatcher w;
  w.watch_id = id;
  w.key = std::move(key);
  w.range_end = cr.range_end();
  w.prev_kv = cr.prev_kv();
  w.progress_notify = cr.progress_notify();
  w.fragment = cr.fragment();
  for (int f : cr.filters()) {
    if (f == WatchCreateRequest::NOPUT) w.no_put = true;
    if (f == WatchCreateRequest::NODELETE) w.no_delete = true;
  }
  w.last_header = header;
  c.watchers.emplace(id, std::move(w));
  ++client_watcher_count_;

  WatchResponse created;
  *created.mutable_header() = header;
  created.set_watch_id(id);
  created.set_created(true);
  Push(client, std::move(created), actions);

  // From now: every event after the probed revision, which is >= every
  // revision acknowledged before the create. Historical: from the start. A
  // negative start is historical too: etcd 3.4.23 creates it and then
  // cancels it with compact_revision = its compacted revision (-1 before
  // any compaction); the dedicated watcher forwards exactly that.
  // Only a "from now" watcher may be replayed from a group's history: it
  // cannot have been compacted, while an old start revision may have been
  // (etcd then cancels it; only a dedicated watcher learns that).
  const int64_t now_next = header.revision() + 1;
  const int64_t need = cr.start_revision() == 0 ? now_next : cr.start_revision();
  Attach(client, id, need, now_next, /*allow_replay=*/cr.start_revision() == 0, actions);
}

void WatchCoalescer::Attach(WatchClientId client, int64_t watch_id, int64_t need, int64_t now_next,
                            bool allow_replay, std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  ClientWatcher& w = c.watchers.at(watch_id);
  GroupKey key{c.token, c.require_leader, w.key, w.range_end, w.prev_kv};
  w.next = need;
  auto jit = joinable_.find(key);
  if (jit == joinable_.end()) {
    if (need < now_next) {
      // Historical: only etcd knows whether `need` was compacted, and its
      // compaction cancel must end this watcher alone.
      AttachDedicated(client, watch_id, need, actions);
      return;
    }
    // A shared group always starts at "now", so that later joiners can use
    // it even when this watcher's start revision is in the future.
    const GroupId gid = NewGroup(std::move(key), /*joinable=*/true, now_next, actions);
    groups_.at(gid).receivers.insert({client, watch_id});
    w.group = gid;
    return;
  }
  const GroupId gid = jit->second;
  Group& g = groups_.at(gid);
  if (need >= g.next) {
    g.receivers.insert({client, watch_id});
    w.group = gid;
    return;
  }
  if (!allow_replay || g.covers_from > need) {
    AttachDedicated(client, watch_id, need, actions);
    return;
  }
  // Replay the group's history from `need`, then live. The watcher joins
  // first; a replay that overflows its client detaches it again (resync).
  g.receivers.insert({client, watch_id});
  w.group = gid;
  for (size_t i = 0;; ++i) {
    auto git = groups_.find(gid);
    if (git == groups_.end() || i >= git->second.history.size()) break;
    auto cit = clients_.find(client);
    auto wit = cit->second.watchers.find(watch_id);
    if (wit == cit->second.watchers.end() || wit->second.group != gid) break;
    Deliver(client, wit->second, git->second.history[i], actions);
  }
}

void WatchCoalescer::AttachDedicated(WatchClientId client, int64_t watch_id, int64_t from,
                                     std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  ClientWatcher& w = c.watchers.at(watch_id);
  ++resyncs_total_;
  const GroupId gid = NewGroup(GroupKey{c.token, c.require_leader, w.key, w.range_end, w.prev_kv},
                               /*joinable=*/false, from, actions);
  groups_.at(gid).receivers.insert({client, watch_id});
  w.group = gid;
  w.next = from;
}

WatchCoalescer::GroupId WatchCoalescer::NewGroup(GroupKey key, bool joinable, int64_t from,
                                                 std::vector<WatchAction>& actions) {
  const GroupId gid = next_group_++;
  StreamKey sk{std::get<0>(key), std::get<1>(key)};
  auto sit = stream_by_key_.find(sk);
  UpstreamStreamId sid;
  if (sit == stream_by_key_.end()) {
    sid = next_stream_++;
    Stream s;
    s.key = sk;
    streams_.emplace(sid, std::move(s));
    stream_by_key_.emplace(sk, sid);
    actions.push_back(WatchOpenUpstream{sid, sk.first, sk.second});
  } else {
    sid = sit->second;
  }
  Group g;
  g.key = key;
  g.joinable = joinable;
  g.stream = sid;
  g.next = from;
  g.covers_from = from;
  groups_.emplace(gid, std::move(g));
  if (joinable) joinable_[std::move(key)] = gid;
  Stream& s = streams_.at(sid);
  s.groups.insert(gid);
  if (s.open) SendCreate(gid, actions);
  return gid;
}

void WatchCoalescer::SendCreate(GroupId id, std::vector<WatchAction>& actions) {
  Group& g = groups_.at(id);
  Stream& s = streams_.at(g.stream);
  const int64_t uwid = s.next_watch_id++;
  g.upstream_watch_id = uwid;
  s.watchers[uwid] = id;
  s.pending_creates.push_back(uwid);
  WatchSendUpstream send;
  send.stream = g.stream;
  WatchCreateRequest* cr = send.request.mutable_create_request();
  cr->set_key(std::get<2>(g.key));
  cr->set_range_end(std::get<3>(g.key));
  cr->set_start_revision(g.next);
  cr->set_progress_notify(true);
  cr->set_prev_kv(std::get<4>(g.key));
  cr->set_watch_id(uwid);
  actions.push_back(std::move(send));
}

void WatchCoalescer::Detach(WatchClientId client, ClientWatcher& w,
                            std::vector<WatchAction>& actions) {
  if (w.group == 0) return;
  const GroupId gid = w.group;
  w.group = 0;
  auto git = groups_.find(gid);
  if (git == groups_.end()) return;
  git->second.receivers.erase({client, w.watch_id});
  if (git->second.receivers.empty()) RemoveGroup(gid, /*cancel_upstream=*/true, actions);
}

void WatchCoalescer::RemoveGroup(GroupId id, bool cancel_upstream,
                                 std::vector<WatchAction>& actions) {
  auto git = groups_.find(id);
  if (git == groups_.end()) return;
  Group& g = git->second;
  if (auto jit = joinable_.find(g.key); jit != joinable_.end() && jit->second == id) {
    joinable_.erase(jit);
  }
  const UpstreamStreamId sid = g.stream;
  Stream& s = streams_.at(sid);
  if (g.upstream_watch_id != 0) {
    s.watchers.erase(g.upstream_watch_id);
    // A create still unanswered stays in pending_creates: its reply must
    // still be matched. etcd handles the cancel after the create.
    if (cancel_upstream && s.open) {
      WatchSendUpstream send;
      send.stream = sid;
      send.request.mutable_cancel_request()->set_watch_id(g.upstream_watch_id);
      actions.push_back(std::move(send));
    }
  }
  s.groups.erase(id);
  groups_.erase(git);
  if (s.groups.empty()) {
    stream_by_key_.erase(s.key);
    streams_.erase(sid);
    actions.push_back(WatchCloseUpstream{sid});
  }
}

std::vector<WatchAction> WatchCoalescer::OnUpstreamOpened(UpstreamStreamId stream) {
  std::vector<WatchAction> actions;
  auto sit = streams_.find(stream);
  if (sit == streams_.end()) {
    // Every watcher of it left while it was being opened (the glue may have
    // had no handle to cancel yet): close it now.
    actions.push_back(WatchCloseUpstream{stream});
    return actions;
  }
  if (sit->second.open) return actions;
  sit->second.open = true;
  for (GroupId gid : sit->second.groups) SendCreate(gid, actions);
  return actions;
}

std::vector<WatchAction> WatchCoalescer::OnUpstreamLost(UpstreamStreamId stream) {
  std::vector<WatchAction> actions;
  auto sit = streams_.find(stream);
  if (sit == streams_.end()) return actions;
  Stream old = std::move(sit->second);
  streams_.erase(sit);
  stream_by_key_.erase(old.key);
  if (old.groups.empty()) return actions;
  // The same watchers on a new stream, each from the first revision it has
  // not received: the clients see nothing of it.
  const UpstreamStreamId sid = next_stream_++;
  Stream s;
  s.key = old.key;
  s.groups = old.groups;
  for (GroupId gid : s.groups) {
    Group& g = groups_.at(gid);
    g.stream = sid;
    g.upstream_watch_id = 0;
    // Every receiver already has the events below its own next: the new
    // watcher starts at the lowest of those when it is past the group's (a
    // group idle since before its receivers were created), so a compaction
    // of what nobody needs cannot cancel them. The history then only covers
    // from there.
    int64_t need = std::numeric_limits<int64_t>::max();
    for (const auto& [client, watch_id] : g.receivers) {
      need = std::min(need, clients_.at(client).watchers.at(watch_id).next);
    }
    if (!g.receivers.empty() && need > g.next) {
      g.next = need;
      g.covers_from = need;
      g.history.clear();
      g.history_bytes = 0;
    }
  }
  streams_.emplace(sid, std::move(s));
  stream_by_key_.emplace(old.key, sid);
  actions.push_back(WatchOpenUpstream{sid, old.key.first, old.key.second});
  return actions;
}

std::vector<WatchAction> WatchCoalescer::OnUpstreamResponse(UpstreamStreamId stream,
                                                            WatchResponse response) {
  std::vector<WatchAction> actions;
  auto sit = streams_.find(stream);
  if (sit == streams_.end()) return actions;
  Stream& s = sit->second;
  int64_t uwid = response.watch_id();
  if (response.created()) {
    // etcd answers creates in order; a refused one carries watch_id -1.
    if (uwid == -1) {
      if (s.pending_creates.empty()) return actions;
      uwid = s.pending_creates.front();
      s.pending_creates.pop_front();
    } else if (auto pit = std::find(s.pending_creates.begin(), s.pending_creates.end(), uwid);
               pit != s.pending_creates.end()) {
      s.pending_creates.erase(pit);
    }
    auto wit = s.watchers.find(uwid);
    if (wit == s.watchers.end()) return actions;
    // The upstream `created` is never forwarded: the client got its own.
    if (response.canceled()) HandleUpstreamCancel(wit->second, response, actions);
    return actions;
  }
  auto wit = s.watchers.find(uwid);
  if (wit == s.watchers.end()) return actions;  // stream-wide, or a watcher we cancelled
  const GroupId gid = wit->second;
  if (response.canceled() || response.compact_revision() != 0) {
    HandleUpstreamCancel(gid, response, actions);
  } else if (response.events_size() > 0) {
    HandleEvents(gid, Measured(std::move(response)), actions);
  } else {
    HandleProgress(gid, response, actions);
  }
  return actions;
}

void WatchCoalescer::HandleUpstreamCancel(GroupId id, const WatchResponse& resp,
                                          std::vector<WatchAction>& actions) {
  Group& g = groups_.at(id);
  const auto receivers = g.receivers;
  g.receivers.clear();
  // etcd cancels a watcher for compaction only when its next revision is
  // below the compacted one: receivers already past it are not cancelled
  // but move on from their own next revision.
  std::vector<std::pair<WatchClientId, int64_t>> survivors;
  for (const auto& [client, watch_id] : receivers) {
    Client& c = clients_.at(client);
    auto wit = c.watchers.find(watch_id);
    if (wit == c.watchers.end()) continue;
    if (resp.compact_revision() != 0 && wit->second.next >= resp.compact_revision()) {
      wit->second.group = 0;
      survivors.emplace_back(client, watch_id);
      continue;
    }
    WatchResponse out;
    *out.mutable_header() = resp.header();
    out.set_watch_id(watch_id);
    out.set_canceled(true);
    out.set_compact_revision(resp.compact_revision());
    out.set_cancel_reason(resp.cancel_reason());
    c.watchers.erase(wit);
    c.resync_waiting.erase(watch_id);
    --client_watcher_count_;
    Push(client, std::move(out), actions);
  }
  // Dead: out of the joinable index at once, never joined again.
  RemoveGroup(id, /*cancel_upstream=*/false, actions);
  for (const auto& [client, watch_id] : survivors) {
    const int64_t from = clients_.at(client).watchers.at(watch_id).next;
    Attach(client, watch_id, from, std::numeric_limits<int64_t>::max(), /*allow_replay=*/true,
           actions);
  }
}

WatchCoalescer::SharedEvents WatchCoalescer::Measured(WatchResponse response) {
  auto held = std::make_shared<UpstreamEvents>();
  // ByteSizeLong caches every nested message's size: read those below.
  held->bytes = response.ByteSizeLong();
  held->header_bytes = FieldBytes(response.header().GetCachedSize());
  held->event_bytes.reserve(static_cast<size_t>(response.events_size()));
  for (const ::mvccpb::Event& e : response.events()) {
    UpstreamEvents::EventBytes b;
    if (e.type() != ::mvccpb::Event::PUT) b.type = 1 + WireFormatLite::EnumSize(e.type());
    if (e.has_kv()) b.kv = FieldBytes(e.kv().GetCachedSize());
    if (e.has_prev_kv()) b.prev_kv = FieldBytes(e.prev_kv().GetCachedSize());
    held->event_bytes.push_back(b);
  }
  held->response = std::move(response);
  return held;
}

void WatchCoalescer::HandleEvents(GroupId id, SharedEvents held,
                                  std::vector<WatchAction>& actions) {
  Group& g = groups_.at(id);
  const int64_t last = LastRevision(held->response);
  if (last < g.next) return;  // nothing new (cannot happen with etcd; cheap to check)
  g.next = last + 1;
  if (g.joinable) {
    g.history.push_back(held);
    g.history_bytes += held->bytes;
    while (!g.history.empty() && (g.history.size() > options_.history_responses ||
                                  g.history_bytes > options_.history_bytes)) {
      g.covers_from = LastRevision(g.history.front()->response) + 1;
      g.history_bytes -= g.history.front()->bytes;
      g.history.pop_front();
    }
  }
  // A snapshot (Deliver may detach a slow receiver); a vector, not a copy of
  // the set: one allocation per event instead of one per receiver.
  const std::vector<std::pair<WatchClientId, int64_t>> receivers(g.receivers.begin(),
                                                                 g.receivers.end());
  if (receivers.size() > 1) events_coalescing_total_ += receivers.size() - 1;
  for (const auto& [client, watch_id] : receivers) {
    auto cit = clients_.find(client);
    if (cit == clients_.end()) continue;
    auto wit = cit->second.watchers.find(watch_id);
    if (wit == cit->second.watchers.end() || wit->second.group != id) continue;
    Deliver(client, wit->second, held, actions);
  }
  MaybeMerge(id, actions);
}

void WatchCoalescer::MaybeMerge(GroupId id, std::vector<WatchAction>& actions) {
  auto git = groups_.find(id);
  if (git == groups_.end() || git->second.joinable || git->second.receivers.size() != 1) return;
  auto jit = joinable_.find(git->second.key);
  if (jit == joinable_.end()) {
    // No shared group for its key: this one becomes it (Kubernetes'
    // apiservers always watch from a revision, so otherwise nothing would
    // ever be shared). Exact: it has answered, so its start was not
    // compacted, and `next` has the same meaning for every group; its
    // history starts empty, from `next` (joiners needing older events get
    // their own watcher, as for any group).
    Group& g = git->second;
    g.joinable = true;
    g.covers_from = g.next;
    g.history.clear();
    g.history_bytes = 0;
    joinable_[g.key] = id;
    return;
  }
  const Group& g = groups_.at(jit->second);
  const auto [client, watch_id] = *git->second.receivers.begin();
  ClientWatcher& w = clients_.at(client).watchers.at(watch_id);
  // This dedicated watcher has answered with events or progress, so etcd
  // did not find its start compacted: from here on it only has to deliver
  // every event from w.next on, once. The group has every event below its
  // next, and its history every one from covers_from: once that reaches
  // back to w.next, the group can take over exactly (Deliver cuts below
  // w.next, so nothing is repeated).
  if (g.covers_from > w.next) return;
  RemoveGroup(id, /*cancel_upstream=*/true, actions);
  w.group = 0;
  const int64_t need = w.next;
  Attach(client, watch_id, need, std::numeric_limits<int64_t>::max(), /*allow_replay=*/true,
         actions);
}

void WatchCoalescer::HandleProgress(GroupId id, const WatchResponse& resp,
                                    std::vector<WatchAction>& actions) {
  Group& g = groups_.at(id);
  // etcd sends a watcher's progress notification only while it is synced,
  // in order with its events: every event up to this revision was received.
  const int64_t after = resp.header().revision() + 1;
  if (after <= g.next) return;
  g.next = after;
  for (const auto& [client, watch_id] : g.receivers) {
    Client& c = clients_.at(client);
    ClientWatcher& w = c.watchers.at(watch_id);
    if (w.next > after) continue;  // its created revision is later than this
    w.next = after;
    if (!w.progress_notify || c.out.size() >= QueueLimit(c)) continue;
    WatchResponse out;
    *out.mutable_header() = resp.header();
    out.set_watch_id(watch_id);
    w.last_header = resp.header();
    Push(client, std::move(out), actions);
  }
  MaybeMerge(id, actions);
}

void WatchCoalescer::Deliver(WatchClientId client, ClientWatcher& w, const SharedEvents& held,
                             std::vector<WatchAction>& actions) {
  const WatchResponse& resp = held->response;
  const int64_t last = LastRevision(resp);
  if (last < w.next) return;
  int64_t first = 0;      // the first event from w.next on
  int64_t last_kept = 0;  // the last one the filters keep
  int kept = 0;
  // The view's encoded size, as protobuf would count it.
  size_t bytes = held->header_bytes;
  if (w.watch_id != 0) bytes += 1 + WireFormatLite::Int64Size(w.watch_id);
  for (int i = 0; i < resp.events_size(); ++i) {
    const ::mvccpb::Event& e = resp.events(i);
    if (e.kv().mod_revision() < w.next) continue;
    if (first == 0) first = e.kv().mod_revision();
    if (FilteredOut(e, w.no_put, w.no_delete)) continue;
    last_kept = e.kv().mod_revision();
    ++kept;
    const UpstreamEvents::EventBytes& b = held->event_bytes[i];
    bytes += FieldBytes(b.type + b.kv + (w.prev_kv ? b.prev_kv : 0));
  }
  Client& c = clients_.at(client);
  if (kept > 0 && !c.out.empty() &&
      (c.out.size() >= QueueLimit(c) || c.out_bytes + bytes > options_.client_queue_bytes)) {
    // Too slow: this response is not queued; the watcher leaves its group
    // and is resynced from this response's first event once the client has
    // read half its queue. What is already queued stays (so every resync
    // makes progress, even for a client that always reads too slowly).
    const int64_t from = first;
    Detach(client, w, actions);
    w.next = from;
    c.resync_waiting.insert(w.watch_id);
    ++resyncs_total_;
    // The glue's next PopResponse (made when the client has read) resyncs.
    actions.push_back(WatchWake{client});
    return;
  }
  const int64_t from = w.next;
  w.next = last + 1;
  if (kept == 0) return;
  w.last_header = resp.header();
  Queued q;
  q.events = held;
  q.watch_id = w.watch_id;
  q.from = from;
  q.prev_kv = w.prev_kv;
  q.no_put = w.no_put;
  q.no_delete = w.no_delete;
  q.bytes = bytes;  // exactly the view's encoded size
  if (!w.fragment || kept < 2 || bytes < options_.fragment_bytes) {
    Push(client, std::move(q), last_kept, actions);
    return;
  }
  const WatchResponse out = Built(q);
  // etcd's fragmentation: pieces filled in order, each with at least one
  // event, a piece closed before the event that would bring it to the limit;
  // every piece but the last has fragment=true.
  WatchResponse piece = out;
  piece.clear_events();
  piece.set_fragment(true);
  const WatchResponse empty = piece;
  for (int i = 0; i < out.events_size(); ++i) {
    *piece.add_events() = out.events(i);
    if (piece.events_size() > 1 && piece.ByteSizeLong() >= options_.fragment_bytes) {
      piece.mutable_events()->RemoveLast();
      Push(client, std::move(piece), actions);
      piece = empty;
      *piece.add_events() = out.events(i);
    }
  }
  piece.set_fragment(false);
  Push(client, std::move(piece), actions);
}

WatchResponse WatchCoalescer::Built(Queued& q) {
  if (q.events == nullptr) return std::move(*q.built);
  WatchResponse out;
  *out.mutable_header() = q.events->response.header();
  out.set_watch_id(q.watch_id);
  AddEvents(q.events->response, q.from, q.prev_kv, q.no_put, q.no_delete, out);
  return out;
}

void WatchCoalescer::Push(WatchClientId client, WatchResponse resp,
                          std::vector<WatchAction>& actions) {
  const int64_t revision = RevisionOf(resp);
  Queued q;
  q.bytes = resp.ByteSizeLong();
  q.built = std::make_unique<WatchResponse>(std::move(resp));
  Push(client, std::move(q), revision, actions);
}

void WatchCoalescer::Push(WatchClientId client, Queued q, int64_t revision,
                          std::vector<WatchAction>& actions) {
  Client& c = clients_.at(client);
  const bool was_empty = c.out.empty();
  c.high_water = std::max(c.high_water, revision);
  c.out_bytes += q.bytes;
  c.out.push_back(std::move(q));
  if (was_empty) actions.push_back(WatchWake{client});
}

std::pair<std::optional<WatchCoalescer::TakenResponse>, std::vector<WatchAction>>
WatchCoalescer::PopResponse(WatchClientId client) {
  std::pair<std::optional<TakenResponse>, std::vector<WatchAction>> result;
  auto cit = clients_.find(client);
  if (cit == clients_.end()) return result;
  Client& c = cit->second;
  if (!c.out.empty()) {
    c.out_bytes -= c.out.front().bytes;
    result.first = TakenResponse(std::move(c.out.front()));
    c.out.pop_front();
  }
  // The client reads again: resync its dropped watchers once its queue is
  // down to half.
  if (!c.resync_waiting.empty() && c.out.size() <= QueueLimit(c) / 2 &&
      c.out_bytes <= options_.client_queue_bytes / 2) {
    const std::set<int64_t> waiting = std::move(c.resync_waiting);
    c.resync_waiting.clear();
    for (int64_t id : waiting) {
      if (clients_.at(client).watchers.count(id) == 0) continue;
      // Resumed from its own next revision: a group's history may serve it
      // (etcd's victim watchers keep their events in memory too); without a
      // group it gets a dedicated watcher.
      const int64_t from = clients_.at(client).watchers.at(id).next;
      Attach(client, id, from, std::numeric_limits<int64_t>::max(), /*allow_replay=*/true,
             result.second);
    }
  }
  return result;
}

size_t WatchCoalescer::watchers_coalescing() const {
  size_t n = 0;
  for (const auto& [id, g] : groups_) {
    if (g.joinable && g.receivers.size() > 1) n += g.receivers.size() - 1;
  }
  return n;
}

size_t WatchCoalescer::QueuedForTest(WatchClientId client) const {
  auto it = clients_.find(client);
  return it == clients_.end() ? 0 : it->second.out.size();
}

}  // namespace keel::coalesce
