#include "proxy/tcp/gateway_flags.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace keel::proxy::tcp {
namespace {

TEST(GatewayFlags, DefaultsAreEtcds) {
  absl::StatusOr<GatewayConfig> c = ParseGatewayStartArgs({});
  ASSERT_TRUE(c.ok()) << c.status();
  const GatewayOptions& g = c->gateway;
  EXPECT_EQ(g.endpoints.listen, (common::HostPort{"127.0.0.1", 23790}));
  EXPECT_EQ(g.endpoints.static_endpoints, std::vector<std::string>{"127.0.0.1:2379"});
  EXPECT_EQ(g.endpoints.discovery.domain, "");
  EXPECT_EQ(g.endpoints.discovery.service_name, "");
  EXPECT_FALSE(g.endpoints.discovery.insecure);
  EXPECT_EQ(g.endpoints.discovery.trusted_ca_file, "");
  EXPECT_EQ(g.retry_delay, absl::Minutes(1));
  EXPECT_EQ(g.dial_timeout, absl::Seconds(1));
  EXPECT_EQ(g.health_check_interval, absl::ZeroDuration());
  EXPECT_EQ(g.drain_timeout, absl::Seconds(10));
  EXPECT_FALSE(g.metrics_addr.has_value());
  EXPECT_EQ(g.loops, 0);
  EXPECT_EQ(c->log.format, common::LogFormat::kJson);
  EXPECT_EQ(c->log.level, spdlog::level::info);
}

TEST(GatewayFlags, EveryFlagIsParsed) {
  absl::StatusOr<GatewayConfig> c = ParseGatewayStartArgs({
      "--listen-addr=0.0.0.0:3000",
      "--endpoints=http://a:1,b:2",
      "--endpoints",
      "c:3",
      "--discovery-srv=example.com",
      "--discovery-srv-name=prod",
      "--insecure-discovery",
      "--trusted-ca-file=/ca.pem",
      "--retry-delay=5s",
      "--dial-timeout=250ms",
      "--health-check-interval=2s",
      "--drain-timeout=1m30s",
      "--metrics-addr=http://127.0.0.1:9000",
      "--loops=3",
      "--log-format=text",
      "--log-level=warn",
  });
  ASSERT_TRUE(c.ok()) << c.status();
  const GatewayOptions& g = c->gateway;
  EXPECT_EQ(g.endpoints.listen, (common::HostPort{"0.0.0.0", 3000}));
  EXPECT_EQ(g.endpoints.static_endpoints, (std::vector<std::string>{"http://a:1", "b:2", "c:3"}));
  EXPECT_EQ(g.endpoints.discovery.domain, "example.com");
  EXPECT_EQ(g.endpoints.discovery.service_name, "prod");
  EXPECT_TRUE(g.endpoints.discovery.insecure);
  EXPECT_EQ(g.endpoints.discovery.trusted_ca_file, "/ca.pem");
  EXPECT_EQ(g.retry_delay, absl::Seconds(5));
  EXPECT_EQ(g.dial_timeout, absl::Milliseconds(250));
  EXPECT_EQ(g.health_check_interval, absl::Seconds(2));
  EXPECT_EQ(g.drain_timeout, absl::Seconds(90));
  ASSERT_TRUE(g.metrics_addr.has_value());
  EXPECT_EQ(*g.metrics_addr, (common::HostPort{"127.0.0.1", 9000}));
  EXPECT_EQ(g.loops, 3);
  EXPECT_EQ(c->log.format, common::LogFormat::kText);
  EXPECT_EQ(c->log.level, spdlog::level::warn);
}

TEST(GatewayFlags, EnvironmentVariablesAndCommandLinePrecedence) {
  setenv("ETCD_RETRY_DELAY", "7s", 1);
  setenv("ETCD_ENDPOINTS", "x:1,y:2", 1);
  setenv("ETCD_LISTEN_ADDR", "127.0.0.1:5555", 1);
  absl::StatusOr<GatewayConfig> c = ParseGatewayStartArgs({"--listen-addr=127.0.0.1:6666"});
  unsetenv("ETCD_RETRY_DELAY");
  unsetenv("ETCD_ENDPOINTS");
  unsetenv("ETCD_LISTEN_ADDR");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->gateway.retry_delay, absl::Seconds(7));
  EXPECT_EQ(c->gateway.endpoints.static_endpoints, (std::vector<std::string>{"x:1", "y:2"}));
  EXPECT_EQ(c->gateway.endpoints.listen.port, 6666);  // the flag wins
}

TEST(GatewayFlags, ErrorsUseEtcdsWords) {
  auto error = [](std::vector<std::string> args) {
    absl::StatusOr<GatewayConfig> c = ParseGatewayStartArgs(args);
    return c.ok() ? std::string("ok") : std::string(c.status().message());
  };
  EXPECT_EQ(error({"--bogus"}), "unknown flag: --bogus");
  EXPECT_EQ(error({"--bogus=1"}), "unknown flag: --bogus");
  EXPECT_EQ(error({"-x"}), "unknown shorthand flag: 'x' in -x");
  EXPECT_EQ(error({"--retry-delay=123"}),
            "invalid argument \"123\" for \"--retry-delay\" flag: time: missing unit in duration "
            "\"123\"");
  EXPECT_EQ(error({"--listen-addr=foo"}), "failed to validate listen address: foo");
  EXPECT_EQ(error({"--dial-timeout=0s"}),
            "invalid value for --dial-timeout: must be greater than 0s");
  EXPECT_EQ(error({"--metrics-addr=127.0.0.1:9000"}),
            "invalid value \"127.0.0.1:9000\" for --metrics-addr: want http://host:port");
  EXPECT_EQ(error({"--log-format=xml"}),
            "invalid value \"xml\" for --log-format: want json or text");
  EXPECT_NE(error({"--log-level=loud"}).find("--log-level"), std::string::npos);
  EXPECT_NE(error({"--loops=-1"}).find("--loops"), std::string::npos);
  // etcd ignores positional arguments.
  EXPECT_EQ(error({"extra"}), "ok");
}

TEST(GatewayFlags, EndpointsTakeOneValuePerOccurrence) {
  absl::StatusOr<GatewayConfig> c =
      ParseGatewayStartArgs({"--endpoints", "a:1", "positional", "--endpoints=b:2,c:3"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->gateway.endpoints.static_endpoints, (std::vector<std::string>{"a:1", "b:2", "c:3"}));
}

TEST(GatewayFlags, AnExplicitlyEmptyValueIsEmpty) {
  absl::StatusOr<GatewayConfig> c =
      ParseGatewayStartArgs({"--endpoints=", "--listen-addr=127.0.0.1:7000"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->gateway.endpoints.static_endpoints.empty());
  EXPECT_EQ(c->gateway.endpoints.listen.port, 7000);
  EXPECT_EQ(SplitEmptyFlagValues({"--a=", "--b=c", "x=", "--", "--d="}),
            (std::vector<std::string>{"--a", "", "--b=c", "x=", "--", "--d="}));
  absl::StatusOr<GatewayConfig> bad = ParseGatewayStartArgs({"--retry-delay="});
  EXPECT_EQ(bad.status().message(),
            "invalid argument \"\" for \"--retry-delay\" flag: time: invalid duration \"\"");
}

TEST(GatewayFlags, HelpIsNotAnError) {
  absl::StatusOr<GatewayConfig> c = ParseGatewayStartArgs({"--help"});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace keel::proxy::tcp
