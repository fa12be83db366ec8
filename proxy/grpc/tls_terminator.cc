#include "proxy/grpc/tls_terminator.h"

#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/sigpipe.h"
#include "common/tcp_listen.h"
#include "proxy/grpc/first_bytes.h"
#include "proxy/grpc/tls.h"

namespace keel::proxy::grpcproxy {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes one direction may have waiting for its reader before the writer is
// no longer read.
constexpr size_t kMaxBuffered = 1 << 20;
// One read's worth (a TLS record carries at most 16 KiB).
constexpr size_t kChunk = 64 * 1024;
// Once one side has ended, how long the other may take to finish (the
// server to answer a half-closed client, a client to read the last reply).
constexpr auto kLinger = std::chrono::seconds(10);

spdlog::logger& Log() { return *common::Logger("grpc-proxy"); }

struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;

// Bytes waiting for one side, written from `offset` on. The written prefix
// is dropped once it is large, so a reader that always lags a little does
// not make the buffer grow (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets the
// bytes move between SSL_write tries).
struct Pending {
  std::string bytes;
  size_t offset = 0;
  size_t size() const { return bytes.size() - offset; }
  const char* data() const { return bytes.data() + offset; }
  void Consume(size_t n) {
    offset += n;
    if (offset == bytes.size()) {
      bytes.clear();
      offset = 0;
    } else if (offset >= kChunk) {
      bytes.erase(0, offset);
      offset = 0;
    }
  }
  void Drop() {
    bytes.clear();
    offset = 0;
  }
};

}  // namespace

// One client connection. Its two descriptors are registered edge-triggered
// for both directions, and any event on either runs Progress(), which moves
// bytes every way it can until each step is blocked on the kernel (a new
// edge will come) or on a full buffer (freed by a step of the same loop).
struct TlsConnection {
  int client_fd = -1;
  SslPtr ssl;
  int plain_fd = -1;        // our end of the socketpair, once dispatched
  bool dispatched = false;  // handed to dispatch() or adopt_http2
  bool http_only = false;   // Serve(fd, true): whatever it sends, HTTP/1.x
  bool handshake_done = false;
  Pending to_plain;           // decrypted, for the server side
  Pending to_client;          // the server's, to encrypt
  bool client_ended = false;  // the client closed (close_notify or EOF)
  bool plain_shut = false;    // ... and the server side was told (SHUT_WR)
  bool plain_gone = false;    // the server side takes no more bytes
  bool plain_ended = false;   // the server side closed
  bool dead = false;          // closed; freed after the current batch
  // The first-bytes deadline, then the linger deadline once a side ended.
  std::multimap<Clock::time_point, TlsConnection*>::iterator timer;
  bool timed = false;
};

struct TlsTerminator::Loop {
  explicit Loop(TlsTerminatorOptions o) : options(std::move(o)) {}

  TlsTerminatorOptions options;
  int epfd = -1;
  int wake_fd = -1;
  std::thread thread;
  // Connections taken by Serve() and not dispatched yet.
  std::atomic<size_t> waiting{0};

  std::mutex mu;
  std::vector<std::pair<int, bool>> incoming;  // guarded by mu; fd and http_only
  bool running = false;       // guarded by mu
  bool stopped = false;       // guarded by mu
  absl::Duration drain;       // guarded by mu: Stop()'s

  // Loop thread only (and Stop() once the thread is gone).
  std::unordered_map<TlsConnection*, std::unique_ptr<TlsConnection>> connections;
  std::multimap<Clock::time_point, TlsConnection*> timers;
  std::vector<TlsConnection*> graveyard;

  void Run();
  // Takes what Serve() queued; false once Stop() asked the loop to end
  // (then `drain_until` is set).
  bool OnWake(Clock::time_point* drain_until);
  void Accept(int fd, bool http_only);
  void Progress(TlsConnection* c);
  // One step each; true if it moved anything.
  bool ReadClient(TlsConnection* c);
  bool WritePlain(TlsConnection* c);
  bool ReadPlain(TlsConnection* c);
  bool WriteClient(TlsConnection* c);
  bool Dispatch(TlsConnection* c);
  void SetTimer(TlsConnection* c, Clock::time_point when);
  void ClearTimer(TlsConnection* c);
  void Undispatched(TlsConnection* c);  // it leaves the `waiting` count
  void Close(TlsConnection* c, bool say_close_notify);
  void FreeDead();
};

void TlsTerminator::Loop::SetTimer(TlsConnection* c, Clock::time_point when) {
  ClearTimer(c);
  c->timer = timers.emplace(when, c);
  c->timed = true;
}

void TlsTerminator::Loop::ClearTimer(TlsConnection* c) {
  if (!c->timed) return;
  timers.erase(c->timer);
  c->timed = false;
}

void TlsTerminator::Loop::Undispatched(TlsConnection* c) {
  if (c->dispatched) return;
  c->dispatched = true;
  waiting.fetch_sub(1, std::memory_order_relaxed);
}

void TlsTerminator::Loop::Accept(int fd, bool http_only) {
  auto owned = std::make_unique<TlsConnection>();
  TlsConnection* c = owned.get();
  connections.emplace(c, std::move(owned));
  c->client_fd = fd;
  c->http_only = http_only;
  c->ssl.reset(SSL_new(options.context.get()));
  SetTimer(c, Clock::now() + absl::ToChronoNanoseconds(options.first_bytes_timeout));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = c;
  if (c->ssl == nullptr || SSL_set_fd(c->ssl.get(), fd) != 1 ||
      epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    Close(c, false);
    return;
  }
  SSL_set_accept_state(c->ssl.get());
  Progress(c);
}

bool TlsTerminator::Loop::ReadClient(TlsConnection* c) {
  if (c->client_ended || c->to_plain.size() >= kMaxBuffered) return false;
  if (!c->handshake_done) {
    ERR_clear_error();
    const int r = SSL_do_handshake(c->ssl.get());
    if (r != 1) {
      const int err = SSL_get_error(c->ssl.get(), r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return false;
      KEEL_LOG_EVENT(Log(), spdlog::level::debug, "TLS handshake failed",
                     {{"error", TakeOpenSslError("connection closed")}});
      Close(c, false);
      return false;
    }
    c->handshake_done = true;
  }
  bool moved = false;
  char buf[kChunk];
  while (c->to_plain.size() < kMaxBuffered) {
    ERR_clear_error();
    const int n = SSL_read(c->ssl.get(), buf, sizeof(buf));
    if (n > 0) {
      // Once the server side takes nothing more, the client's bytes are
      // read only to be dropped.
      if (!c->plain_gone) c->to_plain.bytes.append(buf, static_cast<size_t>(n));
      moved = true;
      continue;
    }
    const int err = SSL_get_error(c->ssl.get(), n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    // close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a plain EOF: the
    // client is done sending; what it sent is still delivered and the
    // server's answer still carried back. Anything else is a broken
    // connection.
    if (err == SSL_ERROR_ZERO_RETURN) {
      c->client_ended = true;
      moved = true;
    } else {
      ERR_clear_error();
      Close(c, false);
    }
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::WritePlain(TlsConnection* c) {
  bool moved = false;
  while (c->plain_fd >= 0 && !c->plain_gone && c->to_plain.size() > 0) {
    const ssize_t n = send(c->plain_fd, c->to_plain.data(), c->to_plain.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c->to_plain.Consume(static_cast<size_t>(n));
      moved = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // The server side stopped reading (it may have answered and closed):
    // its last bytes still go to the client.
    c->plain_gone = true;
    c->to_plain.Drop();
    moved = true;
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::ReadPlain(TlsConnection* c) {
  if (c->plain_fd < 0 || c->plain_ended) return false;
  bool moved = false;
  char buf[kChunk];
  while (c->to_client.size() < kMaxBuffered) {
    const ssize_t n = recv(c->plain_fd, buf, sizeof(buf), 0);
    if (n > 0) {
      c->to_client.bytes.append(buf, static_cast<size_t>(n));
      moved = true;
      // (Read on to EAGAIN even after a short read: an EOF that came with
      // the bytes brings no edge of its own.)
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    c->plain_ended = true;  // EOF, or an error: either way nothing more comes
    moved = true;
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::WriteClient(TlsConnection* c) {
  bool moved = false;
  while (c->handshake_done && c->to_client.size() > 0) {
    ERR_clear_error();
    const int n = SSL_write(c->ssl.get(), c->to_client.data(),
                            static_cast<int>(std::min<size_t>(c->to_client.size(), INT32_MAX)));
    if (n > 0) {
      c->to_client.Consume(static_cast<size_t>(n));
      moved = true;
      continue;
    }
    const int err = SSL_get_error(c->ssl.get(), n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    ERR_clear_error();
    Close(c, false);  // the client is gone: nobody to deliver to
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::Dispatch(TlsConnection* c) {
  const FirstBytes kind =
      ClassifyFirstBytes(std::string_view(c->to_plain.data(), c->to_plain.size()));
  // A client that ended after a part of the preface goes to the HTTP server.
  if (kind == FirstBytes::kTooFew && (c->to_plain.size() == 0 || !c->client_ended)) return false;
  const bool http2 = kind == FirstBytes::kHttp2 && !c->http_only;
  Undispatched(c);
  ClearTimer(c);
  if (http2 && !c->client_ended && options.adopt_http2) {
    const int fd = c->client_fd;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
    std::string first = std::move(c->to_plain.bytes);
    SSL* ssl = c->ssl.release();
    c->client_fd = -1;
    Close(c, false);
    options.adopt_http2(fd, ssl, std::move(first));
    return false;
  }
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
    KEEL_LOG_EVENT(Log(), spdlog::level::warn, "TLS connection closed: socketpair failed",
                   {{"error", common::ErrnoText(errno)}});
    Close(c, false);
    return false;
  }
  c->plain_fd = pair[0];
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = c;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->plain_fd, &ev) != 0) {
    close(pair[1]);
    Close(c, false);
    return false;
  }
  options.dispatch(pair[1], http2);
  return true;
}

void TlsTerminator::Loop::Progress(TlsConnection* c) {
  bool moved = true;
  while (moved && !c->dead) {
    moved = ReadClient(c);
    if (c->dead) return;
    if (c->plain_fd < 0) {
      if (!Dispatch(c)) {
        if (!c->dead && c->client_ended) Close(c, false);  // left before a request
        return;
      }
      moved = true;
    }
    moved |= WritePlain(c);
    moved |= ReadPlain(c);
    moved |= WriteClient(c);
    if (c->dead) return;
    if (c->plain_ended && c->to_client.size() == 0) {
      Close(c, true);  // the server side is done and all it sent is out
      return;
    }
    // The client is done: the server side is told so once it has every
    // byte (as a plaintext connection's half-close would). From the first
    // side's end on, the other has kLinger to finish.
    if (((c->client_ended && c->to_plain.size() == 0) || c->plain_gone) && !c->plain_shut) {
      c->plain_shut = true;
      shutdown(c->plain_fd, SHUT_WR);
    }
    if ((c->client_ended || c->plain_gone || c->plain_ended) && !c->timed) {
      SetTimer(c, Clock::now() + kLinger);
    }
  }
}

void TlsTerminator::Loop::Close(TlsConnection* c, bool say_close_notify) {
  if (c->dead) return;
  c->dead = true;
  if (say_close_notify && c->handshake_done && c->ssl != nullptr) {
    ERR_clear_error();
    SSL_shutdown(c->ssl.get());  // best effort: the socket is non-blocking
    ERR_clear_error();
  }
  // Out of the epoll set first: a child between fork and exec may hold a
  // copy of a descriptor, which would keep it registered past close().
  for (int fd : {c->client_fd, c->plain_fd}) {
    if (fd < 0) continue;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
  }
  c->client_fd = c->plain_fd = -1;
  ClearTimer(c);
  Undispatched(c);
  graveyard.push_back(c);
}

void TlsTerminator::Loop::FreeDead() {
  for (TlsConnection* c : graveyard) connections.erase(c);
  graveyard.clear();
}

bool TlsTerminator::Loop::OnWake(Clock::time_point* drain_until) {
  uint64_t count = 0;
  [[maybe_unused]] ssize_t r = read(wake_fd, &count, sizeof(count));
  std::vector<std::pair<int, bool>> fds;
  bool stop = false;
  absl::Duration grace;
  {
    std::lock_guard<std::mutex> lock(mu);
    fds.swap(incoming);
    stop = stopped;
    grace = drain;
  }
  if (!stop) {
    for (auto [fd, http_only] : fds) Accept(fd, http_only);
    return true;
  }
  for (auto [fd, http_only] : fds) close(fd);
  waiting.fetch_sub(fds.size(), std::memory_order_relaxed);
  // Stopping: connections still in their handshake go; the others get
  // `grace` to finish what the servers sent last.
  std::vector<TlsConnection*> undispatched;
  for (auto& [c, owned] : connections) {
    if (!c->dispatched) undispatched.push_back(c);
  }
  for (TlsConnection* c : undispatched) Close(c, false);
  *drain_until = Clock::now() + absl::ToChronoNanoseconds(grace);
  return false;
}

void TlsTerminator::Loop::Run() {
  common::BlockSigpipeInThisThread();  // OpenSSL writes with write(2)
  std::vector<epoll_event> events(256);
  bool stopping = false;
  Clock::time_point drain_until;
  while (true) {
    Clock::time_point now = Clock::now();
    while (!timers.empty() && timers.begin()->first <= now) {
      TlsConnection* c = timers.begin()->second;
      ClearTimer(c);
      Close(c, false);
    }
    FreeDead();
    if (stopping && (connections.empty() || now >= drain_until)) return;
    Clock::time_point next = stopping ? drain_until : Clock::time_point::max();
    if (!timers.empty()) next = std::min(next, timers.begin()->first);
    int timeout_ms = -1;
    if (next != Clock::time_point::max()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(wait, 0, 60000));
    }
    const int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0 && errno != EINTR) {
      KEEL_LOG_EVENT(Log(), spdlog::level::warn, "TLS loop: epoll_wait failed",
                     {{"error", common::ErrnoText(errno)}});
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<TlsConnection*>(events[i].data.ptr);
      if (c == nullptr) {
        if (!OnWake(&drain_until)) stopping = true;
      } else if (!c->dead) {
        Progress(c);
      }
    }
  }
}

TlsTerminator::TlsTerminator(TlsTerminatorOptions options)
    : loop_(std::make_unique<Loop>(std::move(options))) {}

TlsTerminator::~TlsTerminator() { Stop(absl::ZeroDuration()); }

absl::Status TlsTerminator::Start() {
  Loop& loop = *loop_;
  loop.epfd = epoll_create1(EPOLL_CLOEXEC);
  loop.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (loop.epfd < 0 || loop.wake_fd < 0 ||
      epoll_ctl(loop.epfd, EPOLL_CTL_ADD, loop.wake_fd, &ev) != 0) {
    return absl::UnavailableError(absl::StrCat("grpc-proxy: TLS loop: ", common::ErrnoText(errno)));
  }
  {
    std::lock_guard<std::mutex> lock(loop.mu);
    loop.running = true;
  }
  loop.thread = std::thread([&loop] { loop.Run(); });
  return absl::OkStatus();
}

void TlsTerminator::Serve(int fd, bool http_only) {
  Loop& loop = *loop_;
  {
    std::lock_guard<std::mutex> lock(loop.mu);
    if (loop.running && !loop.stopped) {
      loop.incoming.emplace_back(fd, http_only);
      loop.waiting.fetch_add(1, std::memory_order_relaxed);
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(loop.wake_fd, &one, sizeof(one));
      return;
    }
  }
  close(fd);
}

size_t TlsTerminator::Waiting() const { return loop_->waiting.load(std::memory_order_relaxed); }

void TlsTerminator::Stop(absl::Duration grace) {
  Loop& loop = *loop_;
  {
    std::lock_guard<std::mutex> lock(loop.mu);
    if (loop.stopped) return;
    loop.stopped = true;
    loop.drain = grace;
  }
  if (loop.thread.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(loop.wake_fd, &one, sizeof(one));
    loop.thread.join();
  }
  std::vector<TlsConnection*> open;
  for (auto& [c, owned] : loop.connections) open.push_back(c);
  for (TlsConnection* c : open) loop.Close(c, false);
  loop.FreeDead();
  for (auto [fd, http_only] : loop.incoming) close(fd);
  loop.waiting.fetch_sub(loop.incoming.size(), std::memory_order_relaxed);
  loop.incoming.clear();
  if (loop.wake_fd >= 0) close(loop.wake_fd);
  if (loop.epfd >= 0) close(loop.epfd);
  loop.wake_fd = loop.epfd = -1;
}

}  // namespace keel::proxy::grpcproxy
