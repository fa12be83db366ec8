#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "common/logging.h"
#include "common/url.h"

namespace keel::proxy::grpcproxy {

// The raw values of `keel grpc-proxy start`'s flags, defaults as etcd 3.4's
// `etcd grpc-proxy start` (plus keel's own flags at the end).
struct ProxyFlags {
  std::string listen_addr = "127.0.0.1:23790";
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  std::string discovery_srv;
  std::string discovery_srv_name;
  bool insecure_discovery = false;
  std::string advertise_client_url = "127.0.0.1:23790";
  std::string metrics_addr;
  bool enable_pprof = false;
  std::string data_dir = "default.proxy";
  bool debug = false;
  uint32_t max_concurrent_streams = UINT32_MAX;
  // Proxy -> etcd TLS.
  std::string cert;
  std::string key;
  std::string cacert;
  bool insecure_skip_tls_verify = false;
  int64_t max_send_bytes = 1536 * 1024;
  int64_t max_recv_bytes = INT32_MAX;
  // Client -> proxy TLS.
  std::string cert_file;
  std::string key_file;
  std::string trusted_ca_file;
  bool auto_tls = false;
  std::string client_crl_file;
  std::vector<std::string> listen_cipher_suites;
  // Features.
  std::string ns;  // --namespace
  std::string resolver_prefix;
  int64_t resolver_ttl = 0;
  bool experimental_serializable_ordering = false;
  std::string experimental_leasing_prefix;
  // keel's additions.
  std::string log_format = "json";
  int64_t range_cache_max_bytes = 64 << 20;
};

// Adds the flags of `grpc-proxy start` to `cmd`, bound to `*flags`, with
// etcd's names, defaults and help texts, each also readable as ETCD_<FLAG>
// (common::BindEtcdEnv, as keel's gateway does; etcd's proxy ignores the
// environment). Integer flags reject bad values with pflag's wording
// (`invalid argument "x" for "--max-send-bytes" flag: strconv.ParseInt:
// parsing "x": invalid syntax`) through CLI::ValidationError. Unknown flags
// are let through to cmd.remaining() so the caller can word them as etcd
// does. REQUIRES: `flags` outlives cmd's parse.
void AddGrpcProxyStartFlags(CLI::App& cmd, ProxyFlags* flags);

// --metrics-addr, parsed: another listener serving the HTTP paths.
struct MetricsListen {
  std::string url;                      // as given (for logs)
  std::optional<common::HostPort> tcp;  // http:// and https://
  std::string unix_path;                // unix:// and unixs://: the socket file
  bool tls = false;                     // https:// and unixs://
};

// What a parsed `grpc-proxy start` command line configures, checked.
struct ProxyConfig {
  std::string listen_addr;  // as given (for logs)
  common::HostPort listen;
  // Backend endpoints as "host:port" (scheme stripped), in flag order.
  std::vector<std::string> endpoints;
  // Some endpoint was given as https://: TLS to etcd even without --cert etc.
  bool endpoints_tls = false;
  std::string discovery_srv;
  std::string discovery_srv_name;
  bool insecure_discovery = false;
  std::string advertise_client_url;  // "" = MemberList passes through
  std::optional<MetricsListen> metrics_listen;
  std::string data_dir;
  uint32_t max_concurrent_streams = UINT32_MAX;
  std::string cert;
  std::string key;
  std::string cacert;
  bool insecure_skip_tls_verify = false;
  int64_t max_send_bytes = 0;
  int64_t max_recv_bytes = 0;
  std::string cert_file;
  std::string key_file;
  std::string trusted_ca_file;
  bool auto_tls = false;
  std::vector<std::string> listen_cipher_suites;  // Go's names, as given
  std::string client_crl_file;
  std::string ns;
  std::string resolver_prefix;  // "" = no registration
  int64_t resolver_ttl = 0;
  // Byte budget of the range cache; 0 turns the cache off.
  int64_t range_cache_max_bytes = 0;
  common::LogOptions log;
};

// Checks and converts parsed flags. InvalidArgument with etcd's exact text
// where etcd checks: `invalid resolver-ttl 0`, `invalid resolver-prefix ""`,
// `invalid advertise-client-url ""`, `error parsing endpoint "x"`,
// `listen tcp: address foo: missing port in address`, `cannot listen on TLS
// for 127.0.0.1:9000: KeyFile and CertFile are not presented`; keel's own
// checks say `invalid value "<v>" for --<flag>: <why>`, or why a flag
// cannot work (--listen-cipher-suites without TLS, --client-crl-file without
// --trusted-ca-file). Flags keel accepts but does not implement
// (--experimental-serializable-ordering, --experimental-leasing-prefix) are
// refused when set: `--<flag> is not supported by keel`. Pure.
absl::StatusOr<ProxyConfig> ToProxyConfig(const ProxyFlags& flags);

}  // namespace keel::proxy::grpcproxy
