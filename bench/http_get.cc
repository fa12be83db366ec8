#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/commands.h"
#include "common/url.h"

namespace keel::bench {

absl::StatusOr<std::string> HttpGet(const std::string& url, absl::Duration timeout) {
  absl::StatusOr<common::Url> u = common::ParseUrl(url);
  if (!u.ok()) return u.status();
  if (u->scheme != "http") {
    return absl::InvalidArgumentError(absl::StrCat("only http:// URLs are supported: ", url));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(u->host_port.port);
  if (::getaddrinfo(u->host_port.host.c_str(), port.c_str(), &hints, &res) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", u->host_port.ToString()));
  }
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(res);
    return absl::InternalError("socket failed");
  }
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(absl::ToInt64Seconds(timeout));
  tv.tv_usec = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  const int rc = ::connect(fd, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  if (rc != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect to ", url, ": ", std::strerror(err)));
  }
  const std::string path = u->path.empty() ? "/" : u->path;
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", u->host_port.ToString(), "\r\n\r\n");
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("send to ", url, " failed"));
  }
  std::string resp;
  char buf[65536];
  for (;;) {
    const ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
    if (r > 0) {
      resp.append(buf, static_cast<size_t>(r));
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      return absl::UnavailableError(absl::StrCat("read from ", url, ": ", std::strerror(err)));
    }
    break;
  }
  ::close(fd);
  const size_t header_end = resp.find("\r\n\r\n");
  if (header_end == std::string::npos) return absl::InternalError("malformed HTTP response");
  const size_t line_end = resp.find("\r\n");
  const std::string status_line = resp.substr(0, line_end);
  if (!absl::StrContains(status_line, " 200")) {
    return absl::InternalError(absl::StrCat(url, ": ", status_line));
  }
  return resp.substr(header_end + 4);
}

}  // namespace keel::bench
