#pragma once

// The pure core of watch coalescing (issue 5; spec/proxy.md 2.5, 3.1,
// scenarios 19-32): N client watchers on the same range share one upstream
// watcher, and every client watcher sees exactly the stream etcd itself would
// send it:
//  - one `created` reply, ever, with a complete header whose revision R is the
//    current store revision (a linearizable probe, see api/revision_probe.h);
//  - then exactly the events with mod_revision > R (start_revision 0) or
//    >= start_revision, each once, in revision order, with its own filters
//    and prev_kv, under the upstream response's header;
//  - an upstream cancel (compaction, auth, server cancel) forwarded with its
//    compact_revision and cancel_reason; the group it ended is never joined
//    again (etcd #21813, #18231, #10650);
//  - upstream stream losses are invisible: every upstream watcher is created
//    again from the first revision it has not delivered (no second created,
//    etcd #21881);
//  - a progress request answered {watch_id -1} with a revision never below
//    anything the stream was already given, and behind every event up to it
//    as far as the core can know (see FinishProgress for the exact rule).
//
// Model. A client stream (WatchClientId, chosen by the glue) holds client
// watchers (c-watchers), each known by the etcd watch_id it has on that stream.
// A group is (token, require_leader, key, range_end, prev_kv) as sent (an empty
// key is "\x00", as etcd treats it); it has one upstream watcher, with
// progress_notify on, prev_kv as its c-watchers ask and no filters, on the
// upstream Watch stream of its (token, require_leader). prev_kv splits groups
// because it is not free: etcd reads the old value for every event of a prev_kv
// watcher, and on a busy range that costs it most of its write throughput
// (bench/watch_write_cost.sh), so only the watchers that ask for it pay for it.
// (So a range watched with and without prev_kv costs etcd two watchers, where
// etcd's proxy, which always asks, has one. One watcher that switches prev_kv
// on and off instead would have to be created again from the group's next
// revision, which etcd may have compacted on an idle range or refuse after an
// auth change: every client watcher of the range would be cancelled.) A group
// tracks `next`: every event with a lower revision has been received. A "from
// now" c-watcher needing older events than its group's `next` is replayed from
// the group's bounded history; a historical one (or one the history does not
// reach) gets a dedicated upstream watcher of its own, since only etcd knows
// whether its start was compacted; once that watcher has answered and the
// group's history reaches back to it, the c-watcher moves into the group (when
// its key has no group, its watcher becomes the key's group instead). After an
// upstream loss a group is created again from max(its next, the lowest next of
// its c-watchers); a compaction cancel ends only the c-watchers whose next
// revision was compacted (as etcd would), the others move on from their own.
// The upstream watcher's `next` advances by the last event's revision
// (historical batches may carry a header revision beyond the events they hold)
// and by progress notifications (sent by etcd only for synced watchers, in
// order).
//
// Intended glue (coalesce/watch_coalescing_backend.h): one WatchCoalescer
// under one mutex; every input is "lock, call the core, unlock, execute the
// returned actions in order":
//  - WatchProbe: api::RevisionProbe::Fetch with the given token,
//    require_leader, key and range_end, then OnProbeResult.
//  - WatchOpenUpstream: inner.Watch(ctx{token, require_leader}) (after a
//    backoff when the previous stream of that identity failed), then
//    OnUpstreamOpened; its responses go to OnUpstreamResponse, its OnDone to
//    OnUpstreamLost.
//  - WatchSendUpstream: write the request on that stream (dropped if stale).
//  - WatchCloseUpstream: cancel that stream; its OnDone is then stale.
//  - WatchWake: the client has responses queued (or a resync waiting):
//    PopResponse while it has ReadNext credits.
// Thread-compatible: the owner serializes every call (a TakenResponse, once
// taken, is the caller's own: it may be built outside the owner's lock).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "api/etcdserverpb/rpc.pb.h"

namespace keel::coalesce {

// Opaque id of one client Watch stream, chosen by the glue; never reused
// while registered.
using WatchClientId = uint64_t;
// Id of one upstream Watch stream (a generation: a replacement gets a new
// id), chosen by the core. Inputs naming a stream the core forgot are stale
// and ignored.
using UpstreamStreamId = uint64_t;
// Id of one revision probe, chosen by the core.
using ProbeId = uint64_t;

// Fetch the current revision header (api::RevisionProbe) over [key,
// range_end) with this identity, then call OnProbeResult(probe, result).
// `retry` > 0: the retry-th attempt of a create's probe that etcd could not
// answer (no quorum, unreachable), `error` the last try's; the glue waits
// before it (backoff), the core has no clock.
struct WatchProbe {
  ProbeId probe = 0;
  std::string token;
  bool require_leader = false;
  std::string key;
  std::string range_end;
  int retry = 0;
  std::string error;
};
// Open upstream Watch stream `stream` with this identity, then call
// OnUpstreamOpened(stream).
struct WatchOpenUpstream {
  UpstreamStreamId stream = 0;
  std::string token;
  bool require_leader = false;
};
// Write `request` on upstream stream `stream`.
struct WatchSendUpstream {
  UpstreamStreamId stream = 0;
  ::etcdserverpb::WatchRequest request;
};
// Cancel upstream stream `stream`: nothing of it is needed any more.
struct WatchCloseUpstream {
  UpstreamStreamId stream = 0;
};
// Client `client` has responses to take with PopResponse.
struct WatchWake {
  WatchClientId client = 0;
};
// End client stream `client` with `status` (its request backlog overflowed).
// The core has already forgotten it (as after RemoveClient).
struct WatchEndClient {
  WatchClientId client = 0;
  absl::Status status;
};

// What the glue must do, in list order.
using WatchAction = std::variant<WatchProbe, WatchOpenUpstream, WatchSendUpstream,
                                 WatchCloseUpstream, WatchWake, WatchEndClient>;

// Tunables of the core.
struct WatchCoalescerOptions {
  // Responses with events kept per group for replay to late joiners, and
  // their encoded bytes at most (the oldest go first).
  size_t history_responses = 1024;
  size_t history_bytes = 8 << 20;
  // Responses (and encoded bytes) queued for one client stream before the
  // c-watcher whose event response does not fit is dropped from its group and
  // resynced later from its own next revision. A response is always queued
  // when the queue is empty, whatever its size.
  size_t client_queue_limit = 1024;
  size_t client_queue_bytes = 16 << 20;
  // Plus this many responses per watcher of the stream: one event on a key
  // that N watchers of one stream watch is N responses (etcd buffers 128
  // per watcher), so a stream with 10,000 watchers that reads is not slow.
  size_t client_queue_per_watcher = 4;
  // Requests of one client stream waiting for earlier ones (each create,
  // cancel or progress request waits for a probe; consecutive creates share
  // one), or replies beyond client_queue_limit it has not read: one more
  // request ends the stream with RESOURCE_EXHAUSTED (WatchEndClient). Large
  // enough for a client that opens tens of thousands of watchers on one
  // stream before reading (the front reads requests eagerly; a request and a
  // created reply are each about 100 bytes).
  size_t client_request_limit = 65536;
  // A response to a watcher that asked for `fragment` is split when its
  // encoded size reaches this (etcd: --max-request-bytes + 512 KiB, its
  // defaults here).
  size_t fragment_bytes = 1572864 + 512 * 1024;
};

// Decides which upstream watchers exist, which responses go to which client
// watcher and when. Never does I/O, never reads a clock. Thread-compatible.
class WatchCoalescer {
 public:
  explicit WatchCoalescer(WatchCoalescerOptions options = {});
  WatchCoalescer(const WatchCoalescer&) = delete;
  WatchCoalescer& operator=(const WatchCoalescer&) = delete;

  // Forgets everything (clients, groups, streams, probes); later inputs about
  // them are stale. For the owner's shutdown.
  void Clear();

  // Registers a client Watch stream opened with this identity.
  // REQUIRES: `client` is not registered.
  void AddClient(WatchClientId client, std::string token, bool require_leader);

  // A request from client `client`. Requests of one client are handled in
  // order: a create or cancel waits for its probe before the next request is
  // looked at. A progress request is answered {watch_id -1, header} once
  // (the revision rule is FinishProgress's). A request beyond the backlog
  // limits (options) ends the client: RemoveClient's actions plus
  // WatchEndClient(RESOURCE_EXHAUSTED). Ignored for unknown clients.
  std::vector<WatchAction> OnClientRequest(WatchClientId client,
                                           const ::etcdserverpb::WatchRequest& request);

  // Client `client` is gone: its c-watchers leave their groups (upstream
  // watchers left without receivers are cancelled) and its queued responses
  // are dropped. Ignored for unknown clients.
  std::vector<WatchAction> RemoveClient(WatchClientId client);

  // The result of WatchProbe `probe`: the header of a linearizable read, or
  // the error etcd gave (used as a create's cancel_reason, unless etcd could
  // not answer: unavailable or past the deadline, but not `etcdserver: no
  // leader`; then the create's probe is sent again, with `retry` counting
  // up). Ignored when stale.
  std::vector<WatchAction> OnProbeResult(
      ProbeId probe, const absl::StatusOr<::etcdserverpb::ResponseHeader>& result);

  // Upstream stream `stream` accepts writes: the creates of its watchers go
  // out. For a stream the core no longer wants (all its watchers left while
  // it was being opened) the answer is WatchCloseUpstream(stream).
  std::vector<WatchAction> OnUpstreamOpened(UpstreamStreamId stream);

  // One response read from upstream stream `stream`. Ignored when stale.
  std::vector<WatchAction> OnUpstreamResponse(UpstreamStreamId stream,
                                              ::etcdserverpb::WatchResponse response);

  // Upstream stream `stream` ended (any status). Its live watchers move to a
  // new stream of the same identity (WatchOpenUpstream) and are created
  // there again from their next revision. Ignored when stale.
  std::vector<WatchAction> OnUpstreamLost(UpstreamStreamId stream);

  // A response taken from a client's queue, made by Build(): a watcher's
  // view of an upstream response is copied out by the thread that sends it,
  // outside whatever lock guards the coalescer.
  class TakenResponse;
  // Takes the oldest response queued for `client` (nullopt if none). Call it
  // only when the client can take a response (the glue: when it has a
  // ReadNext credit). May return actions: a c-watcher dropped for being slow
  // is resynced here once its client's queue has drained to half the limit.
  std::pair<std::optional<TakenResponse>, std::vector<WatchAction>> PopResponse(
      WatchClientId client);

  // Metrics.
  // Client watchers registered (all clients).
  size_t client_watchers() const { return client_watcher_count_; }
  // Upstream watchers (group ones and dedicated ones).
  size_t upstream_watchers() const { return groups_.size(); }
  // Upstream Watch streams open or opening.
  size_t upstream_streams() const { return streams_.size(); }
  // Client watchers beyond the first of each group (etcd's
  // etcd_grpc_proxy_watchers_coalescing_total).
  size_t watchers_coalescing() const;
  // Per upstream response with events, receivers - 1, summed (etcd's
  // etcd_grpc_proxy_events_coalescing_total).
  uint64_t events_coalescing_total() const { return events_coalescing_total_; }
  // Client watchers given a dedicated upstream watcher (history too short,
  // or resynced after being too slow).
  uint64_t resyncs_total() const { return resyncs_total_; }
  // Create probes sent again because etcd could not answer the last try.
  uint64_t probe_retries_total() const { return probe_retries_total_; }
  // Responses queued for `client` (0 for unknown clients).
  size_t QueuedForTest(WatchClientId client) const;

 private:
  using GroupId = uint64_t;
  // (token, require_leader, key, range_end, prev_kv).
  using GroupKey = std::tuple<std::string, bool, std::string, std::string, bool>;
  // (token, require_leader).
  using StreamKey = std::pair<std::string, bool>;

  struct ClientWatcher {
    int64_t watch_id = 0;
    std::string key;
    std::string range_end;
    GroupId group = 0;  // 0 while waiting for a resync
    int64_t next = 0;   // the lowest revision not yet delivered to it
    bool prev_kv = false;
    bool progress_notify = false;
    bool no_put = false;
    bool no_delete = false;
    bool fragment = false;
    ::etcdserverpb::ResponseHeader last_header;
  };
  // An upstream event response and the encoded sizes a watcher's view of it
  // is made of; shared by its group's history and by every view queued.
  struct UpstreamEvents {
    ::etcdserverpb::WatchResponse response;
    size_t bytes = 0;         // the response's encoded size
    size_t header_bytes = 0;  // its header field, as a view carries it
    // Per event, each field with its tag and length (0 when absent).
    struct EventBytes {
      size_t type = 0;
      size_t kv = 0;
      size_t prev_kv = 0;
    };
    std::vector<EventBytes> event_bytes;
  };
  using SharedEvents = std::shared_ptr<const UpstreamEvents>;
  static SharedEvents Measured(::etcdserverpb::WatchResponse response);
  // One response queued for a client. An event response is kept as the
  // upstream one plus this watcher's view of it, and built only once taken
  // (TakenResponse::Build): a fan-out to N watchers costs N small entries
  // while the upstream reader waits, and each copy is made by the thread
  // sending it.
  struct Queued {
    // The response, unless `events` is set (a pointer: entries move often).
    std::unique_ptr<::etcdserverpb::WatchResponse> built;
    SharedEvents events;
    int64_t watch_id = 0;
    int64_t from = 0;  // events below this revision are not the watcher's
    bool prev_kv = false;
    bool no_put = false;
    bool no_delete = false;
    size_t bytes = 0;  // its encoded size (of the view, once built)
  };
  // The response a Queued entry stands for (the watcher's view when
  // `events` is set).
  static ::etcdserverpb::WatchResponse Built(Queued& q);
  struct Client {
    std::string token;
    bool require_leader = false;
    std::map<int64_t, ClientWatcher> watchers;
    int64_t next_auto_id = 0;
    std::deque<::etcdserverpb::WatchRequest> requests;
    bool busy = false;  // a probe for the front request is in flight
    std::deque<Queued> out;
    size_t out_bytes = 0;  // the entries' `bytes`, summed
    // The highest revision this stream was already given: created headers,
    // events, progress notifications and replies. A progress reply is never
    // below it (clientv3 resumes every watcher from a progress reply).
    int64_t high_water = 0;
    std::set<int64_t> resync_waiting;  // watch ids dropped for slowness
  };
  struct Group {
    GroupKey key;
    bool joinable = true;  // false: a dedicated watcher of one c-watcher
    UpstreamStreamId stream = 0;
    int64_t upstream_watch_id = 0;  // 0 until the create is written
    int64_t next = 0;               // every event below it was received
    int64_t covers_from = 0;        // history holds every event in [covers_from, next)
    std::deque<SharedEvents> history;
    size_t history_bytes = 0;  // encoded size of `history`
    std::set<std::pair<WatchClientId, int64_t>> receivers;
  };
  struct Stream {
    StreamKey key;
    bool open = false;
    int64_t next_watch_id = 1;
    std::deque<int64_t> pending_creates;  // upstream ids awaiting `created`
    std::map<int64_t, GroupId> watchers;  // upstream watch id -> group
    std::set<GroupId> groups;
  };
  enum class ProbeKind { kCreate, kCancel, kProgress };
  struct PendingProbe {
    WatchClientId client = 0;
    ProbeKind kind = ProbeKind::kCreate;
    // kCreate: consecutive create requests that need the same probe, in
    // order; one probe sent after all of them arrived answers them all.
    std::vector<::etcdserverpb::WatchCreateRequest> creates;
    int64_t watch_id = 0;
    ::etcdserverpb::ResponseHeader fallback_header;
    // The key the probe reads, how many times it has been sent again, and
    // the error of the try before this one.
    std::string key;
    std::string range_end;
    int retry = 0;
    std::string last_error;
  };

  void ProcessRequests(WatchClientId client, std::vector<WatchAction>& actions);
  // Responses client `c` may have queued before a watcher of it is resynced.
  size_t QueueLimit(const Client& c) const {
    return options_.client_queue_limit + options_.client_queue_per_watcher * c.watchers.size();
  }
  // Forgets client `client`: its watchers leave their groups.
  void DropClient(WatchClientId client, std::vector<WatchAction>& actions);
  void FinishCreate(WatchClientId client, const ::etcdserverpb::WatchCreateRequest& create,
                    const absl::StatusOr<::etcdserverpb::ResponseHeader>& result,
                    std::vector<WatchAction>& actions);
  // Answers a progress request (probed: the probe's header, or null) with
  // revision max(high_water, min(probed, min over the client's watchers of
  // the revision through which each has been given every event)). The
  // second term is exact; it is raised to the stream's high-water mark when
  // it is lower (a watcher on an idle range whose group has seen nothing
  // since an older revision): a progress reply must never go back, since
  // clientv3 resumes every watcher of the stream from it.
  void FinishProgress(WatchClientId client, const ::etcdserverpb::ResponseHeader* probed,
                      const ::etcdserverpb::ResponseHeader& fallback,
                      std::vector<WatchAction>& actions);
  // Attaches c-watcher (client, watch_id) needing events from `need` on:
  // joins its group when the group has not passed `need`, else replays the
  // group's history (if allowed and long enough), else gets a dedicated
  // watcher. A new group starts at `now_next` (the probed revision + 1); a
  // watcher needing older events never creates one.
  void Attach(WatchClientId client, int64_t watch_id, int64_t need, int64_t now_next,
              bool allow_replay, std::vector<WatchAction>& actions);
  // A dedicated (never joined) group for one c-watcher, from `from`.
  void AttachDedicated(WatchClientId client, int64_t watch_id, int64_t from,
                       std::vector<WatchAction>& actions);
  GroupId NewGroup(GroupKey key, bool joinable, int64_t from, std::vector<WatchAction>& actions);
  // Detaches a c-watcher from its group; cancels the group when empty.
  void Detach(WatchClientId client, ClientWatcher& w, std::vector<WatchAction>& actions);
  void RemoveGroup(GroupId id, bool cancel_upstream, std::vector<WatchAction>& actions);
  void SendCreate(GroupId id, std::vector<WatchAction>& actions);
  // Delivers one upstream event response to one c-watcher.
  void Deliver(WatchClientId client, ClientWatcher& w, const SharedEvents& held,
               std::vector<WatchAction>& actions);
  void Push(WatchClientId client, ::etcdserverpb::WatchResponse resp,
            std::vector<WatchAction>& actions);
  // Queues `q`, which tells its client about revisions up to `revision`.
  void Push(WatchClientId client, Queued q, int64_t revision, std::vector<WatchAction>& actions);
  void HandleUpstreamCancel(GroupId id, const ::etcdserverpb::WatchResponse& resp,
                            std::vector<WatchAction>& actions);
  void HandleEvents(GroupId id, SharedEvents held, std::vector<WatchAction>& actions);
  void HandleProgress(GroupId id, const ::etcdserverpb::WatchResponse& resp,
                      std::vector<WatchAction>& actions);
  // Moves the watcher of dedicated group `id` into its key's shared group
  // once that group's history reaches back to the watcher's next revision;
  // makes `id` the key's shared group when the key has none.
  void MaybeMerge(GroupId id, std::vector<WatchAction>& actions);
  ProbeId NewProbe(const Client& c, std::string key, std::string range_end, PendingProbe p,
                   std::vector<WatchAction>& actions);

  const WatchCoalescerOptions options_;
  std::map<WatchClientId, Client> clients_;
  std::map<GroupId, Group> groups_;
  std::map<GroupKey, GroupId> joinable_;  // live joinable groups by key
  std::map<UpstreamStreamId, Stream> streams_;
  std::map<StreamKey, UpstreamStreamId> stream_by_key_;
  std::map<ProbeId, PendingProbe> probes_;
  GroupId next_group_ = 1;
  UpstreamStreamId next_stream_ = 1;
  ProbeId next_probe_ = 1;
  // The latest probed header, for refusals whose probe failed.
  ::etcdserverpb::ResponseHeader last_header_;
  size_t client_watcher_count_ = 0;
  uint64_t events_coalescing_total_ = 0;
  uint64_t resyncs_total_ = 0;
  uint64_t probe_retries_total_ = 0;
};

class WatchCoalescer::TakenResponse {
 public:
  ::etcdserverpb::WatchResponse Build() && { return Built(queued_); }

 private:
  friend class WatchCoalescer;
  explicit TakenResponse(Queued queued) : queued_(std::move(queued)) {}
  Queued queued_;
};

}  // namespace keel::coalesce
