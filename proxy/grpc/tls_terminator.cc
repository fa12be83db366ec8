#include "proxy/grpc/tls_terminator.h"

#include <openssl/err.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/tcp_listen.h"

namespace keel::proxy::grpcproxy {
namespace {

using Clock = std::chrono::steady_clock;

// As the plaintext listener sniffs: "PRI " starts the HTTP/2 preface.
constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kSniffBytes = 4;
// Bytes one direction may have waiting for its reader before the writer is
// no longer read.
constexpr size_t kMaxBuffered = 1 << 20;
// One read's worth (a TLS record carries at most 16 KiB).
constexpr size_t kChunk = 64 * 1024;

spdlog::logger& Log() { return *common::Logger("grpc-proxy"); }

std::string TakeSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "connection closed";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

// Bytes waiting for one side, written from `offset` on.
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
    }
  }
};

}  // namespace

// One client connection. Its two descriptors are registered edge-triggered
// for both directions, and any event on either runs Progress(), which moves
// bytes every way it can until each step is blocked on the kernel (a new
// edge will come) or on a full buffer (freed by a step of the same loop).
struct TlsConnection {
  int client_fd = -1;
  SSL* ssl = nullptr;
  int plain_fd = -1;  // our end of the socketpair, once dispatched
  Clock::time_point deadline;
  bool handshake_done = false;
  Pending to_plain;           // decrypted, for the server side
  Pending to_client;          // the server's, to encrypt
  bool client_ended = false;  // the client closed (close_notify or EOF)
  bool plain_ended = false;   // the server side closed
  bool dead = false;          // closed; freed after the current batch
};

struct TlsTerminator::Loop {
  explicit Loop(TlsTerminatorOptions o) : options(std::move(o)) {}

  TlsTerminatorOptions options;
  int epfd = -1;
  int wake_fd = -1;
  std::thread thread;

  std::mutex mu;
  std::vector<int> incoming;  // guarded by mu
  bool running = false;       // guarded by mu
  bool stopped = false;       // guarded by mu

  // Loop thread only (and Stop() once the thread is gone).
  std::unordered_set<TlsConnection*> connections;
  std::unordered_set<TlsConnection*> sniffing;  // not dispatched yet: deadline applies
  std::vector<TlsConnection*> graveyard;

  void Run();
  void Accept(int fd);
  void Progress(TlsConnection* c);
  // One step each; true if it moved anything.
  bool ReadClient(TlsConnection* c);
  bool WritePlain(TlsConnection* c);
  bool ReadPlain(TlsConnection* c);
  bool WriteClient(TlsConnection* c);
  bool Dispatch(TlsConnection* c);
  void Close(TlsConnection* c, bool say_close_notify);
  void Free(TlsConnection* c);
};

void TlsTerminator::Loop::Accept(int fd) {
  auto* c = new TlsConnection;
  c->client_fd = fd;
  c->ssl = SSL_new(options.context.get());
  c->deadline = Clock::now() + absl::ToChronoNanoseconds(options.first_bytes_timeout);
  connections.insert(c);
  sniffing.insert(c);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = c;
  if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1 ||
      epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    Close(c, false);
    return;
  }
  SSL_set_accept_state(c->ssl);
  Progress(c);
}

bool TlsTerminator::Loop::ReadClient(TlsConnection* c) {
  if (c->client_ended || c->to_plain.size() >= kMaxBuffered) return false;
  if (!c->handshake_done) {
    ERR_clear_error();
    const int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      const int err = SSL_get_error(c->ssl, r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return false;
      KEEL_LOG_EVENT(Log(), spdlog::level::debug, "TLS handshake failed",
                     {{"error", TakeSslError()}});
      Close(c, false);
      return false;
    }
    c->handshake_done = true;
  }
  bool moved = false;
  char buf[kChunk];
  while (c->to_plain.size() < kMaxBuffered) {
    ERR_clear_error();
    const int n = SSL_read(c->ssl, buf, sizeof(buf));
    if (n > 0) {
      c->to_plain.bytes.append(buf, static_cast<size_t>(n));
      moved = true;
      continue;
    }
    const int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    // close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a plain EOF: what the
    // client sent is still delivered. Anything else is a broken connection.
    if (err == SSL_ERROR_ZERO_RETURN) {
      c->client_ended = true;
      moved = true;
    } else {
      Close(c, false);
    }
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::WritePlain(TlsConnection* c) {
  bool moved = false;
  while (c->plain_fd >= 0 && c->to_plain.size() > 0) {
    const ssize_t n = send(c->plain_fd, c->to_plain.data(), c->to_plain.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c->to_plain.Consume(static_cast<size_t>(n));
      moved = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    Close(c, false);  // the server side is gone
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
      // A short read emptied the socket; bytes that come later bring a new
      // edge, so the read that would say EAGAIN is saved.
      if (static_cast<size_t>(n) < sizeof(buf)) break;
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
    const int n = SSL_write(c->ssl, c->to_client.data(),
                            static_cast<int>(std::min<size_t>(c->to_client.size(), INT32_MAX)));
    if (n > 0) {
      c->to_client.Consume(static_cast<size_t>(n));
      moved = true;
      continue;
    }
    const int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    Close(c, false);  // the client is gone
    break;
  }
  return moved;
}

bool TlsTerminator::Loop::Dispatch(TlsConnection* c) {
  const size_t got = std::min(c->to_plain.size(), kSniffBytes);
  const bool preface_so_far = kHttp2Preface.compare(0, got, c->to_plain.data(), got) == 0;
  if (got == 0 || (preface_so_far && got < kSniffBytes && !c->client_ended)) return false;
  const bool http2 = preface_so_far && got == kSniffBytes;
  if (http2 && !c->client_ended && options.adopt_http2) {
    const int fd = c->client_fd;
    SSL* ssl = c->ssl;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
    std::string first = std::move(c->to_plain.bytes);
    c->client_fd = -1;
    c->ssl = nullptr;
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
  sniffing.erase(c);
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
    if (c->dead) return;
    moved |= ReadPlain(c);
    moved |= WriteClient(c);
    if (c->dead) return;
    // One side ended: once what it sent has been delivered, close both.
    if (c->client_ended && c->to_plain.size() == 0) {
      Close(c, false);
      return;
    }
    if (c->plain_ended && c->to_client.size() == 0) {
      Close(c, true);
      return;
    }
  }
}

void TlsTerminator::Loop::Close(TlsConnection* c, bool say_close_notify) {
  if (c->dead) return;
  c->dead = true;
  if (say_close_notify && c->handshake_done) {
    ERR_clear_error();
    SSL_shutdown(c->ssl);  // best effort: the socket is non-blocking
  }
  if (c->client_fd >= 0) close(c->client_fd);  // leaves the epoll set too
  if (c->plain_fd >= 0) close(c->plain_fd);
  c->client_fd = c->plain_fd = -1;
  sniffing.erase(c);
  graveyard.push_back(c);
}

void TlsTerminator::Loop::Free(TlsConnection* c) {
  if (c->ssl != nullptr) SSL_free(c->ssl);
  connections.erase(c);
  delete c;
}

void TlsTerminator::Loop::Run() {
  // OpenSSL writes with write(2): a client that went away must not kill the
  // process with a (thread-directed) SIGPIPE.
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
  std::vector<epoll_event> events(256);
  while (true) {
    int timeout_ms = -1;
    const Clock::time_point now = Clock::now();
    std::vector<TlsConnection*> expired;
    for (TlsConnection* c : sniffing) {
      if (c->deadline <= now) {
        expired.push_back(c);
        continue;
      }
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(c->deadline - now).count();
      timeout_ms =
          timeout_ms < 0 ? static_cast<int>(wait) : std::min(timeout_ms, static_cast<int>(wait));
    }
    for (TlsConnection* c : expired) Close(c, false);
    for (TlsConnection* c : graveyard) Free(c);
    graveyard.clear();
    const int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0 && errno != EINTR) {
      KEEL_LOG_EVENT(Log(), spdlog::level::warn, "TLS loop: epoll_wait failed",
                     {{"error", common::ErrnoText(errno)}});
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<TlsConnection*>(events[i].data.ptr);
      if (c != nullptr) {
        if (!c->dead) Progress(c);
        continue;
      }
      uint64_t count = 0;
      [[maybe_unused]] ssize_t r = read(wake_fd, &count, sizeof(count));
      std::vector<int> fds;
      bool stop = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        fds.swap(incoming);
        stop = stopped;
      }
      if (stop) {
        for (int fd : fds) close(fd);
        return;
      }
      for (int fd : fds) Accept(fd);
    }
  }
}

TlsTerminator::TlsTerminator(TlsTerminatorOptions options)
    : loop_(std::make_unique<Loop>(std::move(options))) {}

TlsTerminator::~TlsTerminator() { Stop(); }

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

void TlsTerminator::Serve(int fd) {
  Loop& loop = *loop_;
  {
    std::lock_guard<std::mutex> lock(loop.mu);
    if (loop.running && !loop.stopped) {
      loop.incoming.push_back(fd);
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(loop.wake_fd, &one, sizeof(one));
      return;
    }
  }
  close(fd);
}

void TlsTerminator::Stop() {
  Loop& loop = *loop_;
  {
    std::lock_guard<std::mutex> lock(loop.mu);
    if (loop.stopped) return;
    loop.stopped = true;
  }
  if (loop.thread.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(loop.wake_fd, &one, sizeof(one));
    loop.thread.join();
  }
  std::vector<TlsConnection*> open(loop.connections.begin(), loop.connections.end());
  for (TlsConnection* c : open) {
    loop.Close(c, false);
  }
  for (TlsConnection* c : loop.graveyard) loop.Free(c);
  loop.graveyard.clear();
  for (int fd : loop.incoming) close(fd);
  loop.incoming.clear();
  if (loop.wake_fd >= 0) close(loop.wake_fd);
  if (loop.epfd >= 0) close(loop.epfd);
  loop.wake_fd = loop.epfd = -1;
}

}  // namespace keel::proxy::grpcproxy
