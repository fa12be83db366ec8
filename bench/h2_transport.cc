// The `h2` transport: gRPC's wire format (HTTP/2 POST, 5-byte length-prefixed
// messages, grpc-status trailers) written straight onto nghttp2 client
// sessions, one epoll loop thread per queue. No gRPC library on the path, so
// the load generator's cost per message stays a few microseconds.

#include "bench/h2_transport.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "api/grpc_framing.h"
#include "common/cpus.h"

namespace keel::bench {

namespace {

using api::kGrpcPrefix;

constexpr size_t kReadChunk = 64 * 1024;
// Output waiting in user space above which no more frames are produced
// until the socket drains.
constexpr size_t kMaxPendingOutput = 1 << 20;
// Rounds of flushing per loop turn before the sockets are looked at again.
constexpr int kFlushRounds = 4;
// Windows as large as HTTP/2 allows: a load generator must never be the
// side that throttles.
constexpr int32_t kStreamWindow = (1 << 30);
constexpr int32_t kConnectionWindow = (1 << 30);

std::string Framed(std::string_view message) {
  std::string out;
  out.reserve(kGrpcPrefix + message.size());
  api::AppendGrpcPrefix(out, message.size());
  out.append(message);
  return out;
}

// The whole of `text` as an integer in `base`.
bool ParseInt(std::string_view text, int base, int* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out, base);
  return ec == std::errc() && ptr == end && !text.empty();
}

// gRPC's mapping of an HTTP status without grpc-status (gRPC's
// http-grpc-status-mapping.md).
grpc::StatusCode CodeOfHttpStatus(int http_status) {
  switch (http_status) {
    case 400:
      return grpc::StatusCode::INTERNAL;
    case 401:
      return grpc::StatusCode::UNAUTHENTICATED;
    case 403:
      return grpc::StatusCode::PERMISSION_DENIED;
    case 404:
      return grpc::StatusCode::UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return grpc::StatusCode::UNAVAILABLE;
    default:
      return grpc::StatusCode::UNKNOWN;
  }
}

// gRPC's mapping of an RST_STREAM error code (gRPC's PROTOCOL-HTTP2.md).
grpc::StatusCode CodeOfReset(uint32_t error_code) {
  switch (error_code) {
    case NGHTTP2_CANCEL:
      return grpc::StatusCode::CANCELLED;
    case NGHTTP2_REFUSED_STREAM:
      return grpc::StatusCode::UNAVAILABLE;
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
      return grpc::StatusCode::PERMISSION_DENIED;
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

// A grpc-timeout value: milliseconds, at most 8 digits.
std::string GrpcTimeout(absl::Duration timeout) {
  const int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(timeout), 1, 99999999);
  return absl::StrCat(ms, "m");
}

nghttp2_nv Header(const char* name, const std::string& value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), std::strlen(name),
          value.size(), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

nghttp2_nv Header(const char* name, const char* value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value)), std::strlen(name),
          std::strlen(value), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

// Connects to "host:port" within `timeout`; returns a non-blocking socket
// with TCP_NODELAY, or Unavailable.
absl::StatusOr<int> Connect(const std::string& target, absl::Duration timeout) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint ", target, " has no port"));
  }
  std::string host = target.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = target.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", target, ": ", ::gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
      int err = rc == 1 ? 0 : ETIMEDOUT;
      socklen_t len = sizeof(err);
      if (rc == 1) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc == 0) {
      ::freeaddrinfo(found);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("cannot connect to ", target, " within ",
                                             absl::FormatDuration(timeout), " (", last_error,
                                             "; is the endpoint up?)"));
}

// The length in a gRPC message prefix (`p` holds at least its 5 bytes).
size_t MessageLength(const char* p) {
  return api::GrpcMessageLength(reinterpret_cast<const uint8_t*>(p));
}

}  // namespace

// One call's state, from submit to close. Loop-confined.
struct H2Transport::Stream {
  int32_t id = -1;
  // Request bytes not yet handed to nghttp2 (framed messages).
  std::string out;
  size_t out_offset = 0;
  bool half_close = false;  // unary: END_STREAM after `out`
  bool deferred = false;    // nghttp2 waits for more data
  // Response.
  std::string in;  // bytes of an incomplete message
  int http_status = 0;
  int grpc_status = -1;
  std::string grpc_message;
  // Unary: the response message and the callback; streams: the handler.
  std::string response;
  int messages = 0;
  UnaryDone done;
  StreamCall::Handler* handler = nullptr;
  std::string timeout;        // grpc-timeout header value, "" for none
  bool deadline_hit = false;  // reset by the transport's own deadline
};

// One TCP connection with its nghttp2 client session. Loop-confined.
class H2Transport::Conn {
 public:
  Conn(H2Transport* transport, Loop* loop, int fd, std::string authority)
      : transport_(transport), loop_(loop), fd_(fd), authority_(std::move(authority)) {}
  ~Conn() {
    for (auto& [id, s] : streams_) delete s;  // calls still open at exit
    if (session_ != nullptr) nghttp2_session_del(session_);
    if (fd_ >= 0) ::close(fd_);
  }

  // Creates the session and queues the preface; false on failure.
  bool Init();
  int fd() const { return fd_; }
  Loop* loop() const { return loop_; }
  bool dead() const { return dead_; }

  // Starts the call (with a deadline unless `timeout` is infinite); returns
  // its stream id, or -1 when it ended at once (broken connection, or the
  // server is going away: its callback is posted, never run inline).
  int32_t Submit(const char* method, Stream* s, absl::Duration timeout);
  void Resume(Stream* s);
  void Reset(int32_t stream_id);
  void OnReadable();
  // Hands frames to the socket; false when the connection broke.
  bool Flush();
  bool wants_write() const { return !pending_.empty(); }
  // Whether the loop watches the socket for EPOLLOUT (Loop::SetWrite).
  bool write_armed = false;
  // The connection broke: every open call ends with UNAVAILABLE.
  void Fail(const std::string& why);

 private:
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user);
  static int OnData(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                    void* user);
  static int OnClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user);
  static int OnFrame(nghttp2_session* session, const nghttp2_frame* frame, void* user);
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void*);

  void Deliver(Stream* s, std::string_view message);
  void Finish(Stream* s, grpc::Status status);
  void FinishLater(Stream* s, grpc::Status status);

  H2Transport* transport_;
  Loop* loop_;
  int fd_;
  std::string authority_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, Stream*> streams_;
  std::string pending_;  // produced frames the socket has not taken yet
  size_t pending_offset_ = 0;
  bool dead_ = false;
  std::string dead_reason_;

  friend class H2Transport;
};

// One epoll thread: the sockets of its connections, posted tasks and timers.
class H2Transport::Loop {
 public:
  Loop() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    timer_fd_ = ::timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    Watch(wake_fd_, EPOLLIN, nullptr);
    Watch(timer_fd_, EPOLLIN, &timer_fd_);
  }
  ~Loop() {
    Stop();
    for (Conn* c : conns_) delete c;
    ::close(timer_fd_);
    ::close(wake_fd_);
    ::close(epfd_);
  }

  void Add(Conn* c) {
    conns_.push_back(c);
    Watch(c->fd(), EPOLLIN, c);
    dirty_.push_back(c);
  }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    if (!thread_.joinable()) return;
    Post([this] { stopping_ = true; });
    thread_.join();
  }
  bool InLoop() const { return std::this_thread::get_id() == thread_.get_id(); }

  void Post(std::function<void()> fn) {
    {
      absl::MutexLock lock(&mu_);
      posted_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }
  // Loop-confined.
  void AddTimer(absl::Time when, std::function<void()> fn) {
    const bool earliest = timers_.empty() || when < timers_.begin()->first;
    timers_.emplace(when, std::move(fn));
    if (earliest) ArmTimer();
  }
  void MarkDirty(Conn* c) { dirty_.push_back(c); }
  void Unwatch(int fd) { ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

 private:
  void Watch(int fd, uint32_t events, void* ptr) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = ptr;
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }
  void SetWrite(Conn* c, bool on) {
    if (c->write_armed == on) return;
    c->write_armed = on;
    epoll_event ev{};
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.ptr = c;
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c->fd(), &ev);
  }
  void ArmTimer() {
    itimerspec spec{};
    if (!timers_.empty()) {
      // An absolute CLOCK_REALTIME expiry, at least 1 ns (0 would disarm).
      const int64_t ns = std::max<int64_t>(1, absl::ToUnixNanos(timers_.begin()->first));
      spec.it_value.tv_sec = ns / 1000000000;
      spec.it_value.tv_nsec = ns % 1000000000;
    }
    ::timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &spec, nullptr);
  }

  void Run() {
    std::vector<epoll_event> events(256);
    std::vector<std::function<void()>> tasks;
    while (!stopping_) {
      // Connections still dirty after a few rounds (calls that end and are
      // started again inside the flush) are flushed after a look at the
      // sockets.
      const bool more = !FlushDirty();
      const int n =
          ::epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), more ? 0 : -1);
      for (int i = 0; i < n; ++i) {
        void* ptr = events[static_cast<size_t>(i)].data.ptr;
        if (ptr == nullptr) {
          uint64_t count;
          (void)!::read(wake_fd_, &count, sizeof(count));
          {
            absl::MutexLock lock(&mu_);
            tasks.swap(posted_);
          }
          for (auto& fn : tasks) fn();
          tasks.clear();
        } else if (ptr == &timer_fd_) {
          uint64_t count;
          (void)!::read(timer_fd_, &count, sizeof(count));
          FireTimers();
        } else {
          Conn* c = static_cast<Conn*>(ptr);
          const uint32_t ev = events[static_cast<size_t>(i)].events;
          if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) c->OnReadable();
          dirty_.push_back(c);
        }
      }
    }
  }

  void FireTimers() {
    // absl::Now() may trail the kernel clock the timer fired on a little.
    const absl::Time now = absl::Now() + absl::Microseconds(100);
    while (!timers_.empty() && timers_.begin()->first <= now) {
      std::function<void()> fn = std::move(timers_.begin()->second);
      timers_.erase(timers_.begin());
      fn();
    }
    ArmTimer();
  }

  // Returns false if connections are left dirty.
  bool FlushDirty() {
    // Flushing can run callbacks that dirty more connections.
    for (int round = 0; round < kFlushRounds && !dirty_.empty(); ++round) {
      std::vector<Conn*> batch;
      batch.swap(dirty_);
      for (Conn* c : batch) {
        if (c->dead()) continue;
        if (!c->Flush()) continue;
        SetWrite(c, c->wants_write());
      }
    }
    return dirty_.empty();
  }

  int epfd_ = -1;
  int wake_fd_ = -1;
  int timer_fd_ = -1;
  std::thread thread_;
  bool stopping_ = false;
  std::vector<Conn*> conns_;
  std::vector<Conn*> dirty_;
  std::multimap<absl::Time, std::function<void()>> timers_;
  absl::Mutex mu_;
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
};

bool H2Transport::Conn::Init() {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Conn::OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Conn::OnData);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Conn::OnClose);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Conn::OnFrame);
  const int rc = nghttp2_session_client_new(&session_, cbs, this);
  nghttp2_session_callbacks_del(cbs);
  if (rc != 0) return false;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 1 << 20},
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 3) != 0) return false;
  return nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow) ==
         0;
}

int32_t H2Transport::Conn::Submit(const char* method, Stream* s, absl::Duration timeout) {
  if (dead_) {
    FinishLater(s, grpc::Status(grpc::StatusCode::UNAVAILABLE, dead_reason_));
    return -1;
  }
  if (nghttp2_session_check_request_allowed(session_) == 0) {  // 0: not allowed
    FinishLater(s, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat(authority_, " is closing the connection (GOAWAY)")));
    return -1;
  }
  if (timeout != absl::InfiniteDuration()) s->timeout = GrpcTimeout(timeout);
  nghttp2_nv headers[8];
  size_t n = 0;
  headers[n++] = Header(":method", "POST");
  headers[n++] = Header(":scheme", "http");
  headers[n++] = Header(":path", method);
  headers[n++] = Header(":authority", authority_);
  headers[n++] = Header("content-type", "application/grpc");
  headers[n++] = Header("te", "trailers");
  if (!transport_->token_.empty()) headers[n++] = Header("token", transport_->token_);
  if (!s->timeout.empty()) headers[n++] = Header("grpc-timeout", s->timeout);
  nghttp2_data_provider body{};
  body.source.ptr = s;
  body.read_callback = &Conn::ReadBody;
  const int32_t id = nghttp2_submit_request(session_, nullptr, headers, n, &body, s);
  if (id < 0) {
    FinishLater(s, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat("cannot start a stream: ", nghttp2_strerror(id))));
    return -1;
  }
  s->id = id;
  streams_[id] = s;
  loop_->MarkDirty(this);
  if (timeout != absl::InfiniteDuration()) {
    // The server should end the call itself; this covers one that hangs.
    loop_->AddTimer(absl::Now() + timeout, [this, id] {
      auto it = streams_.find(id);
      if (it == streams_.end()) return;
      it->second->deadline_hit = true;
      Reset(id);
    });
  }
  return id;
}

void H2Transport::Conn::FinishLater(Stream* s, grpc::Status status) {
  // Posted, so that a caller retrying from its callback cannot recurse.
  loop_->Post([this, s, status = std::move(status)] { Finish(s, status); });
}

void H2Transport::Conn::Resume(Stream* s) {
  if (dead_ || !s->deferred) return;
  s->deferred = false;
  nghttp2_session_resume_data(session_, s->id);
  loop_->MarkDirty(this);
}

void H2Transport::Conn::Reset(int32_t stream_id) {
  if (dead_ || streams_.count(stream_id) == 0) return;
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
  loop_->MarkDirty(this);
}

ssize_t H2Transport::Conn::ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                    uint32_t* data_flags, nghttp2_data_source* source, void*) {
  Stream* s = static_cast<Stream*>(source->ptr);
  const size_t left = s->out.size() - s->out_offset;
  if (left == 0) {
    if (s->half_close) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  const size_t n = std::min(left, length);
  std::memcpy(buf, s->out.data() + s->out_offset, n);
  s->out_offset += n;
  if (s->out_offset == s->out.size()) {
    s->out.clear();
    s->out_offset = 0;
    if (s->half_close) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return static_cast<ssize_t>(n);
}

int H2Transport::Conn::OnHeader(nghttp2_session* session, const nghttp2_frame* frame,
                                const uint8_t* name, size_t namelen, const uint8_t* value,
                                size_t valuelen, uint8_t, void*) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  auto* s =
      static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (s == nullptr) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":status") {
    ParseInt(v, 10, &s->http_status);
  } else if (n == "grpc-status") {
    int code = 0;
    s->grpc_status = ParseInt(v, 10, &code) ? code : static_cast<int>(grpc::UNKNOWN);
  } else if (n == "grpc-message") {
    s->grpc_message = api::GrpcMessageDecoded(v);
  }
  return 0;
}

int H2Transport::Conn::OnData(nghttp2_session* session, uint8_t, int32_t stream_id,
                              const uint8_t* data, size_t len, void* user) {
  auto* self = static_cast<Conn*>(user);
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (s == nullptr) return 0;
  std::string_view chunk(reinterpret_cast<const char*>(data), len);
  while (!chunk.empty()) {
    // Whole messages straight from the chunk when nothing is pending.
    if (s->in.empty() && chunk.size() >= kGrpcPrefix &&
        chunk.size() >= kGrpcPrefix + MessageLength(chunk.data())) {
      const size_t length = MessageLength(chunk.data());
      self->Deliver(s, chunk.substr(kGrpcPrefix, length));
      chunk.remove_prefix(kGrpcPrefix + length);
      continue;
    }
    // A message split across chunks: only its own bytes gather in `in`, so
    // the next one is read from the chunk again.
    const size_t want =
        s->in.size() < kGrpcPrefix ? kGrpcPrefix : kGrpcPrefix + MessageLength(s->in.data());
    const size_t take = std::min(want - s->in.size(), chunk.size());
    s->in.append(chunk.substr(0, take));
    chunk.remove_prefix(take);
    if (s->in.size() >= kGrpcPrefix && s->in.size() == kGrpcPrefix + MessageLength(s->in.data())) {
      self->Deliver(s, std::string_view(s->in).substr(kGrpcPrefix));
      s->in.clear();
    }
  }
  return 0;
}

void H2Transport::Conn::Deliver(Stream* s, std::string_view message) {
  ++s->messages;
  if (s->handler != nullptr) {
    s->handler->OnMessage(message);
  } else if (s->messages == 1) {
    s->response.assign(message);
  }
}

int H2Transport::Conn::OnFrame(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<Conn*>(user);
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
    return 0;
  }
  auto* s =
      static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  // The server ended a stream whose requests we have not ended (a streaming
  // call): nghttp2 keeps it half-open until our side ends too, so end it
  // now; OnClose then reports the server's status.
  if (s != nullptr && !s->half_close) {
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    self->loop_->MarkDirty(self);
  }
  return 0;
}

int H2Transport::Conn::OnClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                               void* user) {
  auto* self = static_cast<Conn*>(user);
  auto it = self->streams_.find(stream_id);
  if (it == self->streams_.end()) return 0;
  Stream* s = it->second;
  self->streams_.erase(it);
  grpc::Status status;
  if (s->grpc_status >= 0) {
    status = grpc::Status(static_cast<grpc::StatusCode>(s->grpc_status), s->grpc_message);
  } else if (s->deadline_hit) {
    status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded");
  } else if (error_code == NGHTTP2_CANCEL) {
    status = grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled");
  } else if (error_code != NGHTTP2_NO_ERROR) {
    status = grpc::Status(CodeOfReset(error_code),
                          absl::StrCat("stream reset (HTTP/2 error ", error_code, ")"));
  } else if (s->http_status != 200) {
    status = grpc::Status(CodeOfHttpStatus(s->http_status),
                          absl::StrCat("HTTP status ", s->http_status, " without grpc-status"));
  } else {
    status = grpc::Status(grpc::StatusCode::INTERNAL, "response without grpc-status");
  }
  if (status.ok() && s->handler == nullptr && s->messages != 1) {
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat("unary response with ", s->messages, " messages"));
  }
  self->Finish(s, std::move(status));
  return 0;
}

void H2Transport::Conn::Finish(Stream* s, grpc::Status status) {
  if (s->handler != nullptr) {
    s->handler->OnEnd(status);
  } else {
    if (!status.ok()) s->response.clear();
    s->done(status, s->response);
  }
  delete s;
}

void H2Transport::Conn::OnReadable() {
  if (dead_) return;
  char buf[kReadChunk];
  for (;;) {
    const ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n > 0) {
      const ssize_t used = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf),
                                                    static_cast<size_t>(n));
      if (used < 0) {
        Fail(absl::StrCat("HTTP/2 error from the server: ",
                          nghttp2_strerror(static_cast<int>(used))));
        return;
      }
      if (static_cast<size_t>(n) < sizeof(buf)) return;
      continue;
    }
    if (n == 0) {
      Fail("the server closed the connection");
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) Fail(std::strerror(errno));
    return;
  }
}

bool H2Transport::Conn::Flush() {
  if (dead_) return false;
  for (;;) {
    while (pending_.size() - pending_offset_ < kMaxPendingOutput) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        Fail(absl::StrCat("HTTP/2 error: ", nghttp2_strerror(static_cast<int>(n))));
        return false;
      }
      if (n == 0) break;
      pending_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    if (pending_offset_ == pending_.size()) {
      pending_.clear();
      pending_offset_ = 0;
      return true;
    }
    const ssize_t w = ::send(fd_, pending_.data() + pending_offset_,
                             pending_.size() - pending_offset_, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      Fail(std::strerror(errno));
      return false;
    }
    pending_offset_ += static_cast<size_t>(w);
    if (pending_offset_ == pending_.size()) {
      pending_.clear();
      pending_offset_ = 0;
    } else {
      if (pending_offset_ >= kMaxPendingOutput) {  // keep the unsent tail only
        pending_.erase(0, pending_offset_);
        pending_offset_ = 0;
      }
      return true;  // the socket is full: EPOLLOUT resumes
    }
  }
}

void H2Transport::Conn::Fail(const std::string& why) {
  if (dead_) return;
  dead_ = true;
  dead_reason_ = absl::StrCat("connection to ", authority_, " lost: ", why);
  // Nothing more is read or written (a socket at EOF would wake the loop
  // forever).
  loop_->Unwatch(fd_);
  ::shutdown(fd_, SHUT_RDWR);
  std::unordered_map<int32_t, Stream*> open;
  open.swap(streams_);
  for (auto& [id, s] : open) {
    nghttp2_session_set_stream_user_data(session_, id, nullptr);
    Finish(s, grpc::Status(grpc::StatusCode::UNAVAILABLE, dead_reason_));
  }
}

// The handle a caller holds for a streaming call.
// The stream's state is freed when it closes, so the handle finds it by id
// (ids are never reused on a connection).
class H2Transport::Call final : public StreamCall {
 public:
  Call(Conn* conn, int32_t id) : conn_(conn), id_(id) {}
  void Write(std::string message) override {
    if (conn_->dead()) return;
    auto it = conn_->streams_.find(id_);
    if (it == conn_->streams_.end()) return;
    it->second->out.append(Framed(message));
    conn_->Resume(it->second);
  }
  void Cancel() override {
    Conn* conn = conn_;
    const int32_t id = id_;
    auto reset = [conn, id] { conn->Reset(id); };
    if (conn_->loop()->InLoop()) {
      reset();
    } else {
      conn_->loop()->Post(reset);
    }
  }

 private:
  Conn* conn_;
  int32_t id_;
};

H2Transport::H2Transport(int threads, std::string token) : token_(std::move(token)) {
  if (threads <= 0) threads = common::UsableCpus();
  for (int i = 0; i < threads; ++i) loops_.push_back(std::make_unique<Loop>());
}

H2Transport::~H2Transport() { Shutdown(); }

absl::StatusOr<std::unique_ptr<H2Transport>> H2Transport::Dial(
    const std::vector<std::string>& targets, int conns, int threads, std::string token,
    absl::Duration dial_timeout) {
  auto t = std::unique_ptr<H2Transport>(new H2Transport(threads, std::move(token)));
  for (int i = 0; i < conns; ++i) {
    const std::string& target = targets[static_cast<size_t>(i) % targets.size()];
    absl::StatusOr<int> fd = Connect(target, dial_timeout);
    if (!fd.ok()) return fd.status();
    Loop* loop = t->loops_[static_cast<size_t>(i) % t->loops_.size()].get();
    auto* conn = new Conn(t.get(), loop, *fd, target);
    if (!conn->Init()) {
      delete conn;
      return absl::InternalError("cannot create an HTTP/2 session");
    }
    loop->Add(conn);
    t->conns_.push_back(conn);
  }
  for (auto& loop : t->loops_) loop->Start();
  return t;
}

int H2Transport::QueueFor(int, int conn) const { return conn % static_cast<int>(loops_.size()); }

void H2Transport::RunAt(int queue, absl::Time when, std::function<void()> fn) {
  Loop* loop = loops_[static_cast<size_t>(queue) % loops_.size()].get();
  if (loop->InLoop() && when > absl::Now()) {
    loop->AddTimer(when, std::move(fn));
    return;
  }
  loop->Post([loop, when, fn = std::move(fn)]() mutable {
    if (when <= absl::Now()) {
      fn();
    } else {
      loop->AddTimer(when, std::move(fn));
    }
  });
}

void H2Transport::Unary(int queue, int conn, const char* method, std::string request,
                        absl::Duration timeout, UnaryDone done) {
  (void)queue;
  Conn* c = conns_[static_cast<size_t>(conn)];
  auto* s = new Stream();
  s->out = Framed(request);
  s->half_close = true;
  s->done = std::move(done);
  if (c->loop()->InLoop()) {
    c->Submit(method, s, timeout);
  } else {
    c->loop()->Post([c, method, s, timeout] { c->Submit(method, s, timeout); });
  }
}

std::unique_ptr<StreamCall> H2Transport::OpenStream(int queue, int conn, const char* method,
                                                    StreamCall::Handler* handler) {
  (void)queue;
  Conn* c = conns_[static_cast<size_t>(conn)];
  auto* s = new Stream();
  s->handler = handler;
  // On a broken connection the call ends at once (OnEnd) and the id is -1.
  const int32_t id = c->Submit(method, s, absl::InfiniteDuration());
  return std::make_unique<Call>(c, id);
}

void H2Transport::Shutdown() {
  for (auto& loop : loops_) loop->Stop();
}

}  // namespace keel::bench
