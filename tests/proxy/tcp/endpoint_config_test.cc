#include "proxy/tcp/endpoint_config.h"

#include <string>

#include "gtest/gtest.h"

// Only IP literals and "localhost" (/etc/hosts) here: no DNS traffic. Name
// resolution and SRV discovery run in tests/integration/gateway_srv_test.sh
// against a private dnsmasq.

namespace keel::proxy::tcp {
namespace {

Endpoint Ep(const std::string& host, int port) { return Endpoint{{host, port}, 0, 0, ""}; }

EndpointConfig Static(const std::string& listen_host, int listen_port,
                      std::vector<std::string> endpoints) {
  EndpointConfig c;
  c.listen = common::HostPort{listen_host, listen_port};
  c.static_endpoints = std::move(endpoints);
  return c;
}

TEST(ResolveEndpoints, StaticListKeepsOrderAndRemembersScheme) {
  absl::StatusOr<ResolvedEndpoints> r = ResolveEndpoints(Static(
      "127.0.0.1", 23790, {"127.0.0.1:2379", "http://127.0.0.2:22379", "https://[::1]:32379"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->from_srv);
  ASSERT_EQ(r->endpoints.size(), 3u);
  EXPECT_EQ(r->endpoints[0], (Endpoint{{"127.0.0.1", 2379}, 0, 0, ""}));
  EXPECT_EQ(r->endpoints[1], (Endpoint{{"127.0.0.2", 22379}, 0, 0, "http"}));
  EXPECT_EQ(r->endpoints[2], (Endpoint{{"::1", 32379}, 0, 0, "https"}));
}

TEST(ResolveEndpoints, PortIsMandatoryWithEtcdsMessage) {
  absl::StatusOr<ResolvedEndpoints> r =
      ResolveEndpoints(Static("127.0.0.1", 23790, {"127.0.0.1:2379", "127.0.0.1"}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "error parsing endpoint \"127.0.0.1\"");
}

TEST(ResolveEndpoints, EmptyListIsAnError) {
  absl::StatusOr<ResolvedEndpoints> r = ResolveEndpoints(Static("127.0.0.1", 23790, {}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "no endpoints found");  // etcd gateway's words
}

TEST(ResolveEndpoints, LoopGuardWithEtcdsMessage) {  // proxy.md section 4, gateway scenario 6
  absl::StatusOr<ResolvedEndpoints> r =
      ResolveEndpoints(Static("127.0.0.1", 2379, {"127.0.0.1:2379"}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(),
            "SRV or endpoint (127.0.0.1:2379->127.0.0.1:2379) should not resolve to the "
            "gateway listen addr (127.0.0.1:2379)");
}

TEST(ValidateEndpoints, LoopGuardThroughListenHostName) {
  absl::Status s = ValidateEndpoints({"localhost", 2379}, {Ep("127.0.0.1", 2379)});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "SRV or endpoint (127.0.0.1:2379->127.0.0.1:2379) should not resolve to the "
            "gateway listen addr (localhost:2379)");
}

TEST(ValidateEndpoints, WildcardListenHostCatchesLoopback) {  // etcd misses this one
  absl::Status s = ValidateEndpoints({"0.0.0.0", 2379}, {Ep("127.0.0.5", 2379)});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "SRV or endpoint (127.0.0.5:2379->127.0.0.5:2379) should not resolve to the "
            "gateway listen addr (0.0.0.0:2379)");
  EXPECT_FALSE(ValidateEndpoints({"", 2379}, {Ep("127.0.0.1", 2379)}).ok());
  EXPECT_FALSE(ValidateEndpoints({"::", 2379}, {Ep("127.0.0.1", 2379)}).ok());
}

TEST(ValidateEndpoints, OtherPortOrOtherAddressIsNoLoop) {
  EXPECT_TRUE(ValidateEndpoints({"127.0.0.1", 2379}, {Ep("127.0.0.1", 2380)}).ok());
  EXPECT_TRUE(ValidateEndpoints({"127.0.0.1", 2379}, {Ep("127.0.0.2", 2379)}).ok());
  EXPECT_TRUE(ValidateEndpoints({"0.0.0.0", 2379}, {Ep("127.0.0.1", 2380)}).ok());
}

TEST(SrvServiceNames, EtcdClientNamesWithOptionalSuffix) {
  DiscoveryOptions o;
  o.domain = "example.test";
  EXPECT_EQ(SrvServiceNames(o), (std::vector<std::string>{"_etcd-client-ssl._tcp.example.test",
                                                          "_etcd-client._tcp.example.test"}));
  o.service_name = "prod";
  EXPECT_EQ(SrvServiceNames(o), (std::vector<std::string>{"_etcd-client-ssl-prod._tcp.example.test",
                                                          "_etcd-client-prod._tcp.example.test"}));
}

}  // namespace
}  // namespace keel::proxy::tcp
