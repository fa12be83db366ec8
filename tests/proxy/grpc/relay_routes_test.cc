// Which methods the frame relay sends straight to etcd (proxy/grpc/relay_routes.h).

#include "proxy/grpc/relay_routes.h"

#include <string>

#include "gtest/gtest.h"

namespace keel::proxy::grpcproxy {
namespace {

const RelayRoute& Route(const RelayRoutes& routes, const std::string& path) {
  const RelayRoute* route = routes.Find(path);
  EXPECT_NE(route, nullptr) << path;
  static const RelayRoute kMissing;
  return route != nullptr ? *route : kMissing;
}

TEST(RelayRoutesTest, WithoutLayersOnlyCoalescingAndTheClusterViewUseTheChain) {
  RelayRoutes routes({/*cache=*/false, /*namespaced=*/false}, nullptr);
  for (const char* path :
       {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Maintenance/Snapshot", "/etcdserverpb.Auth/UserAdd",
        "/v3lockpb.Lock/Lock", "/v3electionpb.Election/Observe"}) {
    EXPECT_TRUE(Route(routes, path).pass_through) << path;
    EXPECT_EQ(Route(routes, path).on_ok, OkHook::kNone) << path;
  }
  for (const char* path : {"/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive",
                           "/etcdserverpb.Cluster/MemberList"}) {
    EXPECT_FALSE(Route(routes, path).pass_through) << path;
  }
  // The relay serves against the chain itself the two coalesced streams and
  // the unary calls that use the chain (MemberList); the server streams run
  // through the chain's gRPC server; what passes straight to etcd is not
  // local.
  for (const char* path : {"/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive",
                           "/etcdserverpb.Cluster/MemberList"}) {
    EXPECT_TRUE(Route(routes, path).local) << path;
  }
  for (const char* path : {"/etcdserverpb.KV/Range", "/etcdserverpb.Maintenance/Snapshot",
                           "/v3electionpb.Election/Observe"}) {
    EXPECT_FALSE(Route(routes, path).local) << path;
  }
  EXPECT_EQ(routes.Find("/etcdserverpb.KV/NoSuchMethod"), nullptr);
  EXPECT_EQ(routes.Find("/grpc.health.v1.Health/Check"), nullptr);
}

TEST(RelayRoutesTest, CacheKeepsRangeAndHooksWritesAndAuthChanges) {
  RelayRoutes routes({/*cache=*/true, /*namespaced=*/false}, nullptr);
  EXPECT_FALSE(Route(routes, "/etcdserverpb.KV/Range").pass_through);
  EXPECT_TRUE(Route(routes, "/etcdserverpb.KV/Range").cache_read);
  EXPECT_TRUE(Route(routes, "/etcdserverpb.KV/Range").local);
  EXPECT_FALSE(Route(routes, "/etcdserverpb.KV/Txn").cache_read);
  for (const char* path : {"/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
                           "/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Compact",
                           "/etcdserverpb.Lease/LeaseRevoke", "/v3lockpb.Lock/Lock",
                           "/v3lockpb.Lock/Unlock", "/v3electionpb.Election/Campaign",
                           "/v3electionpb.Election/Proclaim", "/v3electionpb.Election/Resign"}) {
    EXPECT_TRUE(Route(routes, path).pass_through) << path;
    EXPECT_EQ(Route(routes, path).on_ok, OkHook::kNoteWriteRevision) << path;
  }
  for (const char* path : {"/etcdserverpb.Auth/AuthEnable", "/etcdserverpb.Auth/UserAdd",
                           "/etcdserverpb.Auth/RoleGrantPermission"}) {
    EXPECT_TRUE(Route(routes, path).pass_through) << path;
    EXPECT_EQ(Route(routes, path).on_ok, OkHook::kFlushCache) << path;
  }
  EXPECT_EQ(Route(routes, "/etcdserverpb.Lease/LeaseGrant").on_ok, OkHook::kNone);
  EXPECT_EQ(Route(routes, "/etcdserverpb.Auth/Authenticate").on_ok, OkHook::kNone);
}

TEST(RelayRoutesTest, NamespaceKeepsEveryKeyedMethodInTheChain) {
  RelayRoutes routes({/*cache=*/false, /*namespaced=*/true}, nullptr);
  for (const char* path :
       {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn", "/etcdserverpb.Lease/LeaseTimeToLive", "/v3lockpb.Lock/Lock",
        "/v3lockpb.Lock/Unlock", "/v3electionpb.Election/Campaign",
        "/v3electionpb.Election/Proclaim", "/v3electionpb.Election/Leader",
        "/v3electionpb.Election/Resign", "/v3electionpb.Election/Observe",
        "/etcdserverpb.Watch/Watch"}) {
    EXPECT_FALSE(Route(routes, path).pass_through) << path;
    // Served by the relay against the chain, but for the server stream.
    EXPECT_EQ(Route(routes, path).local != nullptr, std::string(path) != "/v3electionpb.Election/Observe")
        << path;
  }
  // Keyless methods still pass (Compact takes a revision, not a key).
  for (const char* path : {"/etcdserverpb.KV/Compact", "/etcdserverpb.Lease/LeaseGrant",
                           "/etcdserverpb.Lease/LeaseRevoke", "/etcdserverpb.Maintenance/Status",
                           "/etcdserverpb.Auth/UserAdd"}) {
    EXPECT_TRUE(Route(routes, path).pass_through) << path;
  }
}

// The cache sits below the namespace layer and holds prefixed keys: the
// relay must not answer a client's raw key from it.
TEST(RelayRoutesTest, NoCacheReadsUnderANamespace) {
  RelayRoutes routes({/*cache=*/true, /*namespaced=*/true}, nullptr);
  EXPECT_FALSE(Route(routes, "/etcdserverpb.KV/Range").cache_read);
  EXPECT_FALSE(Route(routes, "/etcdserverpb.KV/Range").pass_through);
  EXPECT_FALSE(Route(routes, "/etcdserverpb.KV/Put").pass_through);
}

TEST(RelayRoutesTest, OnlyReadOnlyMethodsMayBeSentTwice) {
  RelayRoutes routes({false, false}, nullptr);
  for (const char* path : {"/etcdserverpb.KV/Range", "/etcdserverpb.Lease/LeaseLeases",
                           "/etcdserverpb.Maintenance/Status", "/etcdserverpb.Maintenance/HashKV",
                           "/v3electionpb.Election/Leader"}) {
    EXPECT_TRUE(Route(routes, path).read_only) << path;
  }
  for (const char* path : {"/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn",
                           "/etcdserverpb.Maintenance/Alarm", "/v3lockpb.Lock/Lock",
                           "/etcdserverpb.Maintenance/Defragment"}) {
    EXPECT_FALSE(Route(routes, path).read_only) << path;
  }
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
