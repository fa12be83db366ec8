#include "common/url.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/go_quote.h"
#include "common/status.h"

namespace keel::common {
namespace {

absl::Status AddrError(std::string_view addr, std::string_view why) {
  // Go's net.AddrError text: "address <addr>: <why>".
  return absl::InvalidArgumentError(absl::StrCat("address ", ToAbsl(addr), ": ", ToAbsl(why)));
}

// Scheme per RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool IsScheme(std::string_view s) {
  if (s.empty() || !absl::ascii_isalpha(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

// Splits "scheme://authority/path?query#frag". `authority` loses any
// "user@" prefix. False if `text` has no "scheme://".
bool SplitUrl(std::string_view text, std::string_view& scheme, std::string_view& authority,
              std::string_view& path) {
  const size_t sep = text.find("://");
  if (sep == std::string_view::npos || !IsScheme(text.substr(0, sep))) return false;
  scheme = text.substr(0, sep);
  std::string_view rest = text.substr(sep + 3);
  const size_t end = rest.find_first_of("/?#");
  authority = rest.substr(0, end);
  if (const size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  path = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  if (const size_t q = path.find_first_of("?#"); q != std::string_view::npos) {
    path = path.substr(0, q);
  }
  return true;
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view text) {
  // Follows Go's net.SplitHostPort, plus a numeric port check.
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return AddrError(text, "missing ']' in address");
    if (close + 1 == text.size()) return AddrError(text, "missing port in address");
    if (text[close + 1] != ':') return AddrError(text, "missing port in address");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (port.find_first_of("[]:") != std::string_view::npos) {
      return AddrError(text, "too many colons in address");
    }
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return AddrError(text, "missing port in address");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return AddrError(text, "too many colons in address");
    }
    if (host.find_first_of("[]") != std::string_view::npos) {
      return AddrError(text, "unexpected '[' or ']' in address");
    }
  }
  if (port.empty() || port.size() > 5) return AddrError(text, "invalid port");
  int value = 0;
  for (char c : port) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return AddrError(text, "invalid port");
    }
    value = value * 10 + (c - '0');
  }
  if (value > 65535) return AddrError(text, "invalid port");
  return HostPort{std::string(host), value};
}

absl::StatusOr<HostPort> ParseEndpoint(std::string_view text) {
  // etcd's gateway keeps the URL's host part when the value parses as a URL
  // with a host, else uses the value as is, then splits host:port and exits
  // with `error parsing endpoint %q` on failure.
  std::string_view ep = text;
  std::string_view scheme;
  std::string_view authority;
  std::string_view path;
  if (SplitUrl(text, scheme, authority, path)) {
    if (!authority.empty()) ep = authority;
  } else if (text.substr(0, 2) == "//" && text.size() > 2) {
    std::string_view rest = text.substr(2);
    rest = rest.substr(0, rest.find_first_of("/?#"));
    if (const size_t at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
    if (!rest.empty()) ep = rest;
  }
  absl::StatusOr<HostPort> hp = ParseHostPort(ep);
  if (!hp.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("error parsing endpoint ", GoQuote(ep)));
  }
  return hp;
}

absl::StatusOr<Url> ParseUrl(std::string_view text) {
  std::string_view scheme;
  std::string_view authority;
  std::string_view path;
  if (!SplitUrl(text, scheme, authority, path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL ", GoQuote(text), " has no scheme (want scheme://host:port)"));
  }
  absl::StatusOr<HostPort> hp = ParseHostPort(authority);
  if (!hp.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL ", GoQuote(text), ": ", hp.status().message()));
  }
  Url url;
  url.scheme = absl::AsciiStrToLower(ToAbsl(scheme));
  url.host_port = *std::move(hp);
  url.path = std::string(path);
  return url;
}

std::vector<std::string> SplitCommaList(std::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view item : absl::StrSplit(ToAbsl(text), ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (!item.empty()) out.emplace_back(item);
  }
  return out;
}

}  // namespace keel::common
