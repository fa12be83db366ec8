// Registration, ClusterViewBackend and HealthChecker over the remote Backend
// against a real etcd 3.4 (spec/proxy.md 2.6, 2.13; scenarios 39, 43, 44),
// read back with etcdctl.

#include <grpcpp/security/credentials.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "api/backend.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "common/url.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proxy/grpc/cluster_view.h"
#include "proxy/grpc/health.h"
#include "proxy/grpc/registration.h"
#include "proxy/grpc/remote_backend.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::proxy::grpcproxy {
namespace {

using testutil::EtcdCluster;
using testutil::WaitFor;

constexpr std::chrono::seconds kWait(60);

RemoteOptions OptionsFor(const EtcdCluster& cluster) {
  RemoteOptions options;
  options.endpoints = {cluster.ClientAddr(0)};
  options.credentials = grpc::InsecureChannelCredentials();
  return options;
}

// One registered key as etcdctl shows it.
struct Stored {
  std::string value;
  int64_t lease = 0;
};

// The keys under `prefix` read with `etcdctl get --prefix -w json`.
std::optional<std::map<std::string, Stored>> ReadPrefix(const EtcdCluster& cluster,
                                                        const std::string& prefix) {
  testutil::CommandResult r =
      EtcdCluster::Etcdctl(cluster.ClientAddr(0), {"get", "--prefix", prefix, "-w", "json"});
  if (r.exit_code != 0) return std::nullopt;
  nlohmann::json json = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return std::nullopt;
  std::map<std::string, Stored> out;
  for (const nlohmann::json& kv : json.value("kvs", nlohmann::json::array())) {
    // etcdctl prints keys and values base64-encoded.
    auto decode = [&kv](const char* field) {
      std::string text;
      absl::Base64Unescape(kv.value(field, std::string()), &text);
      return text;
    };
    out[decode("key")] = Stored{decode("value"), kv.value("lease", int64_t{0})};
  }
  return out;
}

absl::StatusOr<etcdserverpb::MemberListResponse> MemberList(api::Backend& backend) {
  absl::Notification done;
  absl::StatusOr<etcdserverpb::MemberListResponse> result;
  api::CallContext ctx;
  ctx.deadline = absl::Now() + absl::Seconds(10);
  backend.MemberList(ctx, etcdserverpb::MemberListRequest{},
                     [&](absl::StatusOr<etcdserverpb::MemberListResponse> r) {
                       result = std::move(r);
                       done.Notify();
                     });
  done.WaitForNotification();
  return result;
}

TEST(ClusterEtcd, RegistrationsAreListedAndRenewed) {
  EtcdCluster cluster;
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  RemoteBackend remote(OptionsFor(cluster));

  const std::string addr_a = absl::StrCat("127.0.0.1:", testutil::FreePort());
  const std::string addr_b = absl::StrCat("127.0.0.1:", testutil::FreePort());
  Registration a(remote, RegistrationOptions{"pfx", 5, addr_a, "host-a"});
  auto b = std::make_unique<Registration>(remote, RegistrationOptions{"pfx", 5, addr_b, "host-b"});
  a.Start();
  b->Start();

  std::map<std::string, Stored> stored;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto read = ReadPrefix(cluster, "pfx/");
        if (!read.has_value()) return false;
        stored = *read;
        return stored.size() == 2;
      },
      kWait));
  // Exactly what etcd's own grpc-proxy writes (spec 2.6), on a lease.
  ASSERT_EQ(stored.count("pfx/" + addr_a), 1u);
  EXPECT_EQ(
      stored["pfx/" + addr_a].value,
      absl::StrCat(R"({"Op":0,"Addr":")", addr_a, R"(","Metadata":"{\"name\":\"host-a\"}"})"));
  const int64_t lease_a = stored["pfx/" + addr_a].lease;
  EXPECT_NE(lease_a, 0);
  EXPECT_NE(stored["pfx/" + addr_b].lease, 0);
  testutil::CommandResult ttl = EtcdCluster::Etcdctl(
      cluster.ClientAddr(0), {"lease", "timetolive", absl::StrFormat("%x", lease_a), "-w", "json"});
  ASSERT_EQ(ttl.exit_code, 0) << ttl.err;
  nlohmann::json ttl_json = nlohmann::json::parse(ttl.out, nullptr, false);
  EXPECT_EQ(ttl_json.value("granted-ttl", int64_t{0}), 5) << ttl.out;

  // Both proxies are listed by any proxy sharing the prefix.
  ClusterViewBackend view(remote, ClusterViewOptions{addr_a, "pfx", "host-a"});
  absl::StatusOr<etcdserverpb::MemberListResponse> members = MemberList(view);
  ASSERT_TRUE(members.ok()) << members.status();
  EXPECT_FALSE(members->has_header());
  ASSERT_EQ(members->members_size(), 2);
  std::map<std::string, std::string> listed;
  for (const etcdserverpb::Member& m : members->members()) {
    ASSERT_EQ(m.clienturls_size(), 1);
    listed[m.clienturls(0)] = m.name();
    EXPECT_EQ(m.id(), 0u);
  }
  EXPECT_EQ(listed, (std::map<std::string, std::string>{{addr_a, "host-a"}, {addr_b, "host-b"}}));

  // Without the view, MemberList is etcd's own (with its header).
  absl::StatusOr<etcdserverpb::MemberListResponse> real = MemberList(remote);
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_TRUE(real->has_header());
  ASSERT_EQ(real->members_size(), 1);
  EXPECT_NE(real->members(0).id(), 0u);

  // Losing the lease (revoked behind the proxy's back): registered again.
  testutil::CommandResult revoke = EtcdCluster::Etcdctl(
      cluster.ClientAddr(0), {"lease", "revoke", absl::StrFormat("%x", lease_a)});
  ASSERT_EQ(revoke.exit_code, 0) << revoke.err;
  EXPECT_TRUE(WaitFor(
      [&] {
        auto read = ReadPrefix(cluster, "pfx/" + addr_a);
        return read.has_value() && read->size() == 1 && read->begin()->second.lease != 0 &&
               read->begin()->second.lease != lease_a;
      },
      kWait));

  // A stopped proxy's key expires with its lease (not revoked).
  b->Stop();
  b.reset();
  EXPECT_TRUE(WaitFor(
      [&] {
        auto read = ReadPrefix(cluster, "pfx/");
        return read.has_value() && read->size() == 1 && read->count("pfx/" + addr_a) == 1;
      },
      kWait));
  members = MemberList(view);
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->members_size(), 1);
  EXPECT_EQ(members->members(0).name(), "host-a");
  a.Stop();
}

// GET /health through the real HTTP server, as curl sees it.
struct Curl {
  int status = 0;
  std::string body;
};
Curl CurlHealth(int port, const std::string& method = "GET") {
  testutil::CommandResult r =
      testutil::RunCommand({"curl", "-s", "-X", method, "-w", "\n%{http_code}",
                            absl::StrCat("http://127.0.0.1:", port, "/health")});
  Curl out;
  size_t nl = r.out.rfind('\n');
  if (r.exit_code != 0 || nl == std::string::npos) return out;
  out.status = std::atoi(r.out.c_str() + nl + 1);
  out.body = r.out.substr(0, nl);
  return out;
}

TEST(ClusterEtcd, HealthFollowsTheBackend) {
  EtcdCluster cluster;
  std::string error;
  ASSERT_TRUE(cluster.Start(&error)) << error;
  RemoteBackend remote(OptionsFor(cluster));
  common::MetricsRegistry metrics;
  HealthChecker health(remote, &metrics);
  common::HttpServer http;
  http.Handle("/health", [&health](const common::HttpRequest& r) { return health.Handle(r); });
  common::HostPort listen;
  listen.host = "127.0.0.1";
  listen.port = 0;
  ASSERT_TRUE(http.Start(listen).ok());

  Curl ok = CurlHealth(http.port());
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, R"({"health":"true","reason":""})");
  Curl post = CurlHealth(http.port(), "POST");
  EXPECT_EQ(post.status, 405);

  // With auth enabled the anonymous probe is refused, which still proves
  // etcd answers (scenario 43; etcd's proxy says false here).
  const std::string endpoint = cluster.ClientAddr(0);
  ASSERT_EQ(EtcdCluster::Etcdctl(endpoint, {"user", "add", "root:rootpw"}).exit_code, 0);
  ASSERT_EQ(EtcdCluster::Etcdctl(endpoint, {"auth", "enable"}).exit_code, 0);
  Curl auth = CurlHealth(http.port());
  EXPECT_EQ(auth.status, 200);
  EXPECT_EQ(auth.body, R"({"health":"true","reason":""})");

  // etcd gone: 503 with the reason.
  cluster.Stop(0);
  Curl down;
  EXPECT_TRUE(WaitFor(
      [&] {
        down = CurlHealth(http.port());
        return down.status == 503;
      },
      kWait));
  EXPECT_EQ(down.body.rfind(R"({"health":"false","reason":"GET ERROR:)", 0), 0u) << down.body;
  EXPECT_GE(metrics.GetCounter("etcd_server_health_failures", "")->Value(), 1u);
  EXPECT_GE(metrics.GetCounter("etcd_server_health_success", "")->Value(), 2u);
  http.Stop();
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
