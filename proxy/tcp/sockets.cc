#include "proxy/tcp/sockets.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace keel::proxy::tcp {
namespace {

struct AddrInfoFree {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoFree>;

}  // namespace

absl::Status GoErrnoStatus(int err, std::string_view what) {
  const absl::Status status = common::ErrnoStatus(err, what);
  std::string text = std::strerror(err);
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return absl::Status(status.code(), absl::StrCat(std::string(what), ": ", text));
}

std::string SockAddr::ToString() const {
  char ip[INET6_ADDRSTRLEN] = {};
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    return absl::StrCat(ip, ":", ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
  inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
  return absl::StrCat("[", ip, "]:", ntohs(in6->sin6_port));
}

absl::StatusOr<std::vector<SockAddr>> ResolveHostPort(const common::HostPort& hp) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  const std::string port = std::to_string(hp.port);
  addrinfo* raw = nullptr;
  int rc = getaddrinfo(hp.host.c_str(), port.c_str(), &hints, &raw);
  AddrInfoPtr list(raw);
  if (rc != 0 || raw == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("failed to resolve endpoint host \"", hp.host, "\": ", gai_strerror(rc)));
  }
  std::vector<SockAddr> out;
  for (const addrinfo* ai = raw; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    SockAddr addr;
    std::memcpy(&addr.storage, ai->ai_addr, ai->ai_addrlen);
    addr.len = ai->ai_addrlen;
    bool duplicate = false;
    for (const SockAddr& seen : out) {
      duplicate |= seen.len == addr.len && std::memcmp(&seen.storage, &addr.storage, addr.len) == 0;
    }
    if (!duplicate) out.push_back(addr);
  }
  if (out.empty()) {
    return absl::NotFoundError(absl::StrCat("failed to resolve endpoint host \"", hp.host, "\""));
  }
  return out;
}

void SetStreamOptions(int fd) {
  const int one = 1;
  const int idle = 15, interval = 15, count = 9;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

absl::StatusOr<PendingConnect> StartConnect(const SockAddr& addr) {
  PendingConnect pc;
  pc.fd = UniqueFd(
      ::socket(addr.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!pc.fd.valid()) {
    return absl::ResourceExhaustedError(GoErrnoStatus(errno, "socket").message());
  }
  SetStreamOptions(pc.fd.get());
  if (::connect(pc.fd.get(), addr.get(), addr.len) == 0) {
    pc.connected = true;
    return pc;
  }
  if (errno != EINPROGRESS) {
    const int err = errno;
    absl::Status s = GoErrnoStatus(err, absl::StrCat("dial tcp ", addr.ToString(), ": connect"));
    // No free ephemeral port or kernel memory: this host's problem, so no
    // endpoint must be marked down for it.
    if (err == EADDRNOTAVAIL || err == EAGAIN || err == ENOBUFS || err == ENOMEM) {
      return absl::ResourceExhaustedError(s.message());
    }
    return s;
  }
  return pc;
}

absl::Status FinishConnect(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return absl::OkStatus();
  return GoErrnoStatus(err, "connect");
}

}  // namespace keel::proxy::tcp
