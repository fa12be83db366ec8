#include "proxy/tcp/endpoint_config.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace keel::proxy::tcp {
namespace {

// Text form of an address as inet_ntop prints it ("127.0.0.1", "::1").
std::string AddrText(const sockaddr* sa) {
  char text[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, text, sizeof(text));
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, text, sizeof(text));
  }
  return text;
}

// The addresses `host` resolves to through the system resolver (like Go's
// net.LookupHost); empty on failure.
std::vector<std::string> LookupHost(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return {};
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(res, &freeaddrinfo);
  std::vector<std::string> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    std::string text = AddrText(ai->ai_addr);
    if (!text.empty() && std::find(out.begin(), out.end(), text) == out.end()) {
      out.push_back(std::move(text));
    }
  }
  return out;
}

bool IsV4(const std::string& ip) {
  in_addr a;
  return inet_pton(AF_INET, ip.c_str(), &a) == 1;
}

bool IsV4Loopback(const std::string& ip) {
  in_addr a;
  return inet_pton(AF_INET, ip.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

// Which endpoint IPs a listener on `listen.host` would accept connections for.
class ListenMatcher {
 public:
  // Unavailable `failed to resolve listen host: <host>`.
  static absl::StatusOr<ListenMatcher> Make(const std::string& host) {
    ListenMatcher m;
    if (host.empty() || host == "0.0.0.0" || host == "::") {
      // Linux: "::" is dual-stack by default, "0.0.0.0" takes IPv4 only.
      m.wildcard_v4_ = true;
      m.wildcard_v6_ = host != "0.0.0.0";
      ifaddrs* ifs = nullptr;
      if (getifaddrs(&ifs) == 0) {
        for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
          if (i->ifa_addr == nullptr) continue;
          std::string text = AddrText(i->ifa_addr);
          if (!text.empty()) m.addrs_.insert(std::move(text));
        }
        freeifaddrs(ifs);
      }
      return m;
    }
    std::vector<std::string> addrs = LookupHost(host);
    if (addrs.empty()) {
      return absl::UnavailableError(absl::StrCat("failed to resolve listen host: ", host));
    }
    m.addrs_.insert(addrs.begin(), addrs.end());
    return m;
  }

  bool Matches(const std::string& ip) const {
    if (!wildcard_v4_) return addrs_.count(ip) > 0;
    if (IsV4(ip)) return IsV4Loopback(ip) || addrs_.count(ip) > 0;
    return wildcard_v6_ && (ip == "::1" || addrs_.count(ip) > 0);
  }

 private:
  bool wildcard_v4_ = false;
  bool wildcard_v6_ = false;
  std::set<std::string> addrs_;
};

}  // namespace

absl::Status ValidateEndpoints(const common::HostPort& listen,
                               const std::vector<Endpoint>& endpoints) {
  absl::StatusOr<ListenMatcher> matcher = ListenMatcher::Make(listen.host);
  if (!matcher.ok()) return matcher.status();
  for (const Endpoint& e : endpoints) {
    const std::vector<std::string> addrs = LookupHost(e.addr.host);
    if (addrs.empty()) {
      return absl::UnavailableError(absl::StrCat("failed to resolve endpoint host: ", e.addr.host));
    }
    if (e.addr.port != listen.port) continue;
    for (const std::string& ip : addrs) {
      if (matcher->Matches(ip)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "SRV or endpoint (", EtcdSrvName(e, /*with_scheme=*/false), "->", ip, ":", e.addr.port,
            ") should not resolve to the gateway listen addr (", listen.ToString(), ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ResolvedEndpoints> ResolveEndpoints(const EndpointConfig& config) {
  ResolvedEndpoints out;
  const DiscoveryOptions& d = config.discovery;
  if (!d.domain.empty()) {
    auto logger = common::Logger("gateway");
    absl::StatusOr<Discovered> found = DiscoverSrvEndpoints(d);
    if (!found.ok()) return found.status();
    common::LogEvent(*logger, spdlog::level::info, "discovered cluster from SRV",
                     {{"srv-server", d.domain}, {"endpoints", found->discovered}});
    if (!d.insecure) {
      std::vector<std::string> kept;
      for (const Endpoint& e : found->endpoints) {
        kept.push_back(EtcdSrvName(e, /*with_scheme=*/true));
      }
      if (!found->rejected.empty()) {
        common::LogEvent(*logger, spdlog::level::warn, "failed to validate discovered endpoints",
                         {{"srv-server", d.domain},
                          {"endpoints", kept},
                          {"error", absl::StrJoin(found->rejected, ",")}});
      } else {
        common::LogEvent(*logger, spdlog::level::info, "using validated discovered SRV endpoints",
                         {{"srv-server", d.domain}, {"endpoints", kept}});
      }
    }
    if (!found->endpoints.empty()) {
      out.endpoints = std::move(found->endpoints);
      out.from_srv = true;
      out.srv_ttl = found->ttl;
    } else {
      common::LogEvent(*logger, spdlog::level::warn,
                       "no usable SRV endpoints; falling back to --endpoints",
                       {{"srv-server", d.domain}, {"endpoints", config.static_endpoints}});
    }
  }
  if (out.endpoints.empty()) {
    for (const std::string& item : config.static_endpoints) {
      absl::StatusOr<common::HostPort> hp = common::ParseEndpoint(item);
      if (!hp.ok()) return hp.status();
      // The scheme is kept (etcd drops it) so that health checks know an
      // https endpoint is not to be asked GET /health in plain text.
      std::string scheme;
      if (absl::StartsWith(item, "https://")) {
        scheme = "https";
      } else if (absl::StartsWith(item, "http://")) {
        scheme = "http";
      }
      out.endpoints.push_back(Endpoint{*std::move(hp), 0, 0, std::move(scheme)});
    }
  }
  if (out.endpoints.empty()) return absl::InvalidArgumentError("no endpoints found");  // etcd's words
  if (absl::Status s = ValidateEndpoints(config.listen, out.endpoints); !s.ok()) return s;
  return out;
}

}  // namespace keel::proxy::tcp
