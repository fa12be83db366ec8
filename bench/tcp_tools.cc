#include "bench/tcp_tools.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/report.h"
#include "bench/stats.h"
#include "common/cpus.h"
#include "common/status.h"

namespace keel::bench {

namespace {

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

absl::StatusOr<sockaddr_storage> Resolve(const common::HostPort& hp, socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(hp.port);
  if (int rc = ::getaddrinfo(hp.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve ", hp.ToString(), ": ", gai_strerror(rc)));
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return ss;
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

absl::StatusOr<Fd> Listen(const sockaddr_storage& addr, socklen_t len) {
  Fd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return common::ErrnoStatus(errno, "socket");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    return common::ErrnoStatus(errno, "bind");
  }
  if (::listen(fd.get(), 1024) != 0) return common::ErrnoStatus(errno, "listen");
  return fd;
}

// One echo connection: bytes not yet written back wait in `pending`, and the
// connection stops reading until they are flushed (flow control).
struct EchoConn {
  Fd fd;
  std::string pending;
};

void EchoLoop(int listen_fd) {
  Fd ep(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd;
  ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, listen_fd, &ev);
  std::unordered_map<int, std::unique_ptr<EchoConn>> conns;
  std::vector<char> buf(256 * 1024);
  epoll_event events[256];
  auto close_conn = [&](int fd) {
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    conns.erase(fd);
  };
  for (;;) {
    const int n = ::epoll_wait(ep.get(), events, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("epoll_wait");
      return;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd) {
        for (;;) {
          const int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          SetNoDelay(c);
          auto conn = std::make_unique<EchoConn>();
          conn->fd = Fd(c);
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = c;
          ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, c, &cev);
          conns[c] = std::move(conn);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      EchoConn& conn = *it->second;
      bool closed = false;
      if (!conn.pending.empty()) {
        const ssize_t w = ::send(fd, conn.pending.data(), conn.pending.size(), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
          close_conn(fd);
          continue;
        }
        if (w > 0) conn.pending.erase(0, static_cast<size_t>(w));
        if (conn.pending.empty()) {
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = fd;
          ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &cev);
        }
        continue;
      }
      // Drain what is readable, echoing each chunk straight back.
      for (;;) {
        const ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
        if (r == 0) {
          closed = true;
          break;
        }
        if (r < 0) {
          if (errno != EAGAIN && errno != EINTR) closed = true;
          break;
        }
        ssize_t off = 0;
        while (off < r) {
          const ssize_t w =
              ::send(fd, buf.data() + off, static_cast<size_t>(r - off), MSG_NOSIGNAL);
          if (w < 0) break;
          off += w;
        }
        if (off < r) {
          if (errno != EAGAIN && errno != EINTR) {
            closed = true;
            break;
          }
          conn.pending.assign(buf.data() + off, static_cast<size_t>(r - off));
          epoll_event cev{};
          cev.events = EPOLLOUT;
          cev.data.fd = fd;
          ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &cev);
          break;
        }
        if (static_cast<size_t>(r) < buf.size()) break;
      }
      if (closed) close_conn(fd);
    }
  }
}

// One ping-pong connection of tcp-rtt.
struct RttConn {
  Fd fd;
  size_t received = 0;
  absl::Time sent_at;
};

struct RttThreadResult {
  std::vector<double> latencies;
  std::string error;
};

void RttLoop(std::vector<RttConn*> conns, int size, absl::Time deadline, RttThreadResult* result) {
  Fd ep(::epoll_create1(EPOLL_CLOEXEC));
  const std::string payload(static_cast<size_t>(size), 'p');
  std::vector<char> buf(static_cast<size_t>(size) + 65536);
  auto send_ping = [&](RttConn* c) -> bool {
    c->received = 0;
    c->sent_at = absl::Now();
    size_t off = 0;
    while (off < payload.size()) {
      const ssize_t w =
          ::send(c->fd.get(), payload.data() + off, payload.size() - off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          // The payload is far below any socket buffer; a full buffer means
          // the peer stopped reading.
          result->error = "send buffer full: peer is not reading";
          return false;
        }
        result->error = absl::StrCat("send: ", std::strerror(errno));
        return false;
      }
      off += static_cast<size_t>(w);
    }
    return true;
  };
  for (RttConn* c : conns) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, c->fd.get(), &ev);
    if (!send_ping(c)) return;
  }
  result->latencies.reserve(1 << 20);
  epoll_event events[256];
  for (;;) {
    const absl::Time now = absl::Now();
    if (now >= deadline) return;
    const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - now)) + 1;
    const int n = ::epoll_wait(ep.get(), events, 256, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      result->error = absl::StrCat("epoll_wait: ", std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<RttConn*>(events[i].data.ptr);
      const ssize_t r = ::recv(c->fd.get(), buf.data(), buf.size(), 0);
      if (r == 0) {
        result->error = "connection closed by peer";
        return;
      }
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        result->error = absl::StrCat("recv: ", std::strerror(errno));
        return;
      }
      c->received += static_cast<size_t>(r);
      if (c->received < static_cast<size_t>(size)) continue;
      if (c->received > static_cast<size_t>(size)) {
        result->error = "received more bytes than sent";
        return;
      }
      const absl::Time done = absl::Now();
      result->latencies.push_back(absl::ToDoubleSeconds(done - c->sent_at));
      if (done >= deadline) return;
      if (!send_ping(c)) return;
    }
  }
}

}  // namespace

absl::Status RunTcpEchoServer(const EchoServerOptions& options) {
  socklen_t len = 0;
  absl::StatusOr<sockaddr_storage> addr = Resolve(options.listen, &len);
  if (!addr.ok()) return addr.status();
  int threads = options.threads;
  if (threads <= 0) threads = common::UsableCpus();
  std::vector<Fd> listeners;
  absl::StatusOr<Fd> first = Listen(*addr, len);
  if (!first.ok()) {
    return absl::Status(first.status().code(), absl::StrCat("listen on ", options.listen.ToString(),
                                                            ": ", first.status().message()));
  }
  // With port 0 the other listeners must share the port the first one got.
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(first->get(), reinterpret_cast<sockaddr*>(&bound), &bound_len);
  listeners.push_back(std::move(*first));
  for (int i = 1; i < threads; ++i) {
    absl::StatusOr<Fd> l = Listen(bound, bound_len);
    if (!l.ok()) return l.status();
    listeners.push_back(std::move(*l));
  }
  int port = 0;
  if (bound.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  } else {
    port = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  }
  common::HostPort shown = options.listen;
  shown.port = port;
  std::printf("listening on %s\n", shown.ToString().c_str());
  std::fflush(stdout);
  std::vector<std::thread> workers;
  for (size_t i = 1; i < listeners.size(); ++i) {
    workers.emplace_back(EchoLoop, listeners[i].get());
  }
  EchoLoop(listeners[0].get());
  for (std::thread& t : workers) t.join();
  return absl::InternalError("echo loop stopped");
}

absl::Status RunTcpRtt(const TcpRttOptions& options) {
  if (options.conns < 1 || options.size < 1 || options.threads < 1) {
    return absl::InvalidArgumentError("--conns, --size and --threads must be at least 1");
  }
  socklen_t len = 0;
  absl::StatusOr<sockaddr_storage> addr = Resolve(options.target, &len);
  if (!addr.ok()) return addr.status();
  std::vector<std::unique_ptr<RttConn>> conns;
  for (int i = 0; i < options.conns; ++i) {
    Fd fd(::socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return common::ErrnoStatus(errno, "socket");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), len) != 0) {
      return common::ErrnoStatus(errno, absl::StrCat("connect to ", options.target.ToString()));
    }
    SetNoDelay(fd.get());
    auto c = std::make_unique<RttConn>();
    c->fd = std::move(fd);
    conns.push_back(std::move(c));
  }
  const int threads = std::min(options.threads, options.conns);
  std::vector<std::vector<RttConn*>> shares(static_cast<size_t>(threads));
  for (size_t i = 0; i < conns.size(); ++i) shares[i % shares.size()].push_back(conns[i].get());
  std::vector<RttThreadResult> results(static_cast<size_t>(threads));
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + options.duration;
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back(RttLoop, shares[static_cast<size_t>(i)], options.size, deadline,
                         &results[static_cast<size_t>(i)]);
  }
  for (std::thread& t : workers) t.join();
  const absl::Duration elapsed = absl::Now() - start;
  std::vector<double> all;
  std::map<std::string, uint64_t> errors;
  for (RttThreadResult& r : results) {
    all.insert(all.end(), r.latencies.begin(), r.latencies.end());
    if (!r.error.empty()) ++errors[r.error];
  }
  Summary s = Summarize(std::move(all), elapsed, errors);
  double p50 = 0, p99 = 0;
  for (const Percentile& p : s.percentiles) {
    if (p.percent == 50) p50 = p.secs;
    if (p.percent == 99) p99 = p.secs;
  }
  if (options.json) {
    nlohmann::json j = ToJson(s);
    j["round_trips"] = s.requests;
    j["round_trips_per_sec"] = s.rps;
    j["p50_us"] = p50 * 1e6;
    j["p99_us"] = p99 * 1e6;
    j["conns"] = options.conns;
    j["size"] = options.size;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s", FormatText(s).c_str());
    std::printf("\nRound trips/sec:\t%.1f\n  p50:\t%.1f us\n  p99:\t%.1f us\n", s.rps, p50 * 1e6,
                p99 * 1e6);
  }
  std::fflush(stdout);
  if (!errors.empty()) {
    return absl::InternalError(absl::StrCat("tcp-rtt: ", errors.begin()->first));
  }
  return absl::OkStatus();
}

}  // namespace keel::bench
