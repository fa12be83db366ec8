#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/url.h"
#include "proxy/tcp/endpoint.h"
#include "proxy/tcp/srv_discovery.h"

namespace keel::proxy::tcp {

// The gateway's endpoint flags.
struct EndpointConfig {
  common::HostPort listen;                    // --listen-addr
  std::vector<std::string> static_endpoints;  // raw --endpoints items
  DiscoveryOptions discovery;                 // domain empty = no discovery
};

// The endpoints the gateway starts with.
struct ResolvedEndpoints {
  std::vector<Endpoint> endpoints;
  bool from_srv = false;                          // true: SRV discovery, false: --endpoints
  absl::Duration srv_ttl = absl::ZeroDuration();  // min SRV TTL when from_srv
};

// The start-up rules of etcd's gateway (proxy.md 1.3): SRV discovery if
// configured (errors from DiscoverSrvEndpoints returned as they are, e.g.
// "dns lookup errors: ..."); if that yields nothing, the static list, each item
// parsed with common::ParseEndpoint (InvalidArgument `error parsing endpoint
// "127.0.0.1"`; InvalidArgument `no endpoints found` (etcd's message) if the list is empty);
// then ValidateEndpoints. Logs etcd's discovery lines ("discovered
// cluster from SRV", "failed to validate discovered endpoints", ...) to the
// "gateway" logger. Blocking (DNS, TCP/TLS probes); call at start-up.
absl::StatusOr<ResolvedEndpoints> ResolveEndpoints(const EndpointConfig& config);

// Checks that the listen host and every endpoint host resolve and that no
// endpoint resolves to the listen address; the gateway may call it again on an
// SRV refresh before adopting the new list. Errors, with etcd's texts:
//   Unavailable `failed to resolve listen host: <host>`,
//   Unavailable `failed to resolve endpoint host: <host>`,
//   FailedPrecondition `SRV or endpoint (<host>:<port>-><ip>:<port>) should not
//   resolve to the gateway listen addr (<listen>)`; unlike etcd, a wildcard
//   listen host (0.0.0.0, ::, empty) matches every local address.
absl::Status ValidateEndpoints(const common::HostPort& listen,
                               const std::vector<Endpoint>& endpoints);

}  // namespace keel::proxy::tcp
