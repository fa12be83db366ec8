#include "common/url.h"

#include <string>
#include <vector>

#include "common/go_quote.h"
#include "gtest/gtest.h"

namespace keel::common {
namespace {

TEST(ParseHostPort, AcceptsHostsAndPorts) {
  EXPECT_EQ(*ParseHostPort("127.0.0.1:2379"), (HostPort{"127.0.0.1", 2379}));
  EXPECT_EQ(*ParseHostPort("localhost:0"), (HostPort{"localhost", 0}));
  EXPECT_EQ(*ParseHostPort("[::1]:2379"), (HostPort{"::1", 2379}));
  EXPECT_EQ(*ParseHostPort("[fe80::1%eth0]:65535"), (HostPort{"fe80::1%eth0", 65535}));
  EXPECT_EQ(*ParseHostPort(":23790"), (HostPort{"", 23790}));
}

TEST(ParseHostPort, RejectsBadInput) {
  for (const char* bad :
       {"127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http", "::1:2379",
        "[::1]", "[::1]2379", "[::1:2379", "a]:1", "", "host:123456"}) {
    absl::StatusOr<HostPort> hp = ParseHostPort(bad);
    EXPECT_FALSE(hp.ok()) << bad;
    EXPECT_EQ(hp.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(hp.status().message().find(bad), absl::string_view::npos) << hp.status();
  }
  EXPECT_EQ(ParseHostPort("127.0.0.1").status().message(),
            "address 127.0.0.1: missing port in address");
}

TEST(HostPort, ToStringBracketsIpv6) {
  EXPECT_EQ((HostPort{"127.0.0.1", 2379}).ToString(), "127.0.0.1:2379");
  EXPECT_EQ((HostPort{"::1", 2379}).ToString(), "[::1]:2379");
  EXPECT_EQ((HostPort{"example.com", 0}).ToString(), "example.com:0");
}

TEST(ParseEndpoint, StripsSchemeAndPath) {
  EXPECT_EQ(*ParseEndpoint("127.0.0.1:2379"), (HostPort{"127.0.0.1", 2379}));
  EXPECT_EQ(*ParseEndpoint("http://127.0.0.1:2379"), (HostPort{"127.0.0.1", 2379}));
  EXPECT_EQ(*ParseEndpoint("https://etcd.example.com:2379/v3/x"),
            (HostPort{"etcd.example.com", 2379}));
  EXPECT_EQ(*ParseEndpoint("http://user:pw@10.0.0.1:2380?x=1"), (HostPort{"10.0.0.1", 2380}));
  EXPECT_EQ(*ParseEndpoint("[::1]:2379"), (HostPort{"::1", 2379}));
  EXPECT_EQ(*ParseEndpoint("http://[::1]:2379"), (HostPort{"::1", 2379}));
  EXPECT_EQ(*ParseEndpoint("localhost:2379"), (HostPort{"localhost", 2379}));
}

TEST(ParseEndpoint, ErrorsUseEtcdText) {
  EXPECT_EQ(ParseEndpoint("127.0.0.1").status().message(), "error parsing endpoint \"127.0.0.1\"");
  EXPECT_EQ(ParseEndpoint("127.0.0.1").status().code(), absl::StatusCode::kInvalidArgument);
  // The scheme is stripped before the check, as etcd does.
  EXPECT_EQ(ParseEndpoint("http://127.0.0.1").status().message(),
            "error parsing endpoint \"127.0.0.1\"");
  EXPECT_EQ(ParseEndpoint("127.0.0.1:70000").status().message(),
            "error parsing endpoint \"127.0.0.1:70000\"");
  EXPECT_EQ(ParseEndpoint("::1:2379").status().message(), "error parsing endpoint \"::1:2379\"");
  EXPECT_FALSE(ParseEndpoint("").ok());
}

TEST(ParseUrl, ParsesSchemeHostPortPath) {
  absl::StatusOr<Url> url = ParseUrl("http://127.0.0.1:2379");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->scheme, "http");
  EXPECT_EQ(url->host_port, (HostPort{"127.0.0.1", 2379}));
  EXPECT_EQ(url->path, "");

  url = ParseUrl("HTTPS://[::1]:443/metrics?x=1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->scheme, "https");
  EXPECT_EQ(url->host_port, (HostPort{"::1", 443}));
  EXPECT_EQ(url->path, "/metrics");

  url = ParseUrl("unix://localhost:2379");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->scheme, "unix");
  EXPECT_EQ(url->host_port, (HostPort{"localhost", 2379}));
}

TEST(ParseUrl, RejectsMissingSchemeOrPort) {
  for (const char* bad : {"127.0.0.1:2379", "http://127.0.0.1", "http://", "://x:1", "1http://a:1",
                          "http://host:99999"}) {
    absl::StatusOr<Url> url = ParseUrl(bad);
    EXPECT_FALSE(url.ok()) << bad;
    EXPECT_EQ(url.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(SplitCommaList, TrimsAndDropsEmpty) {
  EXPECT_EQ(SplitCommaList("a,b"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(SplitCommaList(" a , ,b,, c "), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(SplitCommaList(""), std::vector<std::string>{});
  EXPECT_EQ(SplitCommaList("127.0.0.1:2379"), (std::vector<std::string>{"127.0.0.1:2379"}));
}

TEST(GoQuote, MatchesStrconvQuote) {
  EXPECT_EQ(GoQuote("abc"), "\"abc\"");
  EXPECT_EQ(GoQuote(""), "\"\"");
  EXPECT_EQ(GoQuote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(GoQuote("a\nb\tc\x01"), "\"a\\nb\\tc\\x01\"");
  EXPECT_EQ(GoQuote("\xC2\xB5s"), "\"\xC2\xB5s\"");  // valid UTF-8 kept
  EXPECT_EQ(GoQuote("\xff"), "\"\\xff\"");           // invalid byte escaped
}

}  // namespace
}  // namespace keel::common
