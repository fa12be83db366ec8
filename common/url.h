#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace keel::common {

// A host (name, IPv4, or IPv6 without brackets) and a TCP port.
struct HostPort {
  std::string host;
  int port = 0;
  // "host:port", with brackets around an IPv6 host.
  std::string ToString() const;
  bool operator==(const HostPort&) const = default;
};

// Parses "host:port" or "[v6]:port". Port must be 0-65535.
// InvalidArgument with a message naming the input otherwise.
absl::StatusOr<HostPort> ParseHostPort(std::string_view text);

// Parses an etcd endpoint as the gateway and grpc-proxy accept it:
// "host:port", "http://host:port" or "https://host:port" (scheme and any
// path stripped). The port is mandatory: "127.0.0.1" gives InvalidArgument
// `error parsing endpoint "127.0.0.1"`, etcd's exact message.
absl::StatusOr<HostPort> ParseEndpoint(std::string_view text);

// A parsed URL of the shapes etcd flags use: scheme://host:port[/path].
struct Url {
  std::string scheme;  // "http", "https", "unix", ...
  HostPort host_port;
  std::string path;  // "" or starting with '/'
};
// InvalidArgument if there is no scheme or no valid host:port.
absl::StatusOr<Url> ParseUrl(std::string_view text);

// Splits a comma-separated flag value, trimming blanks and dropping empty items.
std::vector<std::string> SplitCommaList(std::string_view text);

}  // namespace keel::common
