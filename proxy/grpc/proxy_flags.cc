#include "proxy/grpc/proxy_flags.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/flags.h"
#include "common/go_quote.h"

namespace keel::proxy::grpcproxy {
namespace {

// What ParseGoInteger found: `ok` is false for a syntax error;
// `out_of_range` reports a magnitude beyond 80 bits.
struct ParsedInt {
  bool ok = false;
  bool out_of_range = false;
  bool negative = false;
  unsigned __int128 magnitude = 0;
};

// Go's strconv.ParseInt/ParseUint with base 0 ("0x1f", "0o17", "017",
// "0b101", single underscores between digits after a base prefix), as pflag
// parses its integer flags. A sign only if `allow_sign`.
ParsedInt ParseGoInteger(const std::string& text, bool allow_sign) {
  ParsedInt r;
  size_t i = 0;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) {
    if (!allow_sign) return r;
    r.negative = text[i] == '-';
    ++i;
  }
  int base = 10;
  bool prefixed = false;
  if (text.size() - i >= 2 && text[i] == '0') {
    const char p = static_cast<char>(text[i + 1] | 0x20);
    prefixed = true;
    if (p == 'x') {
      base = 16;
      i += 2;
    } else if (p == 'o') {
      base = 8;
      i += 2;
    } else if (p == 'b') {
      base = 2;
      i += 2;
    } else {
      base = 8;  // "017": octal, the leading 0 counts as a digit
    }
  }
  bool any_digit = false;
  bool last_underscore = false;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '_') {
      if (!prefixed || last_underscore) return r;
      last_underscore = true;
      continue;
    }
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    if (c >= 'a' && c <= 'z') v = c - 'a' + 10;
    if (c >= 'A' && c <= 'Z') v = c - 'A' + 10;
    if (v < 0 || v >= base) return r;
    any_digit = true;
    last_underscore = false;
    if (r.magnitude > (static_cast<unsigned __int128>(1) << 80)) {
      r.out_of_range = true;
    } else {
      r.magnitude = r.magnitude * base + v;
    }
  }
  if (!any_digit || last_underscore) return r;
  r.ok = true;
  return r;
}

std::string PflagIntError(const std::string& flag, const std::string& value,
                          const std::string& func, const std::string& why) {
  return absl::StrCat("invalid argument ", common::GoQuote(value), " for ", common::GoQuote(flag),
                      " flag: strconv.", func, ": parsing ", common::GoQuote(value), ": ", why);
}

// An int64 flag (pflag's `int` on 64-bit Go) with pflag's parse errors.
CLI::Option* AddInt64Flag(CLI::App& app, const std::string& name, int64_t* target,
                          const std::string& description) {
  CLI::callback_t callback = [target, name](const CLI::results_t& results) {
    const std::string value = results.empty() ? std::string() : results.back();
    const ParsedInt p = ParseGoInteger(value, /*allow_sign=*/true);
    if (!p.ok) throw CLI::ValidationError(PflagIntError(name, value, "ParseInt", "invalid syntax"));
    const unsigned __int128 limit =
        static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max()) + (p.negative ? 1 : 0);
    if (p.out_of_range || p.magnitude > limit) {
      throw CLI::ValidationError(PflagIntError(name, value, "ParseInt", "value out of range"));
    }
    *target = p.negative ? static_cast<int64_t>(-static_cast<__int128>(p.magnitude))
                         : static_cast<int64_t>(p.magnitude);
    return true;
  };
  CLI::Option* opt = app.add_option(name, std::move(callback), description);
  opt->type_name("int")->type_size(1)->expected(1);
  opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  opt->default_str(std::to_string(*target));
  return opt;
}

// A uint32 flag with pflag's parse errors.
CLI::Option* AddUint32Flag(CLI::App& app, const std::string& name, uint32_t* target,
                           const std::string& description) {
  CLI::callback_t callback = [target, name](const CLI::results_t& results) {
    const std::string value = results.empty() ? std::string() : results.back();
    const ParsedInt p = ParseGoInteger(value, /*allow_sign=*/false);
    if (!p.ok) {
      throw CLI::ValidationError(PflagIntError(name, value, "ParseUint", "invalid syntax"));
    }
    if (p.out_of_range || p.magnitude > std::numeric_limits<uint32_t>::max()) {
      throw CLI::ValidationError(PflagIntError(name, value, "ParseUint", "value out of range"));
    }
    *target = static_cast<uint32_t>(p.magnitude);
    return true;
  };
  CLI::Option* opt = app.add_option(name, std::move(callback), description);
  opt->type_name("uint32")->type_size(1)->expected(1);
  opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  opt->default_str(std::to_string(*target));
  return opt;
}

CLI::Option* AddString(CLI::App& cmd, const std::string& name, std::string* target,
                       const std::string& description) {
  CLI::Option* opt = cmd.add_option(name, *target, description)->type_name("string");
  if (!target->empty()) opt->default_str(common::GoQuote(*target));
  return opt;
}

CLI::Option* AddStrings(CLI::App& cmd, const std::string& name, std::vector<std::string>* target,
                        const std::string& description) {
  CLI::Option* opt = cmd.add_option(name, *target, description)
                         ->type_name("strings")
                         ->delimiter(',')
                         ->allow_extra_args(false);  // like pflag: one value per occurrence
  if (!target->empty()) opt->default_str(absl::StrCat("[", absl::StrJoin(*target, ","), "]"));
  return opt;
}

absl::Status Unsupported(const std::string& flag) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " is not supported by keel"));
}

// --metrics-addr as etcd's transport.NewListener takes it: http:// and
// https:// (with the listener's certificate), unix:// and unixs://, where
// the socket file is the URL's host part ("unix://localhost:2381" makes the
// file "localhost:2381"), or, beyond etcd, its path ("unix:///run/m.sock").
absl::StatusOr<MetricsListen> ParseMetricsAddr(const ProxyFlags& flags) {
  const std::string& text = flags.metrics_addr;
  const auto invalid = [&text] {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid value \"", text,
        "\" for --metrics-addr: want http://host:port, https://host:port, unix://path or "
        "unixs://path"));
  };
  MetricsListen metrics;
  metrics.url = text;
  const size_t colon = text.find("://");
  if (colon == std::string::npos) return invalid();
  const std::string scheme = absl::AsciiStrToLower(text.substr(0, colon));
  std::string where;  // host:port, or the socket file
  if (scheme == "http" || scheme == "https") {
    absl::StatusOr<common::Url> url = common::ParseUrl(text);
    if (!url.ok()) return invalid();
    metrics.tcp = url->host_port;
    where = url->host_port.ToString();
  } else if (scheme == "unix" || scheme == "unixs") {
    const std::string rest = text.substr(colon + 3);
    const size_t slash = rest.find('/');
    metrics.unix_path = slash == 0 ? rest : rest.substr(0, slash);
    if (metrics.unix_path.empty() || metrics.unix_path == "/") return invalid();
    where = metrics.unix_path;
  } else {
    return invalid();
  }
  metrics.tls = scheme == "https" || scheme == "unixs";
  // etcd's wording; the listener's CA file alone is no certificate either.
  if (metrics.tls && flags.cert_file.empty() && flags.key_file.empty() && !flags.auto_tls) {
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on TLS for ", where,
                                                   ": KeyFile and CertFile are not presented"));
  }
  return metrics;
}

}  // namespace

void AddGrpcProxyStartFlags(CLI::App& cmd, ProxyFlags* flags) {
  cmd.allow_extras();
  AddString(cmd, "--listen-addr", &flags->listen_addr,
            "listen address (keel: gRPC and HTTP/1.1 share it, also with TLS on)");
  AddString(cmd, "--discovery-srv", &flags->discovery_srv,
            "domain name to query for SRV records describing cluster endpoints");
  AddString(cmd, "--discovery-srv-name", &flags->discovery_srv_name,
            "service name to query when using DNS discovery");
  AddString(cmd, "--metrics-addr", &flags->metrics_addr,
            "listen for endpoint /metrics requests on an additional interface");
  cmd.add_flag("--insecure-discovery", flags->insecure_discovery, "accept insecure SRV records");
  AddStrings(cmd, "--endpoints", &flags->endpoints, "comma separated etcd cluster endpoints");
  AddString(cmd, "--advertise-client-url", &flags->advertise_client_url,
            "advertise address to register (must be reachable by client)");
  AddString(cmd, "--resolver-prefix", &flags->resolver_prefix,
            "prefix to use for registering proxy (must be shared with other grpc-proxy members)");
  AddInt64Flag(cmd, "--resolver-ttl", &flags->resolver_ttl,
               "specify TTL, in seconds, when registering proxy endpoints");
  AddString(cmd, "--namespace", &flags->ns,
            "string to prefix to all keys for namespacing requests");
  cmd.add_flag("--enable-pprof", flags->enable_pprof,
               "Enable runtime profiling data via HTTP server. Address is at client URL + "
               "\"/debug/pprof/\" (keel: accepted and ignored)");
  AddString(cmd, "--data-dir", &flags->data_dir, "Data directory for persistent data");
  AddUint32Flag(cmd, "--max-concurrent-streams", &flags->max_concurrent_streams,
                "Maximum concurrent streams that each client can open at a time.");
  // Proxy -> etcd.
  AddString(cmd, "--cert", &flags->cert,
            "identify secure connections with etcd servers using this TLS certificate file");
  AddString(cmd, "--key", &flags->key,
            "identify secure connections with etcd servers using this TLS key file");
  AddString(cmd, "--cacert", &flags->cacert,
            "verify certificates of TLS-enabled secure etcd servers using this CA bundle");
  cmd.add_flag("--insecure-skip-tls-verify", flags->insecure_skip_tls_verify,
               "skip authentication of etcd server TLS certificates (CAUTION: this option should "
               "be enabled only for testing purposes)");
  // Client -> proxy.
  AddString(cmd, "--cert-file", &flags->cert_file,
            "identify secure connections to the proxy using this TLS certificate file");
  AddString(cmd, "--key-file", &flags->key_file,
            "identify secure connections to the proxy using this TLS key file");
  AddString(cmd, "--trusted-ca-file", &flags->trusted_ca_file,
            "verify certificates of TLS-enabled secure proxy using this CA bundle");
  AddStrings(cmd, "--listen-cipher-suites", &flags->listen_cipher_suites,
             "Comma-separated list of supported TLS cipher suites between client/proxy (empty "
             "will be auto-populated by Go).");
  cmd.add_flag("--auto-tls", flags->auto_tls, "proxy TLS using generated certificates");
  AddString(cmd, "--client-crl-file", &flags->client_crl_file,
            "proxy client certificate revocation list file.");
  AddInt64Flag(cmd, "--max-send-bytes", &flags->max_send_bytes,
               "message send limits in bytes (default value is 1.5 MiB)");
  AddInt64Flag(cmd, "--max-recv-bytes", &flags->max_recv_bytes,
               "message receive limits in bytes (default value is math.MaxInt32)");
  cmd.add_flag("--debug", flags->debug, "Enable debug-level logging for grpc-proxy.");
  cmd.add_flag("--experimental-serializable-ordering", flags->experimental_serializable_ordering,
               "Ensure serializable reads have monotonically increasing store revisions across "
               "endpoints. (keel: not supported)");
  AddString(cmd, "--experimental-leasing-prefix", &flags->experimental_leasing_prefix,
            "leasing metadata prefix for disconnected linearized reads. (keel: not supported)");
  cmd.add_option("--log-format", flags->log_format, "keel: log format, json or text")
      ->type_name("string")
      ->capture_default_str();
  AddInt64Flag(cmd, "--range-cache-max-bytes", &flags->range_cache_max_bytes,
               "keel: byte budget of the range cache (LRU); 0 turns the cache off");
  common::BindEtcdEnv(cmd);
}

absl::StatusOr<ProxyConfig> ToProxyConfig(const ProxyFlags& flags) {
  // etcd's checkArgs(), in its order and words.
  if (!flags.resolver_prefix.empty() && flags.resolver_ttl < 1) {
    return absl::InvalidArgumentError(absl::StrCat("invalid resolver-ttl ", flags.resolver_ttl));
  }
  if (flags.resolver_prefix.empty() && flags.resolver_ttl > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid resolver-prefix ", common::GoQuote(flags.resolver_prefix)));
  }
  if (!flags.resolver_prefix.empty() && flags.resolver_ttl > 0 &&
      flags.advertise_client_url.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid advertise-client-url ", common::GoQuote(flags.advertise_client_url)));
  }
  const bool listener_tls = !flags.cert_file.empty() || !flags.key_file.empty() ||
                            !flags.trusted_ca_file.empty() || flags.auto_tls;
  // etcd ignores these without TLS on the listener (or crashes, for the
  // cipher suites); keel says why they cannot work.
  if (!flags.listen_cipher_suites.empty() && !listener_tls) {
    return absl::InvalidArgumentError(
        "--listen-cipher-suites needs TLS on the listener (--cert-file and --key-file, or "
        "--auto-tls)");
  }
  if (!flags.client_crl_file.empty() && flags.trusted_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--client-crl-file needs --trusted-ca-file: client certificates are asked for only "
        "with it");
  }
  if (flags.experimental_serializable_ordering) {
    return Unsupported("experimental-serializable-ordering");
  }
  if (!flags.experimental_leasing_prefix.empty()) return Unsupported("experimental-leasing-prefix");

  ProxyConfig config;
  config.listen_addr = flags.listen_addr;
  absl::StatusOr<common::HostPort> listen = common::ParseHostPort(flags.listen_addr);
  if (!listen.ok()) {
    // As Go's net.Listen words it: "listen tcp: address foo: missing port in address".
    return absl::InvalidArgumentError(absl::StrCat("listen tcp: ", listen.status().message()));
  }
  config.listen = *listen;
  for (const std::string& item : flags.endpoints) {
    for (const std::string& e : common::SplitCommaList(item)) {
      absl::StatusOr<common::HostPort> hp = common::ParseEndpoint(e);
      if (!hp.ok()) return hp.status();
      config.endpoints.push_back(hp->ToString());
      if (e.rfind("https://", 0) == 0) config.endpoints_tls = true;
    }
  }
  config.discovery_srv = flags.discovery_srv;
  config.discovery_srv_name = flags.discovery_srv_name;
  config.insecure_discovery = flags.insecure_discovery;
  if (config.endpoints.empty() && config.discovery_srv.empty()) {
    return absl::InvalidArgumentError("invalid value \"\" for --endpoints: no endpoints given");
  }
  config.advertise_client_url = flags.advertise_client_url;
  if (!flags.metrics_addr.empty()) {
    absl::StatusOr<MetricsListen> metrics = ParseMetricsAddr(flags);
    if (!metrics.ok()) return metrics.status();
    config.metrics_listen = *std::move(metrics);
  }
  config.data_dir = flags.data_dir;
  config.max_concurrent_streams = flags.max_concurrent_streams;
  config.cert = flags.cert;
  config.key = flags.key;
  config.cacert = flags.cacert;
  config.insecure_skip_tls_verify = flags.insecure_skip_tls_verify;
  // The server accepts max_send_bytes + 512 KiB, so both must fit gRPC's int.
  constexpr int64_t kMaxSend = std::numeric_limits<int32_t>::max() - 512 * 1024;
  if (flags.max_send_bytes <= 0 || flags.max_send_bytes > kMaxSend) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value \"", flags.max_send_bytes,
                                                   "\" for --max-send-bytes: want 1..", kMaxSend));
  }
  if (flags.max_recv_bytes <= 0 || flags.max_recv_bytes > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value \"", flags.max_recv_bytes,
                                                   "\" for --max-recv-bytes: want 1..",
                                                   std::numeric_limits<int32_t>::max()));
  }
  config.max_send_bytes = flags.max_send_bytes;
  config.max_recv_bytes = flags.max_recv_bytes;
  config.cert_file = flags.cert_file;
  config.key_file = flags.key_file;
  config.trusted_ca_file = flags.trusted_ca_file;
  config.auto_tls = flags.auto_tls;
  for (const std::string& item : flags.listen_cipher_suites) {
    for (const std::string& suite : common::SplitCommaList(item)) {
      config.listen_cipher_suites.push_back(suite);
    }
  }
  config.client_crl_file = flags.client_crl_file;
  config.ns = flags.ns;
  config.resolver_prefix = flags.resolver_prefix;
  config.resolver_ttl = flags.resolver_ttl;
  if (flags.range_cache_max_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value \"",
                                                   flags.range_cache_max_bytes,
                                                   "\" for --range-cache-max-bytes: want >= 0"));
  }
  config.range_cache_max_bytes = flags.range_cache_max_bytes;
  absl::StatusOr<common::LogFormat> format = common::ParseLogFormat(flags.log_format);
  if (!format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid value \"", flags.log_format,
                                                   "\" for --log-format: want json or text"));
  }
  config.log.format = *format;
  config.log.level = flags.debug ? spdlog::level::debug : spdlog::level::info;
  return config;
}

}  // namespace keel::proxy::grpcproxy
