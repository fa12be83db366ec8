#include "proxy/tcp/srv_discovery.h"

#include <ares.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace keel::proxy::tcp {
namespace {

constexpr int kClassIn = 1;
constexpr int kTypeSrv = 33;

// ---- c-ares ----------------------------------------------------------------

struct ChannelDestroy {
  void operator()(ares_channeldata* c) const { ares_destroy(c); }
};
using ChannelPtr = std::unique_ptr<ares_channeldata, ChannelDestroy>;

struct QueryResult {
  bool done = false;
  int status = ARES_SUCCESS;
  std::string answer;
};

void OnQuery(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
  auto* result = static_cast<QueryResult*>(arg);
  result->done = true;
  result->status = status;
  if (status == ARES_SUCCESS && abuf != nullptr && alen > 0) {
    result->answer.assign(reinterpret_cast<const char*>(abuf), static_cast<size_t>(alen));
  }
}

// "127.0.0.1:53" for the first configured name server, as Go's resolver names it
// in its errors; "" if c-ares has none.
std::string FirstServer(ares_channel channel) {
  ares_addr_port_node* servers = nullptr;
  if (ares_get_servers_ports(channel, &servers) != ARES_SUCCESS || servers == nullptr) return "";
  char text[INET6_ADDRSTRLEN] = {};
  std::string out;
  const int port = servers->udp_port != 0 ? servers->udp_port : 53;
  if (servers->family == AF_INET &&
      inet_ntop(AF_INET, &servers->addr.addr4, text, sizeof(text)) != nullptr) {
    out = absl::StrCat(text, ":", port);
  } else if (servers->family == AF_INET6 &&
             inet_ntop(AF_INET6, &servers->addr.addr6, text, sizeof(text)) != nullptr) {
    out = absl::StrCat("[", text, "]:", port);
  }
  ares_free_data(servers);
  return out;
}

// Maps a c-ares failure to a status worded like Go's *net.DNSError, which is
// what etcd prints ("lookup <name> on <server>: no such host").
absl::Status LookupError(const std::string& name, const std::string& server, int status) {
  const std::string prefix = server.empty() ? absl::StrCat("lookup ", name, ": ")
                                            : absl::StrCat("lookup ", name, " on ", server, ": ");
  switch (status) {
    case ARES_ENOTFOUND:
    case ARES_ENODATA:
      return absl::NotFoundError(prefix + "no such host");
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
    case ARES_EFORMERR:
    case ARES_ENOTIMP:
    case ARES_EBADRESP:
      return absl::UnavailableError(prefix + "server misbehaving");
    case ARES_ETIMEOUT:
    case ARES_ECANCELLED:
      return absl::DeadlineExceededError(prefix + "i/o timeout");
    case ARES_ECONNREFUSED:
      return absl::UnavailableError(prefix + "read: connection refused");
    default:
      return absl::UnavailableError(prefix + ares_strerror(status));
  }
}

// Reads a 16/32-bit big-endian integer at p.
uint16_t Get16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Get32(const unsigned char* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | p[3];
}

// Expands the (possibly compressed) name at p; returns its encoded length or -1.
long ExpandName(const unsigned char* p, const unsigned char* buf, int len, std::string* name) {
  char* s = nullptr;
  long enc_len = 0;
  if (ares_expand_name(p, buf, len, &s, &enc_len) != ARES_SUCCESS) return -1;
  if (name != nullptr) *name = s;
  ares_free_string(s);
  return enc_len;
}

void InitAresOnce() {
  static std::once_flag once;
  std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
}

// ---- target validation -------------------------------------------------------

struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

absl::Duration Remaining(absl::Time deadline) {
  return std::max(deadline - absl::Now(), absl::ZeroDuration());
}

// Connects to host:port (every resolved address in turn) before `deadline`.
// Returns the connected, blocking socket.
absl::StatusOr<int> ConnectWithin(const std::string& host, int port, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port_text = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("lookup ", host, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(res, &freeaddrinfo);
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    FdCloser sock{socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
    if (sock.fd < 0) {
      last = common::ErrnoStatus(errno, "socket");
      continue;
    }
    if (connect(sock.fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = common::ErrnoStatus(errno, "dial tcp");
        continue;
      }
      pollfd pfd{sock.fd, POLLOUT, 0};
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(Remaining(deadline)));
      const int ready = poll(&pfd, 1, ms);
      if (ready <= 0) {
        last = absl::DeadlineExceededError("dial tcp: i/o timeout");
        continue;
      }
      int err = 0;
      socklen_t err_len = sizeof(err);
      getsockopt(sock.fd, SOL_SOCKET, SO_ERROR, &err, &err_len);
      if (err != 0) {
        last = common::ErrnoStatus(err, "dial tcp");
        continue;
      }
    }
    const int flags = fcntl(sock.fd, F_GETFL);
    fcntl(sock.fd, F_SETFL, flags & ~O_NONBLOCK);
    return std::exchange(sock.fd, -1);
  }
  return last;
}

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "handshake failed";
  char text[256];
  ERR_error_string_n(e, text, sizeof(text));
  ERR_clear_error();
  return text;
}

bool IsIpLiteral(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// Completes a TLS handshake with host:port on `fd`, verifying the chain
// against `ctx`'s CA and the certificate's name against `host` or `domain`.
absl::Status VerifyTls(SSL_CTX* ctx, int fd, const std::string& host, const std::string& domain,
                       absl::Time deadline) {
  const absl::Duration left = Remaining(deadline);
  timeval tv = absl::ToTimeval(std::max(left, absl::Milliseconds(1)));
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx));
  if (ssl == nullptr) return absl::InternalError(OpenSslError());
  SSL_set_fd(ssl.get(), fd);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  if (IsIpLiteral(host)) {
    X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), host.c_str());
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    // etcd sets the discovery domain as the expected server name; accept either.
    if (!domain.empty()) X509_VERIFY_PARAM_add1_host(param, domain.c_str(), 0);
  }
  ERR_clear_error();
  if (SSL_connect(ssl.get()) != 1) {
    const long verify = SSL_get_verify_result(ssl.get());
    if (verify != X509_V_OK) {
      ERR_clear_error();
      return absl::UnavailableError(absl::StrCat("x509: ", X509_verify_cert_error_string(verify)));
    }
    return absl::UnavailableError(absl::StrCat("tls: ", OpenSslError()));
  }
  SSL_shutdown(ssl.get());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<SrvRecord>> LookupSrv(const std::string& name, absl::Duration timeout) {
  InitAresOnce();
  const absl::Time deadline = absl::Now() + timeout;
  ares_options options{};
  // Two tries per server inside the overall deadline.
  options.timeout =
      static_cast<int>(std::max<int64_t>(100, absl::ToInt64Milliseconds(timeout) / 2));
  options.tries = 2;
  ares_channel raw = nullptr;
  if (int rc = ares_init_options(&raw, &options, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
      rc != ARES_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("lookup ", name, ": ", ares_strerror(rc)));
  }
  ChannelPtr channel(raw);
  const std::string server = FirstServer(channel.get());

  QueryResult result;
  ares_query(channel.get(), name.c_str(), kClassIn, kTypeSrv, &OnQuery, &result);
  while (!result.done) {
    const absl::Duration left = Remaining(deadline);
    if (left <= absl::ZeroDuration()) {
      ares_cancel(channel.get());  // runs OnQuery with ARES_ECANCELLED
      break;
    }
    ares_socket_t socks[ARES_GETSOCK_MAXNUM];
    const int bits = ares_getsock(channel.get(), socks, ARES_GETSOCK_MAXNUM);
    std::vector<pollfd> fds;
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
      short events = 0;
      if (ARES_GETSOCK_READABLE(bits, i)) events |= POLLIN;
      if (ARES_GETSOCK_WRITABLE(bits, i)) events |= POLLOUT;
      if (events != 0) fds.push_back(pollfd{socks[i], events, 0});
    }
    timeval max_tv = absl::ToTimeval(left);
    timeval tv{};
    const timeval* wait = ares_timeout(channel.get(), &max_tv, &tv);
    const int ms = static_cast<int>(wait->tv_sec * 1000 + (wait->tv_usec + 999) / 1000);
    const int n = poll(fds.data(), fds.size(), ms);
    if (n < 0 && errno != EINTR) {
      ares_cancel(channel.get());
      break;
    }
    if (n <= 0) {
      ares_process_fd(channel.get(), ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
      continue;
    }
    for (const pollfd& p : fds) {
      ares_process_fd(channel.get(),
                      (p.revents & (POLLIN | POLLERR | POLLHUP)) ? p.fd : ARES_SOCKET_BAD,
                      (p.revents & POLLOUT) ? p.fd : ARES_SOCKET_BAD);
    }
  }
  if (result.status != ARES_SUCCESS) return LookupError(name, server, result.status);
  absl::StatusOr<std::vector<SrvRecord>> records = ParseSrvAnswer(result.answer);
  if (!records.ok()) return LookupError(name, server, ARES_EBADRESP);
  if (records->empty()) return LookupError(name, server, ARES_ENODATA);
  return records;
}

// ares_parse_srv_reply drops the TTLs, hence our own walk of the message.
absl::StatusOr<std::vector<SrvRecord>> ParseSrvAnswer(std::string_view answer) {
  const auto* buf = reinterpret_cast<const unsigned char*>(answer.data());
  const int len = static_cast<int>(answer.size());
  const absl::Status malformed = absl::InvalidArgumentError("malformed DNS answer");
  if (len < 12) return malformed;
  const int qdcount = Get16(buf + 4);
  const int ancount = Get16(buf + 6);
  const unsigned char* p = buf + 12;
  const unsigned char* end = buf + len;
  for (int i = 0; i < qdcount; ++i) {
    const long n = ExpandName(p, buf, len, nullptr);
    if (n < 0 || end - p < n + 4) return malformed;
    p += n + 4;
  }
  std::vector<SrvRecord> records;
  for (int i = 0; i < ancount; ++i) {
    const long n = ExpandName(p, buf, len, nullptr);
    if (n < 0 || end - p < n + 10) return malformed;
    p += n;
    const int type = Get16(p);
    const int klass = Get16(p + 2);
    const uint32_t ttl = Get32(p + 4);
    const int rdlength = Get16(p + 8);
    p += 10;
    if (end - p < rdlength) return malformed;
    if (type == kTypeSrv && klass == kClassIn) {
      if (rdlength < 7) return malformed;
      SrvRecord r;
      r.priority = Get16(p);
      r.weight = Get16(p + 2);
      r.port = Get16(p + 4);
      r.ttl = absl::Seconds(ttl);
      if (ExpandName(p + 6, buf, len, &r.target) < 0) return malformed;
      while (!r.target.empty() && r.target.back() == '.') r.target.pop_back();
      // RFC 2782: a target of "." means the service is not available there.
      if (!r.target.empty() && r.port != 0) records.push_back(std::move(r));
    }
    p += rdlength;
  }
  return records;
}

std::string EtcdSrvName(const Endpoint& endpoint, bool with_scheme) {
  common::HostPort hp = endpoint.addr;
  // Go's resolver returns SRV targets fully qualified and etcd prints them so.
  if (!endpoint.scheme.empty() && !hp.host.empty() && hp.host.back() != '.') hp.host += '.';
  std::string text = hp.ToString();
  if (with_scheme && !endpoint.scheme.empty()) text = absl::StrCat(endpoint.scheme, "://", text);
  return text;
}

std::vector<std::string> SrvServiceNames(const DiscoveryOptions& options) {
  const std::string suffix = options.service_name.empty() ? "" : "-" + options.service_name;
  return {absl::StrCat("_etcd-client-ssl", suffix, "._tcp.", options.domain),
          absl::StrCat("_etcd-client", suffix, "._tcp.", options.domain)};
}

absl::StatusOr<Discovered> DiscoverSrvEndpoints(const DiscoveryOptions& options) {
  const std::vector<std::string> names = SrvServiceNames(options);
  absl::StatusOr<std::vector<SrvRecord>> https = LookupSrv(names[0], options.lookup_timeout);
  absl::StatusOr<std::vector<SrvRecord>> http = LookupSrv(names[1], options.lookup_timeout);
  if (!https.ok() && !http.ok()) {
    // etcd's client/pkg/srv wording; both errors are the resolver's.
    return absl::Status(https.status().code(),
                        absl::StrCat("dns lookup errors: ", https.status().message(), " and ",
                                     http.status().message()));
  }
  Discovered out;
  out.ttl = absl::InfiniteDuration();
  std::vector<Endpoint> all;
  auto add = [&](const std::vector<SrvRecord>& records, const std::string& scheme) {
    for (const SrvRecord& r : records) {
      Endpoint e{{r.target, r.port}, r.priority, r.weight, scheme};
      out.discovered.push_back(EtcdSrvName(e, /*with_scheme=*/true));
      all.push_back(std::move(e));
      out.ttl = std::min(out.ttl, r.ttl);
    }
  };
  if (https.ok()) add(*https, "https");
  if (http.ok()) add(*http, "http");
  if (out.ttl == absl::InfiniteDuration()) out.ttl = absl::ZeroDuration();

  if (options.insecure) {
    out.endpoints = std::move(all);
    return out;
  }
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx;
  if (!options.trusted_ca_file.empty()) {
    ctx.reset(SSL_CTX_new(TLS_client_method()));
    if (ctx == nullptr) return absl::InternalError(OpenSslError());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (SSL_CTX_load_verify_locations(ctx.get(), options.trusted_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "failed to load trusted CA file ", options.trusted_ca_file, ": ", OpenSslError()));
    }
  }
  for (Endpoint& e : all) {
    const std::string url = EtcdSrvName(e, /*with_scheme=*/true);
    if (e.scheme != "https") {
      out.rejected.push_back(absl::StrCat("\"", url, "\" is insecure"));
      continue;
    }
    const absl::Time deadline = absl::Now() + options.connect_timeout;
    absl::StatusOr<int> fd = ConnectWithin(e.addr.host, e.addr.port, deadline);
    absl::Status status = fd.status();
    if (fd.ok()) {
      FdCloser closer{*fd};
      if (ctx != nullptr) status = VerifyTls(ctx.get(), *fd, e.addr.host, options.domain, deadline);
    }
    if (!status.ok()) {
      out.rejected.push_back(absl::StrCat("\"", url, "\" failed to dial (", status.message(), ")"));
      continue;
    }
    out.endpoints.push_back(std::move(e));
  }
  return out;
}

}  // namespace keel::proxy::tcp
