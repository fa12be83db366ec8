#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/url.h"

namespace keel::common {

// Binds and listens on `listen` as Go's net.Listen("tcp", ...) does: an empty
// host listens on the IPv6 wildcard (dual-stack) when it can, a name such as
// "localhost" binds its IPv4 address first. Returns the non-blocking,
// close-on-exec listening fd (SO_REUSEADDR, backlog SOMAXCONN); the caller
// owns it. Unavailable with Go's wording otherwise:
// "listen tcp 127.0.0.1:2379: bind: address already in use".
absl::StatusOr<int> ListenTcp(const HostPort& listen);

// Binds and listens on a unix socket at `path` (etcd's unix:// listeners). A
// socket file at `path` is replaced, as etcd does (even one still in use);
// any other file is left alone (bind fails). Same ownership and flags as
// ListenTcp; Unavailable in Go's wording otherwise: "listen unix
// /run/m.sock: bind: address already in use".
absl::StatusOr<int> ListenUnix(const std::string& path);

// The local port a socket is bound to; 0 if it cannot be read.
int BoundPort(int fd);

// strerror's text as Go prints syscall errors: "address already in use".
std::string ErrnoText(int err);

}  // namespace keel::common
