#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/url.h"
#include "proxy/tcp/handles.h"

namespace keel::proxy::tcp {

// common::ErrnoStatus's code with Go's wording of the error, which etcd
// users see in logs: "<what>: connection refused" (strerror, lower-cased).
absl::Status GoErrnoStatus(int err, std::string_view what);

// A resolved IPv4/IPv6 socket address. A plain value.
struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  // "ip:port", "[v6]:port".
  std::string ToString() const;
};

// The addresses of `hp`: a numeric host is converted without a lookup, a name
// goes through getaddrinfo (blocking: call it off the data path). NotFound
// `failed to resolve endpoint host "<host>"` if the name has no address.
absl::StatusOr<std::vector<SockAddr>> ResolveHostPort(const common::HostPort& hp);

// TCP_NODELAY plus TCP keepalive with Go's net.Dialer defaults (15 s idle,
// 15 s between probes), so a silently dead peer is noticed. Best effort.
void SetStreamOptions(int fd);

// A nonblocking connect in flight (or already done: loopback connects can
// complete at once).
struct PendingConnect {
  UniqueFd fd;
  bool connected = false;
};

// Creates a nonblocking, close-on-exec socket and starts connecting it to
// `addr`. An error status if the connect failed at once, e.g. Unavailable
// `dial tcp 127.0.0.1:2379: connect: connection refused`; ResourceExhausted
// for local problems that are not the endpoint's: no socket could be created,
// or connect(2) found no free ephemeral port or kernel memory.
absl::StatusOr<PendingConnect> StartConnect(const SockAddr& addr);

// The outcome of a nonblocking connect once `fd` reported writable: OK, or
// the connect error from SO_ERROR (`connect: connection refused`).
absl::Status FinishConnect(int fd);

}  // namespace keel::proxy::tcp
