#include "proxy/grpc/frame_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "api/grpc_framing.h"
#include "api/server/grpc_status.h"
#include "common/cpus.h"
#include "common/logging.h"
#include "common/sigpipe.h"
#include "common/tcp_listen.h"
#include "common/url.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/status.h"
#include "proxy/grpc/local_call.h"
#include "proxy/grpc/mailbox.h"
#include "proxy/grpc/tls.h"

namespace keel::proxy::grpcproxy {

using api::GrpcFramed;
using api::GrpcMessageLength;
using api::kGrpcPrefix;
// Not anonymous: FrameRelay::Loop (external linkage) holds these types.
namespace frame_relay_detail {

using Clock = std::chrono::steady_clock;

// Per-stream and per-connection receive windows. Bytes are held only until
// they leave on the other side, so these bound the relay's memory per stream.
constexpr int32_t kStreamWindow = 1 << 20;
constexpr int32_t kConnectionWindow = 16 << 20;
// A request is kept for a possible second attempt through the chain up to
// this size (every unary etcd request but big puts).
constexpr size_t kReplayLimit = 64 * 1024;
constexpr size_t kReadChunk = 64 * 1024;
// Output is gathered up to this much before one write(2).
constexpr size_t kWriteBatch = 64 * 1024;
// After a connection to etcd could not be made, pass-through methods run
// through the chain for this long before the relay tries again.
constexpr auto kUpstreamRetry = std::chrono::seconds(1);
// Enough of a response's first bytes to hold its ResponseHeader (field 1,
// four varints).
constexpr size_t kHeadCapture = 64;
constexpr int kGrpcUnavailable = 14;
constexpr int kGrpcResourceExhausted = 8;
constexpr int kGrpcInternal = 13;
// A local stream's responses are asked for (LocalCall::ReadNext) while less
// than this is waiting to leave for its client; beyond it the coalescer's
// own per-client queue holds them (and resyncs a client that stays behind).
constexpr size_t kLocalBacklog = 64 * 1024;
// At shutdown, how long the relay waits for its local streams' backends to
// confirm their end.
constexpr auto kLocalDrain = std::chrono::seconds(10);
// Mailbox rounds per loop turn before the sockets are polled again; within
// a round, the batches (and response bytes) taken before writing out. A
// round is about one socket buffer: the client starts reading a large
// fan-out while the rest is taken. As a stream's responses are taken one
// after the other (TakeLocalEvents), a fan-out of several per stream over
// many connections is still about one write per connection.
constexpr int kLocalRounds = 16;
constexpr int kLocalTakes = 1024;
constexpr size_t kLocalTakeBytes = 64 * 1024;
// The connection to etcd, as the remote backend's channels treat theirs
// (remote_endpoints.cc): a connect that has not finished after the dial
// timeout is given up; with streams open and nothing heard for the keepalive
// time a PING goes out, and no answer within the keepalive timeout means the
// member is gone. Either way the streams fail over through the chain.
constexpr auto kConnectTimeout = std::chrono::seconds(5);
constexpr auto kPingAfterSilence = std::chrono::seconds(10);
constexpr auto kPingTimeout = std::chrono::seconds(10);
// How often the loop wakes to check that while an upstream needs watching.
constexpr int kLivenessTickMs = 500;

spdlog::logger& Log() { return *common::Logger("grpc-proxy"); }

// Wakes a loop blocked in epoll_wait (its eventfd).
void Wake(int eventfd) {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(eventfd, &one, sizeof(one));
}

// A header block as nghttp2 received it: its name and value buffers are
// referenced, not copied, and handed back to nghttp2 as they are.
template <size_t kInlineFields>
class Headers {
 public:
  Headers() = default;
  Headers(const Headers&) = delete;
  Headers& operator=(const Headers&) = delete;
  ~Headers() { Clear(); }

  void Add(nghttp2_rcbuf* name, nghttp2_rcbuf* value) {
    nghttp2_rcbuf_incref(name);
    nghttp2_rcbuf_incref(value);
    bufs_.push_back(name);
    bufs_.push_back(value);
    const nghttp2_vec n = nghttp2_rcbuf_get_buf(name);
    const nghttp2_vec v = nghttp2_rcbuf_get_buf(value);
    nv_.push_back({n.base, v.base, n.len, v.len, NGHTTP2_NV_FLAG_NONE});
  }
  void Clear() {
    for (nghttp2_rcbuf* b : bufs_) nghttp2_rcbuf_decref(b);
    bufs_.clear();
    nv_.clear();
  }
  // The value of the first field called `name`, if any.
  std::optional<std::string_view> Find(std::string_view name) const {
    for (const nghttp2_nv& nv : nv_) {
      if (std::string_view(reinterpret_cast<const char*>(nv.name), nv.namelen) == name) {
        return std::string_view(reinterpret_cast<const char*>(nv.value), nv.valuelen);
      }
    }
    return std::nullopt;
  }
  const nghttp2_nv* data() const { return nv_.data(); }
  size_t size() const { return nv_.size(); }

 private:
  // Inline room for the usual fields: no allocation per field on the path
  // every call takes.
  absl::InlinedVector<nghttp2_rcbuf*, 2 * kInlineFields> bufs_;
  absl::InlinedVector<nghttp2_nv, kInlineFields> nv_;
};

nghttp2_nv MakeNv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

// A grpc-timeout header's value for `d` > 0: milliseconds rounded up, or
// seconds or hours when that has more than 8 digits.
std::string GrpcTimeoutValue(absl::Duration d) {
  constexpr int64_t kMax = 99999999;
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
  if (ms <= kMax) return absl::StrCat(ms, "m");
  const int64_t secs = absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1)));
  if (secs <= kMax) return absl::StrCat(secs, "S");
  return absl::StrCat(std::min(kMax, absl::ToInt64Hours(absl::Ceil(d, absl::Hours(1)))), "H");
}

// A grpc-timeout header's value ("<1 to 8 digits><unit>", unit one of
// H M S m u n) as a duration of at most a year (longer is no deadline in
// practice, and 99999999H would overflow); nullopt when it is malformed.
std::optional<Clock::duration> GrpcTimeout(std::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  int64_t amount = 0;
  for (const char ch : value.substr(0, value.size() - 1)) {
    if (ch < '0' || ch > '9') return std::nullopt;
    amount = amount * 10 + (ch - '0');
  }
  std::chrono::nanoseconds unit;
  switch (value.back()) {
    case 'H': unit = std::chrono::hours(1); break;
    case 'M': unit = std::chrono::minutes(1); break;
    case 'S': unit = std::chrono::seconds(1); break;
    case 'm': unit = std::chrono::milliseconds(1); break;
    case 'u': unit = std::chrono::microseconds(1); break;
    case 'n': unit = std::chrono::nanoseconds(1); break;
    default: return std::nullopt;
  }
  constexpr std::chrono::nanoseconds kYear = std::chrono::hours(24 * 365);
  return std::chrono::duration_cast<Clock::duration>(amount > kYear / unit ? kYear
                                                                           : unit * amount);
}

// The gRPC status code in a trailer block; UNKNOWN (2) without a valid one.
template <size_t N>
int GrpcStatusOf(const Headers<N>& headers) {
  int code = 2;
  std::optional<std::string_view> status = headers.Find("grpc-status");
  if (!status.has_value() ||
      !absl::SimpleAtoi(absl::string_view(status->data(), status->size()), &code) || code < 0 ||
      code > 16) {
    return 2;
  }
  return code;
}

// The status a response's trailers (or trailers-only headers) carry.
template <size_t N>
absl::Status StatusOf(const Headers<N>& headers) {
  const int code = GrpcStatusOf(headers);
  if (code == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(code),
                      api::GrpcMessageDecoded(headers.Find("grpc-message").value_or("")));
}

// Follows the gRPC length-prefixed messages of one direction of a stream.
class MessageScanner {
 public:
  // Keeps up to `capture` bytes of the first message (head()).
  explicit MessageScanner(size_t capture) : capture_(capture) {}

  void Feed(const uint8_t* data, size_t len) {
    while (len > 0) {
      if (remaining_ == 0 && !in_body_) {
        const size_t n = std::min(kGrpcPrefix - prefix_got_, len);
        std::memcpy(prefix_ + prefix_got_, data, n);
        prefix_got_ += n;
        data += n;
        len -= n;
        if (prefix_got_ < kGrpcPrefix) return;
        prefix_got_ = 0;
        remaining_ = GrpcMessageLength(prefix_);
        if (messages_ == 0) {
          first_length_ = static_cast<int64_t>(remaining_);
          first_compressed_ = prefix_[0] != 0;
        }
        ++messages_;
        in_body_ = remaining_ > 0;
        continue;
      }
      const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, len));
      if (messages_ == 1 && head_.size() < capture_) {
        head_.append(reinterpret_cast<const char*>(data), std::min(n, capture_ - head_.size()));
      }
      remaining_ -= n;
      data += n;
      len -= n;
      in_body_ = remaining_ > 0;
    }
  }

  // The length of the first message; -1 until its prefix was seen.
  int64_t first_length() const { return first_length_; }
  bool first_compressed() const { return first_compressed_; }
  // Messages whose prefix was seen.
  uint64_t messages() const { return messages_; }
  // The first bytes of the first message (up to the capture size).
  const std::string& head() const { return head_; }
  // The whole first message, if it was no larger than the capture size.
  std::optional<std::string_view> first_message() const {
    if (messages_ == 0 || head_.size() != static_cast<uint64_t>(first_length_)) {
      return std::nullopt;
    }
    return std::string_view(head_);
  }

 private:
  size_t capture_;
  uint8_t prefix_[kGrpcPrefix] = {};
  size_t prefix_got_ = 0;
  uint64_t remaining_ = 0;
  bool in_body_ = false;
  uint64_t messages_ = 0;
  int64_t first_length_ = -1;
  bool first_compressed_ = false;
  std::string head_;
};

// The revision of the ResponseHeader (field 1; revision is its field 3) at
// the start of an etcd response message; 0 when it cannot be read.
int64_t HeaderRevision(const std::string& head) {
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(head.data()),
                                            static_cast<int>(head.size()));
  uint32_t tag = in.ReadTag();
  if (tag != WireFormatLite::MakeTag(1, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) return 0;
  uint32_t length = 0;
  if (!in.ReadVarint32(&length)) return 0;
  in.PushLimit(static_cast<int>(length));
  while ((tag = in.ReadTag()) != 0) {
    if (WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_VARINT) return 0;
    uint64_t value = 0;
    if (!in.ReadVarint64(&value)) return 0;
    if (WireFormatLite::GetTagFieldNumber(tag) == 3) return static_cast<int64_t>(value);
  }
  return 0;
}

enum class ConnKind { kClient, kUpstream, kInternal };

struct Conn;
struct Stream;

// A stream the chain opened to etcd (FrameRelay::OpenToEtcd), shared by its
// handle and its loop.
struct EtcdStreamLink {
  std::shared_ptr<EtcdStreamObserver> observer;
  std::string path;
  std::string token;
  bool require_leader = false;
  // Sent as grpc-timeout and kept by the loop: at it the stream is reset and
  // ends with DEADLINE_EXCEEDED, as on gRPC's client.
  absl::Time deadline = absl::InfiniteFuture();
  // Loop thread only: its relay stream (null before it is opened and after
  // it ended).
  Stream* stream = nullptr;
  // Whether OnEnd was called (it takes the observer).
  bool ended() const { return observer == nullptr; }
};

// What a handle asks of its loop.
struct EtcdCommand {
  enum class Kind { kOpen, kWrite, kWritesDone, kCancel };
  Kind kind = Kind::kOpen;
  std::shared_ptr<EtcdStreamLink> link;
  std::string message;  // kWrite: gRPC-prefixed
};

// A loop's EtcdCommands, shared with the handles (which may outlive the
// loop: it is closed then, and their commands are dropped).
using EtcdCommandQueue = Mailbox<EtcdCommand>;

class EtcdStreamHandle final : public EtcdStream {
 public:
  EtcdStreamHandle(std::shared_ptr<EtcdCommandQueue> queue, std::shared_ptr<EtcdStreamLink> link)
      : queue_(std::move(queue)), link_(std::move(link)) {}
  void Write(const google::protobuf::MessageLite& request) override {
    queue_->Post({EtcdCommand::Kind::kWrite, link_, GrpcFramed(request)});
  }
  void WritesDone() override { queue_->Post({EtcdCommand::Kind::kWritesDone, link_, {}}); }
  void Cancel() override { queue_->Post({EtcdCommand::Kind::kCancel, link_, {}}); }

 private:
  const std::shared_ptr<EtcdCommandQueue> queue_;
  const std::shared_ptr<EtcdStreamLink> link_;
};

// One client stream and the stream it is relayed to; or a stream the chain
// opened to etcd (for_chain), which has no client side.
struct Stream {
  Conn* client = nullptr;  // null once the client side is gone
  int32_t client_id = 0;
  Conn* peer = nullptr;  // upstream or internal; null until routed / after it ended
  int32_t peer_id = -1;
  const RelayRoute* route = nullptr;
  // A gRPC request's usual fields: method, scheme, path, authority, te,
  // content-type, user-agent, encodings, timeout, token.
  Headers<10> request_headers;
  Headers<3> response_headers;  // status, content-type, encoding
  Headers<2> trailers;          // grpc-status, grpc-message
  bool routed = false;
  bool to_upstream = false;
  bool client_open = true;
  bool peer_open = false;
  bool response_submitted = false;
  bool have_trailers = false;
  // Answered by the relay itself (a cache hit, a local stream): the trailers
  // it ends with; code -1 until it has one.
  int local_code = -1;
  std::string local_message;
  // A local stream: its backend stream, until that stream's end was taken
  // from the mailbox.
  std::unique_ptr<LocalCall> local;
  // A local stream's ReadNext is owed once its client takes what is waiting.
  bool local_wants_read = false;
  // Where each local response still waiting in `down` ends (absolute), from
  // local_ends_done on: it counts as sent once its last byte has left. (A
  // vector, not a deque: a deque allocates even when empty, and most streams
  // are not local.)
  std::vector<size_t> local_ends;
  size_t local_ends_done = 0;
  // A linearizable Range the cache does not hold, sent straight to etcd: its
  // OK answer fills the cache under this ticket (FrameRelayOptions::end_fill).
  std::optional<uint64_t> fill;
  // A local stream's deadline (the client's grpc-timeout); max() without one.
  Clock::time_point deadline = Clock::time_point::max();
  // A stream the chain opened (OpenToEtcd): etcd's answers go to its
  // observer; `down` holds the part of a message not complete yet.
  std::shared_ptr<EtcdStreamLink> for_chain;

  // Client -> peer. `up` holds the bytes from absolute offset up_base on.
  std::string up;
  size_t up_base = 0;
  size_t up_sent = 0;      // absolute: handed to the peer session
  size_t up_consumed = 0;  // absolute: window given back to the client
  bool up_eof = false;
  bool replayable = true;  // up still holds every byte from offset 0
  MessageScanner up_scan{0};
  uint64_t received_counted = 0;

  // Peer -> client.
  std::string down;
  size_t down_base = 0;
  size_t down_sent = 0;
  size_t down_consumed = 0;
  bool down_eof = false;
  MessageScanner down_scan{kHeadCapture};
  uint64_t sent_counted = 0;

  size_t up_total() const { return up_base + up.size(); }
  size_t down_total() const { return down_base + down.size(); }
};

struct Conn {
  ConnKind kind = ConnKind::kClient;
  int fd = -1;
  nghttp2_session* session = nullptr;
  std::string out;
  size_t out_off = 0;
  bool connected = true;       // upstream: connect(2) (and the TLS handshake) finished
  bool handshaking = false;    // upstream over TLS: the handshake is not done
  // Upstream: it was up at some point (over TLS: etcd's first bytes came,
  // since under TLS 1.3 a refused client certificate shows only then).
  bool ever_connected = true;
  bool polling_out = false;
  bool dirty = false;
  bool dead = false;
  bool goaway = false;  // upstream or internal: no new streams
  // Upstream liveness: when connect(2) began, when bytes last arrived, and
  // when the PING still unanswered was sent (max() when none is).
  Clock::time_point connect_started;
  Clock::time_point last_recv;
  Clock::time_point ping_sent = Clock::time_point::max();
  std::string endpoint;  // upstream: "host:port"
  absl::flat_hash_set<Stream*> streams;
  Conn* internal = nullptr;  // client: its connection to the chain
  Conn* owner = nullptr;     // internal: its client
  // A TLS client (ServeTls), or etcd over TLS: bytes go through OpenSSL on this fd.
  SSL* ssl = nullptr;
  bool ssl_read_wants_write = false;  // SSL_read needs the socket writable
  bool ssl_write_wants_read = false;  // SSL_write needs bytes from the peer
  bool ssl_read_queued = false;       // in ssl_reads_left
};

}  // namespace frame_relay_detail

using namespace frame_relay_detail;  // NOLINT: this file's own helpers

struct FrameRelay::Loop {
  // The wake fd and the mailboxes exist from here on: the chain may open
  // streams on the loop before it starts (Start() reports a failed fd).
  explicit Loop(FrameRelayOptions o)
      : options(std::move(o)),
        wakefd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
        mailbox(std::make_shared<LocalMailbox>([fd = wakefd] { Wake(fd); })),
        etcd_commands(std::make_shared<EtcdCommandQueue>([fd = wakefd] { Wake(fd); })) {
    if (options.metrics != nullptr) {
      const std::string help = "Streams the frame relay passed, by where they went.";
      to_etcd = options.metrics->GetCounter("keel_grpc_relay_streams_total", help,
                                            {{"route", "etcd"}});
      to_chain = options.metrics->GetCounter("keel_grpc_relay_streams_total", help,
                                             {{"route", "chain"}});
      from_cache = options.metrics->GetCounter("keel_grpc_relay_streams_total", help,
                                               {{"route", "cache"}});
      served_local = options.metrics->GetCounter("keel_grpc_relay_streams_total", help,
                                                 {{"route", "local"}});
      replays = options.metrics->GetCounter(
          "keel_grpc_relay_replays_total",
          "Requests sent again through the chain after the connection to etcd broke.");
      chain_streams = options.metrics->GetGauge(
          "keel_grpc_relay_chain_streams",
          "Streams the backend chain has open to etcd through the frame relay (the "
          "coalescers' upstream watches and keep-alives, the range cache's watch, KV calls "
          "in flight).");
    }
  }

  FrameRelayOptions options;
  common::Counter* to_etcd = nullptr;
  common::Counter* to_chain = nullptr;
  common::Counter* replays = nullptr;
  common::Counter* from_cache = nullptr;
  common::Counter* served_local = nullptr;
  common::Gauge* chain_streams = nullptr;
  int epfd = -1;
  int wakefd = -1;
  std::thread thread;
  std::mutex mu;
  // Client connections handed over, not yet taken by the loop.
  struct Incoming {
    int fd;
    SSL* ssl;           // null for plain text
    std::string first;  // TLS: the bytes already decrypted
  };
  std::vector<Incoming> incoming;  // guarded by mu
  bool stop_requested = false;   // guarded by mu
  Clock::time_point stop_deadline;  // guarded by mu
  // Stop() waits for the clients to be closed (and learns whether the local
  // calls drained); the destructor then asks the loop to end.
  std::condition_variable clients_closed_cv;
  bool clients_closed = false;  // guarded by mu
  bool local_drained = true;    // guarded by mu
  bool close_requested = false;  // guarded by mu
  bool started = false;
  // Stopping: OpenToEtcd opens no more streams on this loop.
  std::atomic<bool> refusing_opens{false};
  // Loop thread only: clients closed (no new connections, no replays, no
  // new streams to etcd); only the chain's streams go on.
  bool shutting_down = false;

  absl::flat_hash_set<Conn*> conns;
  std::vector<Conn*> dirty;
  std::vector<Conn*> dying;
  // Destroyed connections, freed once Settle() is done (the dirty list and
  // this round's events may still name them).
  std::vector<Conn*> graveyard;
  // TLS connections with records OpenSSL read ahead but ReadTls left for later.
  std::vector<Conn*> ssl_reads_left;
  Conn* upstream = nullptr;
  // Until when etcd could not be reached: pass-through calls run through the
  // chain and the chain's new streams go to its gRPC client meanwhile (which
  // fail over). Written by the loop thread, read by OpenToEtcd too.
  std::atomic<Clock::time_point> etcd_down_until{Clock::time_point::min()};
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_option* option = nullptr;
  // Local streams' backend events; shared with their calls, which may post
  // after the loop is gone (it is closed then).
  const std::shared_ptr<LocalMailbox> mailbox;
  // TakeLocalEvents' batch (kept: its capacity is reused), and its first
  // event not yet handled (a round may end within a batch).
  std::vector<LocalEvent> taken_events;
  size_t taken_next = 0;
  // The chain's streams to etcd: their handles' commands (taken once the
  // loop runs; posted before that, they wait), and the batch
  // TakeEtcdCommands works on.
  const std::shared_ptr<EtcdCommandQueue> etcd_commands;
  std::vector<EtcdCommand> taken_commands;
  // Local streams whose backend end has not been taken yet (after the
  // loop's exit: those whose backend never confirmed its end).
  size_t local_calls = 0;
  // A connection to etcd is connecting or has streams: the loop wakes every
  // kLivenessTickMs to check on it (CheckUpstreamLiveness).
  bool watch_upstream = false;
  // Local streams with a deadline, soonest first.
  std::set<std::pair<Clock::time_point, Stream*>> deadlines;

  // Sets up the loop's epoll and starts its thread.
  absl::Status Start();
  // Asks the thread to close its clients (FrameRelay::Stop);
  // WaitClientsClosed() waits for that and tells whether the local calls
  // drained. Join() ends the loop (and the chain's streams), waits for its
  // thread and frees what it held.
  void RequestStop(absl::Duration grace);
  bool WaitClientsClosed();
  void Join();
  void CloseClients();
  void Run();
  void AddClient(Incoming incoming);
  Conn* NewConn(ConnKind kind, int fd, bool server);
  void MarkDirty(Conn* c) {
    if (!c->dirty && !c->dead) {
      c->dirty = true;
      dirty.push_back(c);
    }
  }
  void Kill(Conn* c) {
    if (!c->dead) {
      c->dead = true;
      dying.push_back(c);
    }
  }
  // One epoll event: the wake fd, a connection connecting, writable or
  // readable.
  void OnEvent(const epoll_event& event);
  void OnReadable(Conn* c);
  // TLS connections: OnReadable's reads, which may leave records OpenSSL
  // has read ahead (see ssl_reads_left).
  void ReadTls(Conn* c);
  // Feeds bytes read from `c` to its session; false when that killed it.
  bool Received(Conn* c, const uint8_t* data, size_t size);
  // Drives an upstream connection's TLS handshake (connect(2) included).
  void ContinueHandshake(Conn* c);
  // Writes from `out` to the connection's socket (through OpenSSL over
  // TLS): the count written, or -1 with errno (EAGAIN: try when writable).
  ssize_t WriteOut(Conn* c, const char* data, size_t size);
  void Flush(Conn* c);
  void UpdatePoll(Conn* c, bool want_out);
  void Settle();
  void Destroy(Conn* c);
  Conn* Upstream();
  Conn* InternalFor(Conn* client);
  void Route(Stream* s);
  bool AnswerFromCache(Stream* s);
  void Submit(Stream* s, Conn* peer);
  void Replay(Stream* s);
  void FailToClient(Stream* s, int grpc_code, std::string_view message);
  void MaybeFree(Stream* s);
  void PeerEnded(Stream* s, uint32_t error_code, bool replay_safe);
  void Finished(Stream* s, int grpc_code);
  void StartLocal(Stream* s);
  void FeedLocal(Stream* s);
  // Returns the bytes of the responses taken; nullopt when nothing waited.
  std::optional<size_t> TakeLocalEvents(size_t budget);
  // Returns whether it asked the backend for the next response.
  bool LocalResponse(Stream* s, std::string message);
  void LocalDone(Stream* s, const absl::Status& status);
  void FailLocal(Stream* s, int grpc_code, std::string message);
  void EndWithStatus(Stream* s, int grpc_code, std::string message);
  void WaitForLocalCalls();
  // The chain's streams to etcd (OpenToEtcd). TakeEtcdCommands carries out
  // what their handles asked; false when nothing was asked.
  bool TakeEtcdCommands();
  void OpenForChain(const std::shared_ptr<EtcdStreamLink>& link);
  void ChainStreamData(Stream* s, const uint8_t* data, size_t len);
  // Ends a chain stream's observer (once) and forgets its relay stream.
  void EndForChain(Stream* s, absl::Status status);
  void EndLink(EtcdStreamLink& link, absl::Status status);
  // At the loop's end (or in Join, if it never ran): opens not carried out
  // end with UNAVAILABLE, and later ones are refused (OpenToEtcd).
  void EndEtcdCommands();
  void MarkEtcdDown();
  void ExpireDeadlines();
  bool CheckUpstreamLiveness();

  // nghttp2 callbacks; user_data is the Conn.
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, nghttp2_rcbuf* name,
                      nghttp2_rcbuf* value, uint8_t flags, void* user_data);
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int OnDataChunk(nghttp2_session*, uint8_t flags, int32_t stream_id, const uint8_t* data,
                         size_t len, void* user_data);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data);
  static ssize_t ReadUp(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                        uint32_t* data_flags, nghttp2_data_source* source, void* user_data);
  static ssize_t ReadDown(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void* user_data);

};

namespace {

// The loop of the calling thread's callbacks (set by each loop's thread).
thread_local FrameRelay::Loop* current_loop = nullptr;

// The payload that marks an UNAVAILABLE of a chain stream etcd never saw.
constexpr char kNeverSentPayload[] = "keel.proxy/never-sent-to-etcd";

// UNAVAILABLE for a chain stream that never reached etcd (NeverSentToEtcd).
absl::Status NeverSent(const std::string& message) {
  absl::Status status = absl::UnavailableError(message);
  status.SetPayload(kNeverSentPayload, absl::Cord());
  return status;
}

// Default loops: one per CPU this process may run on, at most kMaxLoops (a
// loop relays a few hundred thousand calls a second, far beyond what etcd
// serves; more would only add connections to etcd).
constexpr int kMaxLoops = 4;
int DefaultLoops() { return std::min(common::UsableCpus(), kMaxLoops); }
}  // namespace

bool NeverSentToEtcd(const absl::Status& status) {
  return absl::IsUnavailable(status) && status.GetPayload(kNeverSentPayload).has_value();
}

FrameRelay::FrameRelay(FrameRelayOptions options) {
  const int n = options.loops > 0 ? options.loops : DefaultLoops();
  for (int i = 0; i < n; ++i) loops_.push_back(std::make_unique<Loop>(options));
}

FrameRelay::~FrameRelay() {
  Stop(absl::ZeroDuration());
  for (const std::unique_ptr<Loop>& loop : loops_) loop->Join();
}

void FrameRelay::SetChain(api::Backend* chain) {
  for (const std::unique_ptr<Loop>& loop : loops_) loop->options.chain = chain;
}

absl::Status FrameRelay::Start() {
  for (const std::unique_ptr<Loop>& loop : loops_) {
    if (absl::Status s = loop->Start(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status FrameRelay::Loop::Start() {
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0 || wakefd < 0) {
    return absl::UnavailableError(
        absl::StrCat("grpc-proxy: frame relay: ", common::ErrnoText(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake fd
  epoll_ctl(epfd, EPOLL_CTL_ADD, wakefd, &ev);

  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &Loop::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback2(callbacks, &Loop::OnHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &Loop::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &Loop::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &Loop::OnStreamClose);
  nghttp2_option_new(&option);
  // Windows open only as bytes leave on the other side (end-to-end flow control).
  nghttp2_option_set_no_auto_window_update(option, 1);
  // A server session would otherwise keep every closed stream (for RFC 7540
  // priorities, which gRPC does not use) as long as its connection lives: no
  // bound without SETTINGS_MAX_CONCURRENT_STREAMS, ~300 bytes per call.
  nghttp2_option_set_no_closed_streams(option, 1);
  started = true;
  thread = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void FrameRelay::Serve(int fd) { ServeTls(fd, nullptr, {}); }

void FrameRelay::ServeTls(int fd, SSL* ssl, std::string first_bytes) {
  // Round robin: a connection stays on its loop for life.
  Loop& l = *loops_[next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size()];
  {
    std::lock_guard<std::mutex> lock(l.mu);
    if (!l.started || l.stop_requested) {
      if (ssl != nullptr) SSL_free(ssl);
      close(fd);
      return;
    }
    l.incoming.push_back({fd, ssl, std::move(first_bytes)});
  }
  Wake(l.wakefd);
}

bool FrameRelay::Stop(absl::Duration grace) {
  // Every loop drains at once; then each is waited for.
  for (const std::unique_ptr<Loop>& loop : loops_) loop->RequestStop(grace);
  bool drained = true;
  for (const std::unique_ptr<Loop>& loop : loops_) {
    drained = loop->WaitClientsClosed() && drained;
  }
  return drained;
}

void FrameRelay::Loop::RequestStop(absl::Duration grace) {
  refusing_opens.store(true, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!stop_requested) {
      stop_requested = true;
      stop_deadline = Clock::now() + std::chrono::milliseconds(absl::ToInt64Milliseconds(
                                         std::min(grace, absl::Hours(1))));
    }
  }
  if (thread.joinable()) Wake(wakefd);
}

bool FrameRelay::Loop::WaitClientsClosed() {
  if (!thread.joinable()) {
    // Never ran (so it had no clients): the chain's streams opened on it
    // end now (their owners may wait for that before the relay is destroyed).
    EndEtcdCommands();
    return true;
  }
  std::unique_lock<std::mutex> lock(mu);
  clients_closed_cv.wait(lock, [this] { return clients_closed; });
  return local_drained;
}

void FrameRelay::Loop::Join() {
  if (thread.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      close_requested = true;
    }
    Wake(wakefd);
    thread.join();
  }
  // (Run or WaitClientsClosed has ended the chain's streams.) No wake-up may
  // reach the event fd once it is closed: a late post would write to a
  // number the process may have reused.
  mailbox->Close();
  etcd_commands->Close();
  for (Incoming& in : incoming) {
    if (in.ssl != nullptr) SSL_free(in.ssl);
    close(in.fd);
  }
  incoming.clear();
  if (callbacks != nullptr) nghttp2_session_callbacks_del(callbacks);
  callbacks = nullptr;
  if (option != nullptr) nghttp2_option_del(option);
  option = nullptr;
  if (epfd >= 0) close(epfd);
  if (wakefd >= 0) close(wakefd);
  epfd = wakefd = -1;
}

void FrameRelay::Loop::Run() {
  common::BlockSigpipeInThisThread();  // OpenSSL writes with write(2)
  current_loop = this;
  mailbox->SetReaderThread();
  etcd_commands->SetReaderThread();
  std::vector<epoll_event> events(256);
  bool goaway_sent = false;
  while (true) {
    int timeout_ms = -1;
    bool stopping = false;
    bool closing = false;
    Clock::time_point deadline;
    std::vector<Incoming> arrived;
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = stop_requested;
      closing = close_requested;
      deadline = stop_deadline;
      arrived.swap(incoming);
    }
    // Outside the lock: a TLS client's first bytes may hold requests, which
    // are routed at once, and sent before waiting (no socket may wake the
    // loop for them).
    for (Incoming& in : arrived) AddClient(std::move(in));
    if (!arrived.empty()) Settle();
    if (stopping && !shutting_down) {
      if (!goaway_sent) {
        goaway_sent = true;
        for (Conn* c : conns) {
          if (c->kind != ConnKind::kClient) continue;
          nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE,
                                nghttp2_session_get_last_proc_stream_id(c->session),
                                NGHTTP2_NO_ERROR, nullptr, 0);
          MarkDirty(c);
        }
        Settle();
      }
      size_t open_streams = 0;
      for (Conn* c : conns) {
        if (c->kind == ConnKind::kClient) open_streams += c->streams.size();
      }
      if (open_streams == 0 || Clock::now() >= deadline) {
        CloseClients();
      } else {
        timeout_ms = 20;
      }
    }
    // The chain's streams to etcd go on until the relay is destroyed (the
    // chain, ended before it, closes them itself).
    if (closing && shutting_down) break;
    if (watch_upstream) {
      timeout_ms = timeout_ms < 0 ? kLivenessTickMs : std::min(timeout_ms, kLivenessTickMs);
    }
    if (!deadlines.empty()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(deadlines.begin()->first -
                                                                     Clock::now());
      const int until_deadline = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 60000));
      timeout_ms = timeout_ms < 0 ? until_deadline : std::min(timeout_ms, until_deadline);
    }
    if (!ssl_reads_left.empty()) timeout_ms = 0;
    const int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0 && errno != EINTR) {
      KEEL_LOG_EVENT(Log(), spdlog::level::warn, "frame relay: epoll_wait failed",
                     {{"error", common::ErrnoText(errno)}});
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    for (int i = 0; i < n; ++i) OnEvent(events[i]);
    std::vector<Conn*> read_again;
    read_again.swap(ssl_reads_left);
    for (Conn* c : read_again) {
      c->ssl_read_queued = false;
      if (!c->dead) ReadTls(c);
    }
    ExpireDeadlines();
    watch_upstream = CheckUpstreamLiveness();
    // Take the local streams' responses until none is left (each stream
    // stops asking at its backlog bound) or a round's worth is taken, then
    // write out. Writing out may ask for more again: a few rounds, then back
    // to the sockets (a busy backend must not keep the loop from reading),
    // with a wake-up for what is left.
    for (int round = 0;; ++round) {
      size_t taken = 0;
      for (int take = 0; take < kLocalTakes && taken < kLocalTakeBytes; ++take) {
        const std::optional<size_t> bytes = TakeLocalEvents(kLocalTakeBytes - taken);
        if (!bytes.has_value()) break;
        taken += *bytes;
      }
      // The chain's writes to etcd (a coalescer's keep-alives, often made
      // by the events just taken) leave in the same writes.
      TakeEtcdCommands();
      Settle();
      // (The loop's own posts woke nobody: nothing may be left.)
      if (taken_next == taken_events.size() && mailbox->Empty() && etcd_commands->Empty()) break;
      if (round == kLocalRounds) {
        Wake(wakefd);
        break;
      }
    }
  }
  // What is left: the connections to etcd, and the chain's streams on them.
  TakeEtcdCommands();
  std::vector<Conn*> all(conns.begin(), conns.end());
  for (Conn* c : all) Kill(c);
  Settle();
  EndEtcdCommands();
  current_loop = nullptr;
}

// Closes every client connection: the chain's gRPC server sees its
// connections end and cancels their calls; etcd sees the relayed streams
// end. Then waits for the local calls' ends, and tells Stop() the clients
// are done.
void FrameRelay::Loop::CloseClients() {
  shutting_down = true;
  std::vector<Conn*> clients;
  for (Conn* c : conns) {
    if (c->kind != ConnKind::kUpstream) clients.push_back(c);
  }
  for (Conn* c : clients) Kill(c);
  Settle();
  WaitForLocalCalls();
  {
    std::lock_guard<std::mutex> lock(mu);
    clients_closed = true;
    local_drained = local_calls == 0;
  }
  clients_closed_cv.notify_all();
}

void FrameRelay::Loop::Settle() {
  while (!dirty.empty() || !dying.empty()) {
    while (!dying.empty()) {
      Conn* c = dying.back();
      dying.pop_back();
      Destroy(c);
    }
    std::vector<Conn*> batch;
    batch.swap(dirty);
    for (Conn* c : batch) {
      c->dirty = false;
      if (!c->dead) Flush(c);
    }
  }
  for (Conn* c : graveyard) delete c;
  graveyard.clear();
}

Conn* FrameRelay::Loop::NewConn(ConnKind kind, int fd, bool server) {
  auto* c = new Conn();
  c->kind = kind;
  c->fd = fd;
  if (server) {
    nghttp2_session_server_new2(&c->session, callbacks, c, option);
  } else {
    nghttp2_session_client_new2(&c->session, callbacks, c, option);
  }
  std::vector<nghttp2_settings_entry> settings = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)}};
  if (server) {
    if (options.max_concurrent_streams != UINT32_MAX) {
      settings.push_back({NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams});
    }
  } else {
    settings.push_back({NGHTTP2_SETTINGS_ENABLE_PUSH, 0});
  }
  nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = c;
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  conns.insert(c);
  MarkDirty(c);
  return c;
}

void FrameRelay::Loop::AddClient(Incoming in) {
  const int one = 1;
  setsockopt(in.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  Conn* c = NewConn(ConnKind::kClient, in.fd, /*server=*/true);
  c->ssl = in.ssl;
  if (!in.first.empty()) {
    const ssize_t rv = nghttp2_session_mem_recv(
        c->session, reinterpret_cast<const uint8_t*>(in.first.data()), in.first.size());
    if (rv < 0) {
      Kill(c);
      return;
    }
  }
  // OpenSSL may hold records it read ahead: no epoll event would tell.
  if (c->ssl != nullptr) ReadTls(c);
}

void FrameRelay::Loop::UpdatePoll(Conn* c, bool want_out) {
  // An SSL_read waiting for the socket to take its write keeps EPOLLOUT on,
  // whatever the writes want: the records it read ahead depend on it.
  want_out = want_out || c->ssl_read_wants_write;
  if (want_out == c->polling_out) return;
  c->polling_out = want_out;
  epoll_event ev{};
  ev.events = want_out ? (EPOLLIN | EPOLLOUT) : uint32_t{EPOLLIN};
  ev.data.ptr = c;
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

void FrameRelay::Loop::OnEvent(const epoll_event& event) {
  Conn* c = static_cast<Conn*>(event.data.ptr);
  if (c == nullptr) {
    uint64_t value;
    [[maybe_unused]] ssize_t r = read(wakefd, &value, sizeof(value));
    return;
  }
  if (c->dead) return;
  if (c->handshaking) {
    ContinueHandshake(c);
    return;
  }
  if ((event.events & EPOLLOUT) != 0 && c->ssl_read_wants_write) {
    c->ssl_read_wants_write = false;
    ReadTls(c);
    if (c->dead) return;
  }
  if ((event.events & EPOLLOUT) != 0) {
    if (!c->connected) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        Kill(c);
        return;
      }
      c->connected = true;
      c->ever_connected = true;
      c->last_recv = Clock::now();
    }
    MarkDirty(c);
  }
  if ((event.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) OnReadable(c);
}

void FrameRelay::Loop::OnReadable(Conn* c) {
  if (c->ssl != nullptr) {
    ReadTls(c);
    return;
  }
  uint8_t buf[kReadChunk];
  for (int round = 0; round < 16 && !c->dead; ++round) {
    const ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) Kill(c);
      break;
    }
    if (n == 0) {
      Kill(c);
      break;
    }
    if (!Received(c, buf, static_cast<size_t>(n))) break;
    if (static_cast<size_t>(n) < sizeof(buf)) break;
  }
}

void FrameRelay::Loop::ContinueHandshake(Conn* c) {
  ERR_clear_error();
  const int r = SSL_do_handshake(c->ssl);
  if (r != 1) {
    const int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      UpdatePoll(c, err == SSL_ERROR_WANT_WRITE);
      ERR_clear_error();
      return;
    }
    const int sys_errno = errno;
    KEEL_LOG_EVENT(Log(), spdlog::level::warn, "frame relay: TLS handshake with etcd failed",
                   {{"endpoint", c->endpoint},
                    {"error", TakeOpenSslError(err == SSL_ERROR_SYSCALL && sys_errno != 0
                                                   ? common::ErrnoText(sys_errno)
                                                   : std::string("connection closed"))}});
    Kill(c);  // never up: its streams go again through the chain
    return;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    // As gRPC's client: no HTTP/2 without ALPN's h2.
    KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                   "frame relay: etcd did not choose HTTP/2 (ALPN h2) in the TLS handshake",
                   {{"endpoint", c->endpoint}});
    Kill(c);
    return;
  }
  c->handshaking = false;
  c->connected = true;  // (ever_connected once etcd's first bytes come)
  c->last_recv = Clock::now();
  MarkDirty(c);  // the preface and the streams queued meanwhile
  ReadTls(c);    // etcd's SETTINGS may have come with the handshake
}

void FrameRelay::Loop::ReadTls(Conn* c) {
  if (c->ssl_write_wants_read) {
    c->ssl_write_wants_read = false;
    MarkDirty(c);  // its write goes on
  }
  uint8_t buf[kReadChunk];
  for (int round = 0; !c->dead; ++round) {
    if (round == 16) {
      // Fair to the other connections: the rest after the next epoll_wait
      // (which does not wait while some is left).
      if (SSL_has_pending(c->ssl) == 1 && !c->ssl_read_queued) {
        c->ssl_read_queued = true;
        ssl_reads_left.push_back(c);
      }
      break;
    }
    ERR_clear_error();
    const int n = SSL_read(c->ssl, buf, static_cast<int>(sizeof(buf)));
    if (n <= 0) {
      const int err = SSL_get_error(c->ssl, n);
      if (err == SSL_ERROR_WANT_WRITE) {
        c->ssl_read_wants_write = true;
        UpdatePoll(c, true);
      } else if (err != SSL_ERROR_WANT_READ) {
        if (c->kind == ConnKind::kUpstream && !c->ever_connected) {
          // Under TLS 1.3 etcd refuses our certificate after our handshake.
          KEEL_LOG_EVENT(
              Log(), spdlog::level::warn, "frame relay: etcd refused the TLS connection",
              {{"endpoint", c->endpoint}, {"error", TakeOpenSslError("connection closed")}});
        }
        Kill(c);  // closed (close_notify or EOF) or broken
      }
      ERR_clear_error();
      break;
    }
    if (!Received(c, buf, static_cast<size_t>(n))) break;
  }
}

bool FrameRelay::Loop::Received(Conn* c, const uint8_t* data, size_t size) {
  if (c->kind == ConnKind::kUpstream) {
    c->last_recv = Clock::now();
    c->ever_connected = true;  // (plain: since connect; TLS: from etcd's first bytes)
  }
  if (nghttp2_session_mem_recv(c->session, data, size) < 0) {
    Kill(c);
    return false;
  }
  MarkDirty(c);
  return true;
}

ssize_t FrameRelay::Loop::WriteOut(Conn* c, const char* data, size_t size) {
  if (c->ssl == nullptr) return send(c->fd, data, size, MSG_NOSIGNAL);
  // Partial writes, from a buffer that may have moved and grown since a
  // retry (SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
  ERR_clear_error();
  const int n = SSL_write(c->ssl, data, static_cast<int>(std::min<size_t>(size, INT32_MAX)));
  if (n > 0) return n;
  const int err = SSL_get_error(c->ssl, n);
  ERR_clear_error();
  c->ssl_write_wants_read = err == SSL_ERROR_WANT_READ;
  errno = err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ ? EAGAIN : EPIPE;
  return -1;
}

void FrameRelay::Loop::Flush(Conn* c) {
  if (!c->connected) {
    // A TLS handshake polls for what it needs itself.
    if (!c->handshaking) UpdatePoll(c, true);
    return;
  }
  while (true) {
    while (c->out.size() - c->out_off < kWriteBatch) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(c->session, &data);
      if (n < 0) {
        Kill(c);
        return;
      }
      if (n == 0) break;
      c->out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    if (c->out.size() == c->out_off) break;
    const ssize_t w = WriteOut(c, c->out.data() + c->out_off, c->out.size() - c->out_off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        // (An SSL_write waiting to read goes on when bytes arrive: ReadTls.)
        UpdatePoll(c, !c->ssl_write_wants_read);
        return;
      }
      Kill(c);
      return;
    }
    c->out_off += static_cast<size_t>(w);
    if (c->out_off == c->out.size()) {
      c->out.clear();
      c->out_off = 0;
    } else {
      if (c->out_off >= kWriteBatch) {  // keep the unsent tail only
        c->out.erase(0, c->out_off);
        c->out_off = 0;
      }
      // SSL_write stops after each record (partial writes): only its
      // EAGAIN says the socket is full.
      if (c->ssl != nullptr) continue;
      UpdatePoll(c, true);
      return;
    }
  }
  UpdatePoll(c, false);
  if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)) {
    Kill(c);  // both sides said goodbye (GOAWAY and no streams left)
  }
}

void FrameRelay::Loop::Destroy(Conn* c) {
  conns.erase(c);
  if (upstream == c) upstream = nullptr;
  std::vector<Stream*> streams(c->streams.begin(), c->streams.end());
  c->streams.clear();
  if (c->kind == ConnKind::kClient) {
    for (Stream* s : streams) {
      s->client = nullptr;
      s->client_open = false;
      if (s->local != nullptr) s->local->Cancel();
      if (s->peer_open && s->peer != nullptr && !s->peer->dead) {
        nghttp2_submit_rst_stream(s->peer->session, NGHTTP2_FLAG_NONE, s->peer_id,
                                  NGHTTP2_CANCEL);
        MarkDirty(s->peer);
      }
      MaybeFree(s);
    }
    // Its connections to the chain end (the gRPC server cancels their calls),
    // including any it had before the current one.
    for (Conn* other : conns) {
      if (other->kind == ConnKind::kInternal && other->owner == c) {
        other->owner = nullptr;
        Kill(other);
      }
    }
    c->internal = nullptr;
  } else {
    if (c->kind == ConnKind::kInternal && c->owner != nullptr && c->owner->internal == c) {
      c->owner->internal = nullptr;
    }
    if (c->kind == ConnKind::kUpstream && !c->ever_connected) {
      MarkEtcdDown();
      KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                     "frame relay: cannot reach etcd, relaying through the chain for now", {});
    }
    for (Stream* s : streams) {
      // Never connected: nothing reached etcd, so any request may go again.
      PeerEnded(s, NGHTTP2_INTERNAL_ERROR, /*replay_safe=*/!c->ever_connected);
    }
  }
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, nullptr);
  if (c->ssl != nullptr) SSL_free(c->ssl);
  c->ssl = nullptr;
  if (c->ssl_read_queued) std::erase(ssl_reads_left, c);
  close(c->fd);
  nghttp2_session_del(c->session);
  c->session = nullptr;
  graveyard.push_back(c);
}

Conn* FrameRelay::Loop::Upstream() {
  const std::string endpoint = options.upstream_endpoint ? options.upstream_endpoint() : "";
  if (upstream != nullptr && !upstream->dead && !upstream->goaway &&
      nghttp2_session_check_request_allowed(upstream->session) != 0) {
    if (upstream->endpoint == endpoint) return upstream;
    // The remote backend moved on (failover): so does the relay; the old
    // connection finishes its streams.
    upstream->goaway = true;
  }
  upstream = nullptr;
  if (shutting_down) return nullptr;
  if (Clock::now() < etcd_down_until.load(std::memory_order_relaxed)) return nullptr;
  absl::StatusOr<common::HostPort> host_port = common::ParseHostPort(endpoint);
  if (!host_port.ok()) return nullptr;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  if (getaddrinfo(host_port->host.c_str(), std::to_string(host_port->port).c_str(), &hints,
                  &result) != 0 ||
      result == nullptr) {
    MarkEtcdDown();
    return nullptr;
  }
  const int fd = socket(result->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -1 : connect(fd, result->ai_addr, result->ai_addrlen);
  const bool in_progress = rc < 0 && errno == EINPROGRESS;
  freeaddrinfo(result);
  if (fd < 0 || (rc < 0 && !in_progress)) {
    if (fd >= 0) close(fd);
    MarkEtcdDown();
    return nullptr;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(nullptr, SSL_free);
  if (options.upstream_tls != nullptr) {
    ssl.reset(SSL_new(options.upstream_tls.get()));
    const char* failed = nullptr;
    if (ssl == nullptr || SSL_set_fd(ssl.get(), fd) != 1) {
      failed = "SSL_new failed";
    } else if (!ConfigureUpstreamSsl(ssl.get(), host_port->host)) {
      failed = "OpenSSL refused the endpoint's host name";
    }
    if (failed != nullptr) {
      KEEL_LOG_EVENT(Log(), spdlog::level::warn, "frame relay: cannot set up TLS to etcd",
                     {{"endpoint", endpoint}, {"error", std::string(failed)}});
      close(fd);
      MarkEtcdDown();
      return nullptr;
    }
    SSL_set_connect_state(ssl.get());
  }
  Conn* c = NewConn(ConnKind::kUpstream, fd, /*server=*/false);
  c->connected = !in_progress && ssl == nullptr;
  c->ever_connected = c->connected;
  c->connect_started = c->last_recv = Clock::now();
  watch_upstream = true;
  c->endpoint = endpoint;
  if (ssl != nullptr) {
    // The handshake starts once the socket is writable (connected).
    c->ssl = ssl.release();
    c->handshaking = true;
    UpdatePoll(c, true);
  }
  upstream = c;
  return c;
}

Conn* FrameRelay::Loop::InternalFor(Conn* client) {
  Conn* current = client->internal;
  if (current != nullptr && !current->dead && !current->goaway &&
      nghttp2_session_check_request_allowed(current->session) != 0) {
    return current;
  }
  if (shutting_down) return nullptr;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
    return nullptr;
  }
  options.serve_internal(pair[1]);
  Conn* c = NewConn(ConnKind::kInternal, pair[0], /*server=*/false);
  c->owner = client;
  client->internal = c;
  return c;
}

void FrameRelay::Loop::Route(Stream* s) {
  std::optional<std::string_view> path = s->request_headers.Find(":path");
  s->route = path.has_value() ? options.routes->Find(*path) : nullptr;
  if (s->route != nullptr && s->route->cache_read && options.cached_range &&
      !s->request_headers.Find("token").has_value() &&
      !s->request_headers.Find("hasleader").has_value()) {
    // The whole (small) request first.
    if (!s->up_eof && s->up_total() <= kReplayLimit) return;
    if (s->up_eof && AnswerFromCache(s)) return;
  }
  // A compressed call is left to the chain's gRPC server.
  if (s->route != nullptr && s->route->local && !s->fill.has_value() && options.chain != nullptr &&
      s->request_headers.Find("grpc-encoding").value_or("identity") == "identity") {
    StartLocal(s);
    return;
  }
  bool to_upstream = s->route != nullptr && (s->route->pass_through || s->fill.has_value());
  if (to_upstream) {
    // A compressed request may get a compressed answer, whose header the
    // OkHook could not read: leave those to the chain.
    std::optional<std::string_view> encoding = s->request_headers.Find("grpc-encoding");
    if (encoding.has_value() && *encoding != "identity") to_upstream = false;
  }
  if (to_upstream) {
    // Wait for the first message's size: an oversize one goes through the
    // chain, which answers with etcd's own error.
    if (s->up_scan.first_length() < 0 && !s->up_eof) return;
    if (s->up_scan.first_length() > static_cast<int64_t>(options.max_send_bytes)) {
      to_upstream = false;
    }
  }
  Conn* peer = to_upstream ? Upstream() : nullptr;
  if (peer == nullptr) {
    to_upstream = false;
    peer = InternalFor(s->client);
  }
  s->routed = true;
  s->to_upstream = to_upstream;
  if (peer == nullptr) {
    FailToClient(s, kGrpcUnavailable, "keel: cannot reach the proxy's backend chain");
    return;
  }
  if (to_upstream) {
    if (to_etcd != nullptr) to_etcd->Increment();
    s->route->metrics->Started();
    for (; s->received_counted < s->up_scan.messages(); ++s->received_counted) {
      s->route->metrics->Received();
    }
  } else if (to_chain != nullptr) {
    to_chain->Increment();
  }
  Submit(s, peer);
}

// Answers a unary cache_read call from the cache when it can.
bool FrameRelay::Loop::AnswerFromCache(Stream* s) {
  const int64_t length = s->up_scan.first_length();
  if (s->up_scan.messages() != 1 || s->up_scan.first_compressed() || s->up_base != 0 ||
      s->up.size() != kGrpcPrefix + static_cast<uint64_t>(length)) {
    return false;
  }
  CachedRange cached = options.cached_range(
      std::string_view(s->up.data() + kGrpcPrefix, static_cast<size_t>(length)));
  if (cached.fill.has_value()) {
    // Straight to etcd; its whole answer is kept for the cache.
    s->fill = cached.fill;
    s->down_scan = MessageScanner(kMaxFillResponseBytes);
  }
  if (!cached.answer.has_value()) return false;
  s->routed = true;
  s->local_code = 0;
  s->response_submitted = true;
  s->down_eof = true;
  s->down = std::move(*cached.answer);
  // The request will not leave: its window goes back now.
  nghttp2_session_consume(s->client->session, s->client_id, s->up_total() - s->up_consumed);
  s->up_consumed = s->up_total();
  api::server::MethodMetrics& metrics = *s->route->metrics;
  metrics.Started();
  metrics.Received();
  metrics.Sent();
  metrics.Handled(grpc::StatusCode::OK);
  if (from_cache != nullptr) from_cache->Increment();
  const nghttp2_nv nv[] = {MakeNv(":status", "200"), MakeNv("content-type", "application/grpc")};
  nghttp2_data_provider provider{};
  provider.source.ptr = s;
  provider.read_callback = &Loop::ReadDown;
  nghttp2_submit_response(s->client->session, s->client_id, nv, 2, &provider);
  MarkDirty(s->client);
  return true;
}

void FrameRelay::Loop::Submit(Stream* s, Conn* peer) {
  nghttp2_data_provider provider{};
  provider.source.ptr = s;
  provider.read_callback = &Loop::ReadUp;
  s->up_sent = s->up_base;
  const int32_t id = nghttp2_submit_request(peer->session, nullptr, s->request_headers.data(),
                                            s->request_headers.size(), &provider, s);
  if (id < 0) {
    FailToClient(s, kGrpcUnavailable, "keel: cannot open a stream to the backend");
    return;
  }
  s->peer = peer;
  s->peer_id = id;
  s->peer_open = true;
  peer->streams.insert(s);
  if (peer->kind == ConnKind::kUpstream) watch_upstream = true;
  MarkDirty(peer);
}

void FrameRelay::Loop::Replay(Stream* s) {
  if (replays != nullptr) replays->Increment();
  s->to_upstream = false;
  // Whatever the broken attempt had begun to answer is dropped.
  s->response_headers.Clear();
  s->trailers.Clear();
  s->have_trailers = false;
  s->down.clear();
  s->down_base = s->down_sent = s->down_consumed = 0;
  s->down_eof = false;
  s->down_scan = MessageScanner(kHeadCapture);
  Conn* internal = s->client != nullptr ? InternalFor(s->client) : nullptr;
  if (internal == nullptr) {
    FailToClient(s, kGrpcUnavailable, "keel: cannot reach the proxy's backend chain");
    return;
  }
  Submit(s, internal);
}

void FrameRelay::Loop::FailToClient(Stream* s, int grpc_code, std::string_view message) {
  if (!s->client_open || s->client == nullptr) return;
  if (s->response_submitted) {
    nghttp2_submit_rst_stream(s->client->session, NGHTTP2_FLAG_NONE, s->client_id,
                              NGHTTP2_INTERNAL_ERROR);
  } else {
    s->response_submitted = true;
    const std::string code = std::to_string(grpc_code);
    const nghttp2_nv nv[] = {MakeNv(":status", "200"), MakeNv("content-type", "application/grpc"),
                             MakeNv("grpc-status", code), MakeNv("grpc-message", message)};
    if (s->to_upstream) Finished(s, grpc_code);
    nghttp2_submit_response(s->client->session, s->client_id, nv, 4, nullptr);
  }
  MarkDirty(s->client);
}

// The peer's stream ended without an answer to relay (reset, or its
// connection died); `replay_safe` says etcd cannot have acted on it.
void FrameRelay::Loop::PeerEnded(Stream* s, uint32_t error_code, bool replay_safe) {
  s->peer_open = false;
  s->peer = nullptr;
  if (s->for_chain != nullptr) {
    EndForChain(s, replay_safe ? NeverSent("keel: cannot reach etcd")
                               : absl::UnavailableError("keel: the connection to etcd was lost"));
    return;
  }
  if (s->client_open && !s->response_submitted && s->replayable &&
      (replay_safe || (s->to_upstream && s->route->read_only))) {
    Replay(s);
    return;
  }
  if (s->client_open && s->client != nullptr) {
    if (s->response_submitted) {
      // Part of the answer is out: the client sees the same reset.
      nghttp2_submit_rst_stream(s->client->session, NGHTTP2_FLAG_NONE, s->client_id,
                                error_code);
      MarkDirty(s->client);
    } else {
      FailToClient(s, kGrpcUnavailable,
                   s->to_upstream ? "keel: the connection to etcd was lost"
                                  : "keel: the connection to the proxy's backend chain was lost");
    }
  }
  MaybeFree(s);
}

void FrameRelay::Loop::Finished(Stream* s, int code) {
  if (!s->to_upstream || s->route == nullptr) return;
  if (s->fill.has_value() && code == 0) {
    options.end_fill(*std::exchange(s->fill, std::nullopt), s->down_scan.first_message());
  }
  if (code == 0 && s->route->on_ok != OkHook::kNone && options.on_ok) {
    options.on_ok(s->route->on_ok, HeaderRevision(s->down_scan.head()));
  }
  s->route->metrics->Handled(static_cast<grpc::StatusCode>(code));
}

void FrameRelay::Loop::MaybeFree(Stream* s) {
  if (s->client_open || s->peer_open || s->local != nullptr) return;
  if (s->deadline != Clock::time_point::max()) deadlines.erase({s->deadline, s});
  // Failed, replayed or cut off: nothing to fill the cache with.
  if (s->fill.has_value()) options.end_fill(*s->fill, std::nullopt);
  delete s;
}

// ----- local calls (Watch, LeaseKeepAlive, unary calls a layer must see) -----

void FrameRelay::Loop::StartLocal(Stream* s) {
  s->routed = true;
  api::CallContext ctx;
  if (std::optional<std::string_view> token = s->request_headers.Find("token")) {
    ctx.token = std::string(*token);
  }
  ctx.require_leader = s->request_headers.Find("hasleader").value_or("") == "true";
  if (std::optional<std::string_view> timeout = s->request_headers.Find("grpc-timeout")) {
    // A malformed one is ignored, as gRPC's server does.
    if (std::optional<Clock::duration> d = GrpcTimeout(*timeout)) {
      s->deadline = Clock::now() + *d;
      ctx.deadline = absl::Now() + absl::FromChrono(*d);
      deadlines.emplace(s->deadline, s);
    }
  }
  s->route->metrics->Started();
  if (served_local != nullptr) served_local->Increment();
  ++local_calls;
  s->local = s->route->local(*options.chain, ctx, mailbox);
  s->local->tag = s;
  FeedLocal(s);
  if (s->up_eof && s->local != nullptr) s->local->WritesDone();
}

// Writes every complete request message the client sent to the backend
// stream. The window goes back on receipt: a message's size is checked from
// its prefix, so what is held stays bounded by the request limit.
void FrameRelay::Loop::FeedLocal(Stream* s) {
  if (s->client_open && s->client != nullptr && s->up.size() > s->up_consumed) {
    nghttp2_session_consume(s->client->session, s->client_id, s->up.size() - s->up_consumed);
    MarkDirty(s->client);
  }
  size_t offset = 0;
  while (s->local != nullptr && s->local_code < 0 && s->up.size() - offset >= kGrpcPrefix) {
    const auto* p = reinterpret_cast<const uint8_t*>(s->up.data() + offset);
    const uint64_t length = GrpcMessageLength(p);
    if (length > options.max_request_bytes) {
      // gRPC's own words for its receive limit.
      FailLocal(s, kGrpcResourceExhausted,
                absl::StrCat("grpc: received message larger than max (", length, " vs. ",
                             options.max_request_bytes, ")"));
      break;
    }
    if (s->up.size() - offset - kGrpcPrefix < length) break;
    const std::string_view message(s->up.data() + offset + kGrpcPrefix, length);
    if (p[0] != 0 || !s->local->Write(message)) {
      FailLocal(s, kGrpcInternal,
                p[0] != 0 ? "keel: a compressed message without grpc-encoding"
                          : "keel: the request message could not be decoded");
      break;
    }
    s->route->metrics->Received();
    offset += kGrpcPrefix + length;
  }
  if (s->local == nullptr || s->local_code >= 0) offset = s->up.size();
  s->up.erase(0, offset);
  s->up_consumed = s->up.size();
}

// Takes local events in order (what is left of the batch in hand, else a
// new one) until `budget` response bytes are taken.
std::optional<size_t> FrameRelay::Loop::TakeLocalEvents(size_t budget) {
  if (taken_next == taken_events.size()) {
    taken_next = 0;
    if (!mailbox->Take(taken_events)) return std::nullopt;
  }
  size_t bytes = 0;
  while (taken_next < taken_events.size() && bytes < budget) {
    LocalEvent& event = taken_events[taken_next++];
    auto* s = static_cast<Stream*>(event.call->tag);
    if (event.done.has_value()) {
      LocalDone(s, *event.done);
      continue;
    }
    bytes += event.message.size();
    bool asked = LocalResponse(s, std::move(event.message));
    // That response asked for the next (ReadNext), whose answer comes inline
    // while the backend has more queued. When the mailbox's newest event is
    // a response of this call, it is the call's only event (one response
    // at a time is asked for, and nothing follows an end): it is taken at
    // once, so that a stream's responses leave together instead of one per
    // round. (An end waits its turn: a response may precede it.)
    LocalCall* const call = event.call;
    while (asked && bytes < budget) {
      std::optional<LocalEvent> next = mailbox->TakeNewestIf(
          [call](const LocalEvent& e) { return e.call == call && !e.done.has_value(); });
      if (!next.has_value()) break;
      bytes += next->message.size();
      asked = LocalResponse(s, std::move(next->message));
    }
  }
  return bytes;
}

bool FrameRelay::Loop::LocalResponse(Stream* s, std::string message) {
  // The client is gone (its stream was cancelled, the end follows) or was
  // already given a status: nobody takes this.
  if (!s->client_open || s->client == nullptr || s->down_eof) return false;
  if (s->down.empty()) {
    s->down = std::move(message);
  } else {
    s->down.append(message);
  }
  s->local_ends.push_back(s->down_total());
  if (!s->response_submitted) {
    s->response_submitted = true;
    const nghttp2_nv nv[] = {MakeNv(":status", "200"), MakeNv("content-type", "application/grpc")};
    nghttp2_data_provider provider{};
    provider.source.ptr = s;
    provider.read_callback = &Loop::ReadDown;
    nghttp2_submit_response(s->client->session, s->client_id, nv, 2, &provider);
  } else {
    nghttp2_session_resume_data(s->client->session, s->client_id);
  }
  MarkDirty(s->client);
  if (s->down_total() - s->down_sent < kLocalBacklog) {
    s->local->ReadNext();
    return true;
  }
  s->local_wants_read = true;  // ReadDown asks once the client took some
  return false;
}

void FrameRelay::Loop::LocalDone(Stream* s, const absl::Status& status) {
  --local_calls;
  s->local.reset();  // its end was taken: the backend is done with it
  if (s->local_code < 0) {  // not failed by the relay already
    const int code = static_cast<int>(api::server::ToGrpcStatus(status).error_code());
    s->route->metrics->Handled(static_cast<grpc::StatusCode>(code));
    EndWithStatus(s, code, std::string(status.message()));
  }
  MaybeFree(s);
}

// The relay ends a local stream itself (a bad request): the client gets
// `grpc_code`, the backend stream is cancelled and its end is then ignored.
void FrameRelay::Loop::FailLocal(Stream* s, int grpc_code, std::string message) {
  s->route->metrics->Handled(static_cast<grpc::StatusCode>(grpc_code));
  EndWithStatus(s, grpc_code, std::move(message));
  s->local->Cancel();
}

// Ends a stream the relay answers itself: after what is still waiting to
// leave, trailers with the status (or a trailers-only response when nothing
// was sent).
void FrameRelay::Loop::EndWithStatus(Stream* s, int grpc_code, std::string message) {
  s->local_code = grpc_code;
  s->local_message = std::move(message);
  if (!s->client_open || s->client == nullptr || s->down_eof) return;
  s->down_eof = true;
  if (s->response_submitted) {
    nghttp2_session_resume_data(s->client->session, s->client_id);
  } else {
    s->response_submitted = true;
    const std::string code = std::to_string(grpc_code);
    const std::string encoded = api::GrpcMessageEncoded(s->local_message);
    const nghttp2_nv nv[] = {MakeNv(":status", "200"), MakeNv("content-type", "application/grpc"),
                             MakeNv("grpc-status", code), MakeNv("grpc-message", encoded)};
    nghttp2_submit_response(s->client->session, s->client_id, nv, encoded.empty() ? 3 : 4,
                            nullptr);
  }
  MarkDirty(s->client);
}

// A local stream past its deadline ends with DEADLINE_EXCEEDED (the client's
// gRPC says so too), and its backend stream is cancelled. So does a chain
// stream's observer, and its stream to etcd is reset.
void FrameRelay::Loop::ExpireDeadlines() {
  const Clock::time_point now = Clock::now();
  while (!deadlines.empty() && deadlines.begin()->first <= now) {
    Stream* s = deadlines.begin()->second;
    deadlines.erase(deadlines.begin());
    s->deadline = Clock::time_point::max();
    if (s->for_chain != nullptr) {
      if (s->peer_open) {
        nghttp2_submit_rst_stream(s->peer->session, NGHTTP2_FLAG_NONE, s->peer_id, NGHTTP2_CANCEL);
        MarkDirty(s->peer);
      }
      // The stream itself goes when its close comes.
      EndLink(*s->for_chain, absl::DeadlineExceededError("Deadline Exceeded"));
      continue;
    }
    // A client already gone was cancelled: its end reports that.
    if (s->local != nullptr && s->local_code < 0 && s->client_open) {
      FailLocal(s, static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED), "Deadline Exceeded");
    }
  }
}

// Gives up connections to etcd that stopped answering (see kConnectTimeout);
// true while one needs watching, so the loop wakes to check again. Dead
// connections are destroyed by the Settle() that follows.
bool FrameRelay::Loop::CheckUpstreamLiveness() {
  const Clock::time_point now = Clock::now();
  bool watching = false;
  std::vector<Conn*> upstreams;
  for (Conn* c : conns) {
    if (c->kind == ConnKind::kUpstream && !c->dead) upstreams.push_back(c);
  }
  for (Conn* c : upstreams) {
    if (!c->connected) {
      if (now - c->connect_started < kConnectTimeout) {
        watching = true;
        continue;
      }
      KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                     "frame relay: connecting to etcd timed out, relaying through the chain",
                     {{"endpoint", c->endpoint}});
      Kill(c);  // never connected: its streams go again through the chain
      continue;
    }
    if (c->streams.empty()) continue;
    watching = true;
    if (c->ping_sent != Clock::time_point::max()) {
      if (now - c->ping_sent < kPingTimeout) continue;
      KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                     "frame relay: etcd stopped answering, closing the connection",
                     {{"endpoint", c->endpoint}});
      Kill(c);
    } else if (now - c->last_recv >= kPingAfterSilence) {
      nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, nullptr);
      c->ping_sent = now;
      MarkDirty(c);
    }
  }
  return watching;
}

// At shutdown every local stream was cancelled (its client connection
// closed); their backends confirm through the mailbox, after which no call
// of theirs touches the relay. A backend that never confirms is left behind,
// posting into a closed mailbox.
void FrameRelay::Loop::WaitForLocalCalls() {
  const Clock::time_point give_up = Clock::now() + kLocalDrain;
  constexpr size_t kAll = std::numeric_limits<size_t>::max();
  while (TakeLocalEvents(kAll).has_value()) {
  }
  while (local_calls > 0 && Clock::now() < give_up) {
    // A call may wait for a stream of its own to etcd on this loop (a
    // namespaced Put, a Range the cache forwards): its cancel and etcd's
    // answer are carried out here too, as in Run().
    TakeEtcdCommands();
    Settle();
    std::array<epoll_event, 16> events;
    const int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) OnEvent(events[i]);
    ExpireDeadlines();
    TakeLocalEvents(kAll);
  }
  if (local_calls > 0) {
    KEEL_LOG_EVENT(Log(), spdlog::level::warn, "frame relay: calls did not end at shutdown",
                   {{"calls", std::to_string(local_calls)}});
  }
  mailbox->Close();
}

// ----- the chain's streams to etcd (OpenToEtcd) -----

std::unique_ptr<EtcdStream> FrameRelay::OpenToEtcd(std::string_view path,
                                                   const api::CallContext& ctx,
                                                   std::shared_ptr<EtcdStreamObserver> observer) {
  if (loops_.empty()) return nullptr;
  // A call the relay serves against the chain opens its stream from the
  // loop's own thread: it stays on that loop (its request and answer then
  // cross no thread and wake nobody). Others are spread over the loops.
  Loop* l = nullptr;
  for (const std::unique_ptr<Loop>& loop : loops_) {
    if (loop.get() == current_loop) l = loop.get();
  }
  if (l == nullptr) {
    l = loops_[next_etcd_stream_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size()]
            .get();
  }
  if (l->refusing_opens.load(std::memory_order_relaxed) ||
      Clock::now() < l->etcd_down_until.load(std::memory_order_relaxed)) {
    return nullptr;
  }
  auto link = std::make_shared<EtcdStreamLink>();
  link->observer = std::move(observer);
  link->path = std::string(path);
  link->token = ctx.token;
  link->require_leader = ctx.require_leader;
  link->deadline = ctx.deadline;
  if (!l->etcd_commands->Post({EtcdCommand::Kind::kOpen, link, {}})) return nullptr;
  return std::make_unique<EtcdStreamHandle>(l->etcd_commands, std::move(link));
}

void FrameRelay::Loop::MarkEtcdDown() {
  etcd_down_until.store(Clock::now() + kUpstreamRetry, std::memory_order_relaxed);
}

bool FrameRelay::Loop::TakeEtcdCommands() {
  if (!etcd_commands->Take(taken_commands)) return false;
  for (EtcdCommand& command : taken_commands) {
    Stream* s = command.link->stream;
    const bool open = s != nullptr && s->peer_open;
    switch (command.kind) {
      case EtcdCommand::Kind::kOpen:
        OpenForChain(command.link);
        break;
      case EtcdCommand::Kind::kWrite:
      case EtcdCommand::Kind::kWritesDone:
        if (!open || s->up_eof) break;
        if (command.kind == EtcdCommand::Kind::kWrite) {
          s->up.append(command.message);
        } else {
          s->up_eof = true;
        }
        nghttp2_session_resume_data(s->peer->session, s->peer_id);
        MarkDirty(s->peer);
        break;
      case EtcdCommand::Kind::kCancel:
        if (open && !command.link->ended()) {
          nghttp2_submit_rst_stream(s->peer->session, NGHTTP2_FLAG_NONE, s->peer_id,
                                    NGHTTP2_CANCEL);
          MarkDirty(s->peer);
        }
        // The stream itself goes when its close comes.
        EndLink(*command.link, absl::CancelledError("keel: the stream to etcd was cancelled"));
        break;
    }
  }
  taken_commands.clear();
  return true;
}

void FrameRelay::Loop::OpenForChain(const std::shared_ptr<EtcdStreamLink>& link) {
  if (link->ended()) return;  // cancelled before it was opened
  Conn* up = Upstream();
  if (up == nullptr) {
    EndLink(*link, NeverSent("keel: cannot reach etcd"));
    return;
  }
  absl::InlinedVector<nghttp2_nv, 8> headers = {
      MakeNv(":method", "POST"),   MakeNv(":scheme", "http"),
      MakeNv(":path", link->path), MakeNv(":authority", up->endpoint),
      MakeNv("te", "trailers"),    MakeNv("content-type", "application/grpc")};
  if (!link->token.empty()) headers.push_back(MakeNv("token", link->token));
  if (link->require_leader) headers.push_back(MakeNv("hasleader", "true"));
  std::string timeout;
  Clock::time_point deadline = Clock::time_point::max();
  if (link->deadline != absl::InfiniteFuture()) {
    const absl::Duration left = link->deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      EndLink(*link, absl::DeadlineExceededError("Deadline Exceeded"));
      return;
    }
    timeout = GrpcTimeoutValue(left);
    headers.push_back(MakeNv("grpc-timeout", timeout));
    deadline = Clock::now() + absl::ToChronoNanoseconds(left);
  }
  auto* s = new Stream();
  s->client_open = false;
  s->routed = true;
  s->replayable = false;  // ReadUp drops what has left
  s->for_chain = link;
  nghttp2_data_provider provider{};
  provider.source.ptr = s;
  provider.read_callback = &Loop::ReadUp;
  const int32_t id =
      nghttp2_submit_request(up->session, nullptr, headers.data(), headers.size(), &provider, s);
  if (id < 0) {
    delete s;
    EndLink(*link, NeverSent("keel: cannot open a stream to etcd"));
    return;
  }
  s->peer = up;
  s->peer_id = id;
  s->peer_open = true;
  up->streams.insert(s);
  link->stream = s;
  if (deadline != Clock::time_point::max()) {
    s->deadline = deadline;
    deadlines.emplace(deadline, s);
  }
  if (chain_streams != nullptr) chain_streams->Add(1);
  watch_upstream = true;
  MarkDirty(up);
}

// Hands every complete message to the observer, straight from `data` when
// nothing is held from an earlier chunk.
void FrameRelay::Loop::ChainStreamData(Stream* s, const uint8_t* data, size_t len) {
  EtcdStreamLink& link = *s->for_chain;
  if (link.ended()) return;
  if (!s->down.empty()) {
    s->down.append(reinterpret_cast<const char*>(data), len);
    data = reinterpret_cast<const uint8_t*>(s->down.data());
    len = s->down.size();
  }
  size_t offset = 0;
  while (!link.ended() && len - offset >= kGrpcPrefix) {
    const uint8_t* p = data + offset;
    const uint64_t length = GrpcMessageLength(p);
    if (len - offset - kGrpcPrefix < length) break;
    if (p[0] != 0) {  // never asked for (no grpc-accept-encoding)
      nghttp2_submit_rst_stream(s->peer->session, NGHTTP2_FLAG_NONE, s->peer_id, NGHTTP2_CANCEL);
      MarkDirty(s->peer);
      EndLink(link, absl::InternalError("keel: etcd sent a compressed message"));
      break;
    }
    link.observer->OnMessage(
        std::string_view(reinterpret_cast<const char*>(p + kGrpcPrefix), length));
    offset += kGrpcPrefix + length;
  }
  if (link.ended()) {
    s->down.clear();
  } else if (s->down.empty()) {
    s->down.assign(reinterpret_cast<const char*>(data) + offset, len - offset);
  } else {
    s->down.erase(0, offset);
  }
}

void FrameRelay::Loop::EndForChain(Stream* s, absl::Status status) {
  EndLink(*s->for_chain, std::move(status));
  s->for_chain->stream = nullptr;
  if (chain_streams != nullptr) chain_streams->Add(-1);
  MaybeFree(s);
}

void FrameRelay::Loop::EndEtcdCommands() {
  etcd_commands->Close();
  etcd_commands->Take(taken_commands);
  for (EtcdCommand& command : taken_commands) {
    if (command.kind == EtcdCommand::Kind::kOpen) {
      EndLink(*command.link, NeverSent("keel: the frame relay stopped"));
    }
  }
  taken_commands.clear();
}

void FrameRelay::Loop::EndLink(EtcdStreamLink& link, absl::Status status) {
  if (link.ended()) return;
  // Released after the call: the observer may be freed once OnEnd returns.
  std::shared_ptr<EtcdStreamObserver> observer = std::move(link.observer);
  observer->OnEnd(std::move(status));
}

// ----- nghttp2 callbacks -----

int FrameRelay::Loop::OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame,
                                     void* user_data) {
  auto* c = static_cast<Conn*>(user_data);
  if (c->kind != ConnKind::kClient || frame->hd.type != NGHTTP2_HEADERS ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  auto* s = new Stream();
  s->client = c;
  s->client_id = frame->hd.stream_id;
  c->streams.insert(s);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
  return 0;
}

int FrameRelay::Loop::OnHeader(nghttp2_session* session, const nghttp2_frame* frame,
                               nghttp2_rcbuf* name, nghttp2_rcbuf* value, uint8_t,
                               void* user_data) {
  auto* c = static_cast<Conn*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (s == nullptr) return 0;
  if (c->kind == ConnKind::kClient) {
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) s->request_headers.Add(name, value);
  } else if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    s->response_headers.Add(name, value);
  } else if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
    s->trailers.Add(name, value);
  }
  return 0;
}

int FrameRelay::Loop::OnFrameRecv(nghttp2_session* session, const nghttp2_frame* frame,
                                  void* user_data) {
  auto* c = static_cast<Conn*>(user_data);
  Loop* l = current_loop;
  if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) {
    c->ping_sent = Clock::time_point::max();
    return 0;
  }
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    if (c->kind != ConnKind::kClient) c->goaway = true;
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (s == nullptr) return 0;
  const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (c->kind == ConnKind::kClient) {
    if (end_stream) s->up_eof = true;
    if (!s->routed) {
      if (frame->hd.type == NGHTTP2_HEADERS || end_stream) l->Route(s);
    } else if (end_stream && s->peer_open) {
      nghttp2_session_resume_data(s->peer->session, s->peer_id);
      l->MarkDirty(s->peer);
    } else if (end_stream && s->local != nullptr) {
      s->local->WritesDone();  // responses go on, as from etcd itself
    }
    return 0;
  }
  // From the peer.
  if (s->for_chain != nullptr) {
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
      s->have_trailers = true;
    }
    if (end_stream && s->peer == c && s->peer_id == frame->hd.stream_id) {
      s->down_eof = true;
      // Trailers, or a trailers-only response.
      l->EndLink(*s->for_chain,
                 s->have_trailers ? StatusOf(s->trailers) : StatusOf(s->response_headers));
      if (nghttp2_session_get_stream_local_close(session, s->peer_id) == 0) {
        // The call is over (as for gRPC's client): our half ends too.
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->peer_id, NGHTTP2_CANCEL);
        l->MarkDirty(c);
      }
    }
    return 0;
  }
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    if (!s->client_open || s->client == nullptr || s->response_submitted) return 0;
    s->response_submitted = true;
    if (end_stream) {  // trailers-only
      s->down_eof = true;
      l->Finished(s, GrpcStatusOf(s->response_headers));
      nghttp2_submit_response(s->client->session, s->client_id, s->response_headers.data(),
                              s->response_headers.size(), nullptr);
    } else {
      nghttp2_data_provider provider{};
      provider.source.ptr = s;
      provider.read_callback = &Loop::ReadDown;
      nghttp2_submit_response(s->client->session, s->client_id, s->response_headers.data(),
                              s->response_headers.size(), &provider);
    }
    l->MarkDirty(s->client);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
    s->have_trailers = true;
  }
  if (end_stream) {
    s->down_eof = true;
    l->Finished(s, s->have_trailers ? GrpcStatusOf(s->trailers) : 2);
    if (s->client_open && s->client != nullptr) {
      nghttp2_session_resume_data(s->client->session, s->client_id);
      l->MarkDirty(s->client);
    }
  }
  return 0;
}

int FrameRelay::Loop::OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                                  const uint8_t* data, size_t len, void* user_data) {
  auto* c = static_cast<Conn*>(user_data);
  Loop* l = current_loop;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (s == nullptr) {
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  if (c->kind == ConnKind::kClient) {
    if (s->local != nullptr) {
      s->up.append(reinterpret_cast<const char*>(data), len);
      l->FeedLocal(s);
      return 0;
    }
    if (s->routed && !s->peer_open) {
      // Answered or failed already: nobody will send these on.
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    s->up.append(reinterpret_cast<const char*>(data), len);
    s->up_scan.Feed(data, len);
    if (s->replayable && s->up_total() > kReplayLimit) s->replayable = false;
    if (s->to_upstream) {
      for (; s->received_counted < s->up_scan.messages(); ++s->received_counted) {
        s->route->metrics->Received();
      }
    }
    if (!s->routed) {
      l->Route(s);
    } else if (s->peer_open) {
      nghttp2_session_resume_data(s->peer->session, s->peer_id);
      l->MarkDirty(s->peer);
    }
    return 0;
  }
  // From the peer. Its connection window is shared by every client's streams
  // (the connection to etcd): it is given back on receipt, so that one slow
  // client cannot stall the others; the stream window, given back as bytes
  // leave for the client, still bounds what is held per stream.
  nghttp2_session_consume_connection(session, len);
  if (s->for_chain != nullptr) {
    // Its observer takes each message at once (the chain's upstream streams
    // are always read): the window goes back on receipt.
    nghttp2_session_consume_stream(session, stream_id, len);
    if (s->peer == c && s->peer_id == stream_id) l->ChainStreamData(s, data, len);
    return 0;
  }
  if (s->peer != c || s->peer_id != stream_id || !s->client_open || s->client == nullptr) {
    nghttp2_session_consume_stream(session, stream_id, len);
    return 0;
  }
  s->down.append(reinterpret_cast<const char*>(data), len);
  s->down_scan.Feed(data, len);
  if (s->to_upstream) {
    for (; s->sent_counted < s->down_scan.messages(); ++s->sent_counted) {
      s->route->metrics->Sent();
    }
  }
  nghttp2_session_resume_data(s->client->session, s->client_id);
  l->MarkDirty(s->client);
  return 0;
}

int FrameRelay::Loop::OnStreamClose(nghttp2_session* session, int32_t stream_id,
                                    uint32_t error_code, void* user_data) {
  auto* c = static_cast<Conn*>(user_data);
  Loop* l = current_loop;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (s == nullptr) return 0;
  if (c->kind == ConnKind::kClient) {
    if (s->client != c) return 0;
    c->streams.erase(s);
    s->client_open = false;
    s->client = nullptr;
    // Bytes the client sent that will not leave now: give their window back.
    if (s->up_total() > s->up_consumed) {
      nghttp2_session_consume_connection(session, s->up_total() - s->up_consumed);
      s->up_consumed = s->up_total();
    }
    if (s->peer_open && s->peer != nullptr) {
      nghttp2_submit_rst_stream(s->peer->session, NGHTTP2_FLAG_NONE, s->peer_id, NGHTTP2_CANCEL);
      l->MarkDirty(s->peer);
    }
    // Its end comes through the mailbox, which then frees the stream.
    if (s->local != nullptr) s->local->Cancel();
    l->MaybeFree(s);
    return 0;
  }
  if (s->peer != c || s->peer_id != stream_id) return 0;  // an earlier attempt's stream
  c->streams.erase(s);
  if (s->for_chain != nullptr) {
    s->peer_open = false;
    s->peer = nullptr;
    // REFUSED_STREAM (also every stream beyond a GOAWAY's last id): etcd
    // did not process it.
    const std::string message =
        absl::StrCat("keel: etcd reset the stream (HTTP/2 error ", error_code, ")");
    l->EndForChain(s, error_code == NGHTTP2_REFUSED_STREAM ? NeverSent(message)
                                                           : absl::UnavailableError(message));
    return 0;
  }
  s->down_consumed = s->down_total();  // the connection window was given back on receipt
  if (error_code == NGHTTP2_NO_ERROR && s->down_eof) {
    s->peer_open = false;
    s->peer = nullptr;
    l->MaybeFree(s);
    return 0;
  }
  // Reset before a complete answer. REFUSED_STREAM (and streams beyond a
  // GOAWAY's last id) were never processed by etcd.
  l->PeerEnded(s, error_code == NGHTTP2_NO_ERROR ? uint32_t{NGHTTP2_INTERNAL_ERROR} : error_code,
               /*replay_safe=*/error_code == NGHTTP2_REFUSED_STREAM);
  return 0;
}

ssize_t FrameRelay::Loop::ReadUp(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                 uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* s = static_cast<Stream*>(source->ptr);
  Loop* l = current_loop;
  const size_t n = std::min(length, s->up_total() - s->up_sent);
  if (n > 0) {
    std::memcpy(buf, s->up.data() + (s->up_sent - s->up_base), n);
    s->up_sent += n;
    if (s->up_sent > s->up_consumed) {
      if (s->client_open && s->client != nullptr) {
        nghttp2_session_consume(s->client->session, s->client_id, s->up_sent - s->up_consumed);
        l->MarkDirty(s->client);
      }
      s->up_consumed = s->up_sent;
    }
    if (!s->replayable && s->up_sent - s->up_base >= kReplayLimit) {
      s->up.erase(0, s->up_sent - s->up_base);
      s->up_base = s->up_sent;
    }
  }
  if (s->up_sent == s->up_total()) {
    if (s->up_eof) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return static_cast<ssize_t>(n);
}

ssize_t FrameRelay::Loop::ReadDown(nghttp2_session* session, int32_t, uint8_t* buf, size_t length,
                                   uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* s = static_cast<Stream*>(source->ptr);
  Loop* l = current_loop;
  const size_t n = std::min(length, s->down_total() - s->down_sent);
  if (n > 0) {
    std::memcpy(buf, s->down.data() + (s->down_sent - s->down_base), n);
    s->down_sent += n;
    if (s->down_sent > s->down_consumed) {
      if (s->peer_open && s->peer != nullptr) {
        nghttp2_session_consume_stream(s->peer->session, s->peer_id,
                                       s->down_sent - s->down_consumed);
        l->MarkDirty(s->peer);
      }
      s->down_consumed = s->down_sent;
    }
    if (s->down_sent == s->down_total()) {
      s->down.clear();
      s->down_base = s->down_sent;
    } else if (s->down_sent - s->down_base >= kReplayLimit) {
      s->down.erase(0, s->down_sent - s->down_base);
      s->down_base = s->down_sent;
    }
    for (; s->local_ends_done < s->local_ends.size() &&
           s->local_ends[s->local_ends_done] <= s->down_sent;
         ++s->local_ends_done) {
      s->route->metrics->Sent();
    }
    if (s->local_ends_done == s->local_ends.size() ||
        (s->local_ends_done >= 1024 && 2 * s->local_ends_done >= s->local_ends.size())) {
      // Drop what was counted (a client that never quite catches up must not
      // grow the list for ever).
      s->local_ends.erase(s->local_ends.begin(),
                          s->local_ends.begin() + static_cast<ptrdiff_t>(s->local_ends_done));
      s->local_ends_done = 0;
    }
    if (s->local_wants_read && s->local != nullptr &&
        s->down_total() - s->down_sent < kLocalBacklog) {
      s->local_wants_read = false;
      s->local->ReadNext();  // its answer, even inline, only reaches the mailbox
    }
  }
  if (s->down_sent == s->down_total()) {
    if (s->down_eof) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      if (s->have_trailers) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(session, s->client_id, s->trailers.data(), s->trailers.size());
      } else if (s->local_code >= 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        const std::string code = std::to_string(s->local_code);
        const std::string message = api::GrpcMessageEncoded(s->local_message);
        const nghttp2_nv status[] = {MakeNv("grpc-status", code), MakeNv("grpc-message", message)};
        nghttp2_submit_trailer(session, s->client_id, status, message.empty() ? 1 : 2);
      }
    } else if (n == 0) {
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return static_cast<ssize_t>(n);
}

}  // namespace keel::proxy::grpcproxy
