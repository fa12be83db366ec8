#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proxy/tcp/endpoint.h"

namespace keel::proxy::tcp {

// One DNS SRV answer record.
struct SrvRecord {
  std::string target;  // without the trailing dot
  int port = 0;
  uint16_t priority = 0;
  uint16_t weight = 0;
  absl::Duration ttl;  // the record's DNS TTL
};

// Parses the SRV records of the answer section of a DNS response message (other
// record types are skipped, and so are "." targets and port 0, which RFC 2782
// uses for "not available here"), keeping each record's TTL. Pure. InvalidArgument
// if the message is truncated or malformed.
absl::StatusOr<std::vector<SrvRecord>> ParseSrvAnswer(std::string_view message);

// Looks up one SRV name, e.g. "_etcd-client._tcp.example.com", through c-ares
// with the system resolver configuration (/etc/resolv.conf), giving up after
// `timeout`. Blocking: call at start-up or from the gateway's monitor thread,
// never from a loop thread. Thread-safe.
// Errors carry a Go-resolver-like message, as etcd prints them:
// "lookup <name> on <server>: no such host" (NotFound: NXDOMAIN or no SRV
// records), "...: server misbehaving" (Unavailable: SERVFAIL/REFUSED),
// "...: i/o timeout" (DeadlineExceeded), others Unavailable.
absl::StatusOr<std::vector<SrvRecord>> LookupSrv(const std::string& name, absl::Duration timeout);

// What the gateway's SRV discovery flags say.
struct DiscoveryOptions {
  std::string domain;           // --discovery-srv ("" = no discovery)
  std::string service_name;     // --discovery-srv-name ("" or e.g. "prod" -> _etcd-client-prod)
  bool insecure = false;        // --insecure-discovery
  std::string trusted_ca_file;  // --trusted-ca-file (used to verify https targets)
  absl::Duration connect_timeout = absl::Seconds(5);  // per target validation
  absl::Duration lookup_timeout = absl::Seconds(5);   // per SRV lookup
};

// Result of DiscoverSrvEndpoints.
struct Discovered {
  std::vector<Endpoint> endpoints;  // validated (or all, if insecure), https ones first
  absl::Duration ttl;               // min TTL of the records looked up (refresh interval)
  // Every record as a URL, as etcd logs it ("https://m1.example.test.:2379").
  std::vector<std::string> discovered;
  // Why targets were dropped, e.g. `"http://m1.example.test.:2379" is insecure`.
  std::vector<std::string> rejected;
};

// How etcd writes an endpoint in its SRV discovery logs and messages: the SRV
// target keeps DNS's trailing dot ("http://m1.example.test.:2379", with scheme;
// "m1.example.test.:2379" without). Static endpoints (scheme "") print as given.
std::string EtcdSrvName(const Endpoint& endpoint, bool with_scheme);

// The SRV service names looked up for `options`, https one first:
// _etcd-client-ssl<S>._tcp.<domain> and _etcd-client<S>._tcp.<domain>, S = "-<service_name>".
std::vector<std::string> SrvServiceNames(const DiscoveryOptions& options);

// etcd's discovery rules (proxy.md 1.3): both service names are looked up; either
// may fail, not both (then InvalidArgument/NotFound/... with etcd's text
// "dns lookup errors: <e1> and <e2>"). Without `insecure`, targets of the plain
// (http) record are dropped as insecure and every https target must accept a TCP
// connect within connect_timeout; when trusted_ca_file is set it must also
// complete a TLS handshake whose chain verifies against that CA and whose
// certificate names the target host or the domain (etcd only connects). An empty
// `endpoints` after filtering is not an error: the caller falls back to the static
// list, as etcd does. Blocking; thread-safe.
// REQUIRES: !options.domain.empty().
absl::StatusOr<Discovered> DiscoverSrvEndpoints(const DiscoveryOptions& options);

}  // namespace keel::proxy::tcp
