#include "proxy/tcp/probe.h"

#include <errno.h>
#include <sys/socket.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace keel::proxy::tcp {
namespace {

// A reply to GET /health is tiny; anything bigger is not etcd.
constexpr size_t kMaxResponse = 64 << 10;

}  // namespace

Probe::Probe(event_base* base, std::vector<SockAddr> addrs, std::string host_header, Kind kind,
             absl::Duration timeout, Done done)
    : base_(base),
      addrs_(std::move(addrs)),
      host_header_(std::move(host_header)),
      kind_(kind),
      timeout_(timeout),
      done_(std::move(done)) {
  ConnectNext();
}

Probe::~Probe() { event_.reset(); }

void Probe::Callback(evutil_socket_t, short what, void* arg) {
  static_cast<Probe*>(arg)->OnEvent(what);
}

void Probe::ConnectNext() {
  while (next_addr_ < addrs_.size()) {
    const SockAddr& addr = addrs_[next_addr_++];
    absl::StatusOr<PendingConnect> pc = StartConnect(addr);
    if (!pc.ok()) {
      last_error_ = pc.status();
      continue;
    }
    fd_ = std::move(pc->fd);
    phase_ = Phase::kConnecting;
    event_.reset(event_new(base_, fd_.get(), EV_WRITE, &Probe::Callback, this));
    const timeval tv = absl::ToTimeval(timeout_);
    event_add(event_.get(), &tv);
    return;
  }
  // Every address failed at once. Report from a later loop turn, so the
  // owner never sees `done` run inside the constructor.
  if (last_error_.ok()) {
    last_error_ = absl::UnavailableError("dial tcp " + host_header_ + ": host did not resolve");
  }
  failed_ = true;
  fd_.Reset();
  event_.reset(event_new(base_, -1, 0, &Probe::Callback, this));
  const timeval zero{0, 0};
  event_add(event_.get(), &zero);
}

void Probe::OnEvent(short what) {
  if (failed_) {
    Finish(last_error_);
    return;
  }
  const std::string target = addrs_[next_addr_ - 1].ToString();
  if (what & EV_TIMEOUT) {
    if (phase_ == Phase::kConnecting) {
      last_error_ = absl::DeadlineExceededError(absl::StrCat("dial tcp ", target, ": i/o timeout"));
      fd_.Reset();
      event_.reset();
      ConnectNext();
      return;
    }
    Finish(
        absl::DeadlineExceededError(absl::StrCat("GET http://", host_header_, "/health: timeout")));
    return;
  }
  switch (phase_) {
    case Phase::kConnecting: {
      absl::Status s = FinishConnect(fd_.get());
      if (!s.ok()) {
        last_error_ = absl::Status(s.code(), absl::StrCat("dial tcp ", target, ": ", s.message()));
        fd_.Reset();
        event_.reset();
        ConnectNext();
        return;
      }
      OnConnected();
      return;
    }
    case Phase::kSending: {
      const ssize_t w = ::send(fd_.get(), request_.data() + request_sent_,
                               request_.size() - request_sent_, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        Finish(GoErrnoStatus(errno, "GET http://" + host_header_ + "/health: write"));
        return;
      }
      if (w > 0) request_sent_ += static_cast<size_t>(w);
      if (request_sent_ == request_.size()) {
        phase_ = Phase::kReading;
        event_.reset(event_new(base_, fd_.get(), EV_READ | EV_PERSIST, &Probe::Callback, this));
        const timeval tv = absl::ToTimeval(timeout_);
        event_add(event_.get(), &tv);
      }
      return;
    }
    case Phase::kReading:
      OnReadable();
      return;
  }
}

void Probe::OnConnected() {
  if (kind_ == Kind::kTcpConnect) {
    Finish(absl::OkStatus());
    return;
  }
  request_ = absl::StrCat("GET /health HTTP/1.1\r\nHost: ", host_header_,
                          "\r\nUser-Agent: keel-gateway\r\nAccept: application/json\r\n"
                          "Connection: close\r\n\r\n");
  phase_ = Phase::kSending;
  event_.reset(event_new(base_, fd_.get(), EV_WRITE | EV_PERSIST, &Probe::Callback, this));
  const timeval tv = absl::ToTimeval(timeout_);
  event_add(event_.get(), &tv);
}

void Probe::OnReadable() {
  char buf[4096];
  while (true) {
    const ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      response_.append(buf, static_cast<size_t>(n));
      if (response_.size() > kMaxResponse) {
        Finish(absl::UnavailableError("GET /health: response too large"));
        return;
      }
      continue;
    }
    if (n == 0) {
      Finish(CheckHealthResponse(response_));
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
    Finish(GoErrnoStatus(errno, "GET http://" + host_header_ + "/health: read"));
    return;
  }
  // Complete before EOF when Content-Length says so.
  const size_t header_end = response_.find("\r\n\r\n");
  if (header_end == std::string::npos) return;
  const std::string headers = response_.substr(0, header_end);
  size_t pos = 0;
  while ((pos = headers.find("\r\n", pos)) != std::string::npos) {
    pos += 2;
    const size_t colon = headers.find(':', pos);
    if (colon == std::string::npos) break;
    if (absl::EqualsIgnoreCase(headers.substr(pos, colon - pos), "content-length")) {
      const size_t eol = headers.find("\r\n", colon);
      size_t length = 0;
      if (absl::SimpleAtoi(headers.substr(colon + 1, eol == std::string::npos ? std::string::npos
                                                                              : eol - colon - 1),
                           &length) &&
          response_.size() >= header_end + 4 + length) {
        Finish(CheckHealthResponse(response_));
      }
      return;
    }
  }
}

void Probe::Finish(absl::Status status) {
  event_.reset();
  fd_.Reset();
  Done done = std::move(done_);
  std::move(done)(std::move(status));  // may destroy *this: touch nothing after
}

absl::Status CheckHealthResponse(const std::string& response) {
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos || !absl::StartsWith(response, "HTTP/1.")) {
    return absl::UnavailableError("GET /health: malformed response");
  }
  const size_t space = response.find(' ');
  const std::string code = response.substr(space + 1, 3);
  const std::string body = response.substr(header_end + 4);
  nlohmann::json json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  const bool healthy = json.is_object() && json.contains("health") && json["health"].is_string() &&
                       json["health"] == "true";
  if (code == "200" && healthy) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("GET /health: status ", code, ", body ", body));
}

}  // namespace keel::proxy::tcp
