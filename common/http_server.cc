#include "common/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/tcp_listen.h"

namespace keel::common {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxRequestBytes = 8 * 1024;
constexpr auto kReadTimeout = std::chrono::seconds(5);
constexpr auto kWriteTimeout = std::chrono::seconds(5);
// After the response, unread request bytes (e.g. a POST body) are drained for
// a short while so that close() does not reset the connection before the
// client has read the response.
constexpr auto kDrainTimeout = std::chrono::seconds(1);
// How long the listener is left alone after accept(2) ran out of descriptors.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
constexpr size_t kMaxConnections = 128;

// Go's reason phrases; unknown codes read "status code N" as in net/http.
std::string Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Request Entity Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return absl::StrCat("status code ", status);
  }
}

std::string Serialize(const HttpResponse& response, bool include_body) {
  std::string out =
      absl::StrCat("HTTP/1.1 ", response.status, " ", Reason(response.status),
                   "\r\nContent-Type: ", response.content_type,
                   "\r\nContent-Length: ", response.body.size(), "\r\nConnection: close\r\n\r\n");
  if (include_body) out += response.body;
  return out;
}

HttpResponse PlainResponse(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes a path; false on a malformed escape.
bool DecodePath(const std::string& in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = HexValue(in[i + 1]);
    const int lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

// Parses "METHOD SP target SP HTTP/1.x". False if malformed.
bool ParseRequestLine(const std::string& line, HttpRequest& req) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string::npos || sp1 == 0) return false;
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string::npos || sp2 == sp1 + 1) return false;
  const std::string version = line.substr(sp2 + 1);
  if (version.rfind("HTTP/1.", 0) != 0) return false;
  req.method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  // Absolute form ("http://host/path") as proxies send it.
  for (const char* scheme : {"http://", "https://"}) {
    if (target.rfind(scheme, 0) == 0) {
      const size_t slash = target.find('/', std::strlen(scheme));
      target = slash == std::string::npos ? "/" : target.substr(slash);
    }
  }
  if (target.empty() || target[0] != '/') return false;
  const size_t q = target.find('?');
  std::string raw_path = target.substr(0, q);
  req.query = q == std::string::npos ? "" : target.substr(q + 1);
  return DecodePath(raw_path, req.path);
}

struct Connection {
  enum class State { kReading, kWriting, kDraining };
  int fd = -1;
  State state = State::kReading;
  std::string in;
  std::string out;
  size_t written = 0;
  Clock::time_point deadline;
};


void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

}  // namespace

HttpServer::HttpServer() = default;

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& path, HttpHandler handler) {
  handlers_[path] = std::move(handler);
}

absl::Status HttpServer::Start(const HostPort& listen) {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (thread_.joinable()) return absl::FailedPreconditionError("http server already started");
  }
  absl::StatusOr<int> listened = ListenTcp(listen);
  if (!listened.ok()) return listened.status();
  return Start(*listened);
}

absl::Status HttpServer::Start(int listen_fd) {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (thread_.joinable()) {
    CloseFd(listen_fd);
    return absl::FailedPreconditionError("http server already started");
  }
  port_ = BoundPort(listen_fd);
  if (pipe2(wake_pipe_, O_NONBLOCK | O_CLOEXEC) != 0) {
    const int err = errno;
    CloseFd(listen_fd);
    return absl::UnavailableError(absl::StrCat("http server: pipe: ", ErrnoText(err)));
  }
  listen_fd_ = listen_fd;
  {
    std::lock_guard<std::mutex> handoff_lock(handoff_mu_);
    running_ = true;
    stopping_ = false;
  }
  thread_ = std::thread(&HttpServer::Serve, this);
  return absl::OkStatus();
}

absl::Status HttpServer::Start() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (thread_.joinable()) return absl::FailedPreconditionError("http server already started");
  if (pipe2(wake_pipe_, O_NONBLOCK | O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("http server: pipe: ", ErrnoText(errno)));
  }
  {
    std::lock_guard<std::mutex> handoff_lock(handoff_mu_);
    running_ = true;
    stopping_ = false;
  }
  thread_ = std::thread(&HttpServer::Serve, this);
  return absl::OkStatus();
}

void HttpServer::ServeConnection(int fd) {
  {
    std::lock_guard<std::mutex> lock(handoff_mu_);
    if (running_ && !stopping_) {
      handoff_.push_back(fd);
      const char byte = 'c';
      // A full pipe is already readable: the thread will look at the queue.
      [[maybe_unused]] ssize_t n = write(wake_pipe_[1], &byte, 1);
      return;
    }
  }
  close(fd);
}

std::vector<int> HttpServer::TakeHandoffs() {
  std::lock_guard<std::mutex> lock(handoff_mu_);
  return std::exchange(handoff_, {});
}

void HttpServer::Stop() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> handoff_lock(handoff_mu_);
      stopping_ = true;
      const char byte = 'x';
      // The pipe is non-blocking and only needs to become readable once.
      [[maybe_unused]] ssize_t n = write(wake_pipe_[1], &byte, 1);
    }
    thread_.join();
  }
  {
    std::lock_guard<std::mutex> handoff_lock(handoff_mu_);
    running_ = false;
    for (int fd : handoff_) close(fd);
    handoff_.clear();
  }
  CloseFd(listen_fd_);
  CloseFd(wake_pipe_[0]);
  CloseFd(wake_pipe_[1]);
}

void HttpServer::Serve() {
  std::list<Connection> conns;
  std::vector<pollfd> fds;
  std::vector<Connection*> polled;  // polled[i] is the connection of fds[i + 2]
  char buf[4096];

  // Moves a connection to writing `response`; HEAD gets headers only.
  auto respond = [](Connection& c, const HttpResponse& response, bool include_body) {
    c.out = Serialize(response, include_body);
    c.written = 0;
    c.state = Connection::State::kWriting;
    c.deadline = Clock::now() + kWriteTimeout;
  };

  // Handles the buffered request once its header block is complete.
  auto maybe_dispatch = [&](Connection& c) {
    size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) end = c.in.find("\n\n");
    if (end == std::string::npos || end > kMaxRequestBytes) {
      if (c.in.size() > kMaxRequestBytes) {
        respond(c, PlainResponse(431, "431 Request Header Fields Too Large"), true);
      }
      return;
    }
    std::string line = c.in.substr(0, c.in.find('\n'));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    HttpRequest req;
    if (!ParseRequestLine(line, req)) {
      respond(c, PlainResponse(400, "400 Bad Request"), true);
      return;
    }
    const bool include_body = req.method != "HEAD";
    auto it = handlers_.find(req.path);
    if (it == handlers_.end()) {
      respond(c, PlainResponse(404, "404 page not found\n"), include_body);
      return;
    }
    respond(c, it->second(req), include_body);
  };

  // Writes what it can; on completion half-closes and starts draining.
  // Returns false if the connection must be closed.
  auto flush = [](Connection& c) {
    while (c.written < c.out.size()) {
      const ssize_t n =
          send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
      c.written += static_cast<size_t>(n);
    }
    shutdown(c.fd, SHUT_WR);
    c.state = Connection::State::kDraining;
    c.deadline = Clock::now() + kDrainTimeout;
    return true;
  };

  // Reads what is available. Returns false if the connection must be closed.
  auto read_some = [&](Connection& c) {
    while (true) {
      const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
      if (n == 0) return false;  // EOF: nothing more to answer or drain
      if (c.state == Connection::State::kDraining) continue;
      c.in.append(buf, static_cast<size_t>(n));
      maybe_dispatch(c);
      if (c.state == Connection::State::kWriting) return flush(c);
    }
  };

  Clock::time_point accept_paused_until = Clock::time_point::min();
  while (true) {
    fds.clear();
    polled.clear();
    fds.push_back({wake_pipe_[0], POLLIN, 0});
    const bool paused = Clock::now() < accept_paused_until;
    const bool accepting = conns.size() < kMaxConnections && !paused;
    // Without a listener (Start()), fd -1 makes poll(2) skip this entry.
    fds.push_back({listen_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
    Clock::time_point next_deadline = paused ? accept_paused_until : Clock::time_point::max();
    for (Connection& c : conns) {
      const short events = c.state == Connection::State::kWriting ? POLLOUT : POLLIN;
      fds.push_back({c.fd, events, 0});
      polled.push_back(&c);
      next_deadline = std::min(next_deadline, c.deadline);
    }
    int timeout_ms = -1;
    if (next_deadline != Clock::time_point::max()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next_deadline - Clock::now());
      timeout_ms = static_cast<int>(std::max<int64_t>(0, wait.count()));
    }
    const int ready = poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0 && errno != EINTR) break;
    if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      // Stop() or ServeConnection(): drain the pipe, then look at the flags.
      while (read(wake_pipe_[0], buf, sizeof(buf)) > 0) {
      }
      {
        std::lock_guard<std::mutex> lock(handoff_mu_);
        if (stopping_) break;
      }
      for (int fd : TakeHandoffs()) {
        // Over the limit the newest connection is refused, as the backlog
        // would hold it back; a handed-over one cannot wait there.
        if (conns.size() >= kMaxConnections) {
          close(fd);
          continue;
        }
        const int flags = fcntl(fd, F_GETFL);
        if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        Connection c;
        c.fd = fd;
        c.deadline = Clock::now() + kReadTimeout;
        conns.push_back(std::move(c));
      }
      continue;
    }

    if (ready > 0 && (fds[1].revents & POLLIN) != 0) {
      while (conns.size() < kMaxConnections) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          // Out of descriptors: the listener stays readable, so stop polling
          // it for a moment instead of spinning (EAGAIN and ECONNABORTED
          // need nothing).
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            accept_paused_until = Clock::now() + kAcceptPause;
          }
          break;
        }
        Connection c;
        c.fd = fd;
        c.deadline = Clock::now() + kReadTimeout;
        conns.push_back(std::move(c));
      }
    }

    std::vector<Connection*> to_close;
    if (ready > 0) {
      for (size_t i = 0; i < polled.size(); ++i) {
        const short revents = fds[i + 2].revents;
        if (revents == 0) continue;
        Connection& c = *polled[i];
        bool keep = true;
        if (c.state == Connection::State::kWriting) {
          keep = (revents & (POLLERR | POLLHUP)) == 0 && flush(c);
        } else {
          keep = read_some(c);
        }
        if (!keep) to_close.push_back(&c);
      }
    }
    const Clock::time_point now = Clock::now();
    for (Connection& c : conns) {
      if (now >= c.deadline && std::find(to_close.begin(), to_close.end(), &c) == to_close.end()) {
        to_close.push_back(&c);
      }
    }
    for (Connection* c : to_close) {
      CloseFd(c->fd);
    }
    conns.remove_if([](const Connection& c) { return c.fd < 0; });
  }
  for (Connection& c : conns) CloseFd(c.fd);
}

namespace {

constexpr size_t kMaxFetchBytes = 64 * 1024 * 1024;

int MillisUntil(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Waits for `events` on `fd` until `deadline`: OK, DeadlineExceeded or
// Unavailable.
absl::Status WaitFd(int fd, short events, Clock::time_point deadline, const std::string& what) {
  while (true) {
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, MillisUntil(deadline));
    if (n > 0) return absl::OkStatus();
    if (n == 0) return absl::DeadlineExceededError(absl::StrCat(what, ": i/o timeout"));
    if (errno != EINTR) return absl::UnavailableError(absl::StrCat(what, ": ", ErrnoText(errno)));
  }
}

// Connects to `server` before `deadline`; the returned fd is non-blocking.
absl::StatusOr<int> Dial(const HostPort& server, Clock::time_point deadline) {
  const std::string what = absl::StrCat("dial tcp ", server.ToString());
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  const std::string port = std::to_string(server.port);
  const int gai = getaddrinfo(server.host.c_str(), port.c_str(), &hints, &result);
  if (gai != 0) {
    return absl::UnavailableError(
        absl::StrCat(what, ": lookup ", server.host, ": ", gai_strerror(gai)));
  }
  absl::Status error = absl::UnavailableError(absl::StrCat(what, ": no address"));
  int fd = -1;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = absl::UnavailableError(absl::StrCat(what, ": socket: ", ErrnoText(errno)));
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      error = absl::UnavailableError(absl::StrCat(what, ": connect: ", ErrnoText(errno)));
      CloseFd(fd);
      continue;
    }
    error = WaitFd(fd, POLLOUT, deadline, what);
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (error.ok() && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) == 0 && so_error != 0) {
      error = absl::UnavailableError(absl::StrCat(what, ": connect: ", ErrnoText(so_error)));
    }
    if (error.ok()) break;
    CloseFd(fd);
    if (absl::IsDeadlineExceeded(error)) break;
  }
  freeaddrinfo(result);
  if (fd < 0) return error;
  return fd;
}

// Decodes a chunked body (RFC 9112 7.1; extensions and trailers ignored).
absl::StatusOr<std::string> DecodeChunked(const std::string& in) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return absl::UnavailableError("truncated chunked body");
    const std::string size_text = in.substr(pos, in.find_first_of(";\r", pos) - pos);
    size_t size = 0;
    if (size_text.empty()) return absl::UnavailableError("malformed chunk size");
    for (char c : size_text) {
      const int v = HexValue(c);
      if (v < 0 || size > (kMaxFetchBytes >> 4)) {
        return absl::UnavailableError("malformed chunk size");
      }
      size = size * 16 + static_cast<size_t>(v);
    }
    pos = eol + 2;
    if (size == 0) return out;
    if (in.size() < pos + size) return absl::UnavailableError("truncated chunked body");
    out.append(in, pos, size);
    pos += size + 2;  // the chunk's CRLF
  }
}

}  // namespace

absl::StatusOr<HttpResponse> HttpGet(const HostPort& server, const std::string& path,
                                     absl::Duration timeout) {
  const Clock::time_point deadline =
      Clock::now() + std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout));
  absl::StatusOr<int> dialed = Dial(server, deadline);
  if (!dialed.ok()) return dialed.status();
  int fd = *dialed;
  const std::string what = absl::StrCat("GET http://", server.ToString(), path);
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", server.ToString(),
                                           "\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    absl::Status s = absl::OkStatus();
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s = WaitFd(fd, POLLOUT, deadline, what);
    } else if (errno != EINTR) {
      s = absl::UnavailableError(absl::StrCat(what, ": write: ", ErrnoText(errno)));
    }
    if (!s.ok()) {
      CloseFd(fd);
      return s;
    }
  }
  std::string in;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n > 0) {
      in.append(buf, static_cast<size_t>(n));
      if (in.size() > kMaxFetchBytes) {
        CloseFd(fd);
        return absl::ResourceExhaustedError(absl::StrCat(what, ": response too large"));
      }
      continue;
    }
    absl::Status s = absl::OkStatus();
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s = WaitFd(fd, POLLIN, deadline, what);
    } else if (errno != EINTR) {
      s = absl::UnavailableError(absl::StrCat(what, ": read: ", ErrnoText(errno)));
    }
    if (!s.ok()) {
      CloseFd(fd);
      return s;
    }
  }
  CloseFd(fd);

  const size_t header_end = in.find("\r\n\r\n");
  if (header_end == std::string::npos || in.rfind("HTTP/1.", 0) != 0 || in.size() < 12) {
    return absl::UnavailableError(absl::StrCat(what, ": malformed HTTP response"));
  }
  HttpResponse response;
  response.content_type.clear();
  const size_t sp = in.find(' ');
  if (sp == std::string::npos || sp + 4 > header_end) {
    return absl::UnavailableError(absl::StrCat(what, ": malformed HTTP response"));
  }
  response.status = 0;
  for (size_t i = sp + 1; i < sp + 4; ++i) {
    if (in[i] < '0' || in[i] > '9') {
      return absl::UnavailableError(absl::StrCat(what, ": malformed HTTP status"));
    }
    response.status = response.status * 10 + (in[i] - '0');
  }
  bool chunked = false;
  size_t line_start = in.find("\r\n") + 2;
  while (line_start < header_end) {
    const size_t line_end = in.find("\r\n", line_start);
    const std::string line = in.substr(line_start, line_end - line_start);
    line_start = line_end + 2;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    value.erase(value.find_last_not_of(" \t") + 1);
    if (name == "content-type") response.content_type = value;
    if (name == "transfer-encoding" && value.find("chunked") != std::string::npos) chunked = true;
  }
  std::string body = in.substr(header_end + 4);
  if (chunked) {
    absl::StatusOr<std::string> decoded = DecodeChunked(body);
    if (!decoded.ok()) {
      return absl::UnavailableError(absl::StrCat(what, ": ", decoded.status().message()));
    }
    body = std::move(*decoded);
  }
  response.body = std::move(body);
  return response;
}

}  // namespace keel::common
