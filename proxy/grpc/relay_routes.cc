#include "proxy/grpc/relay_routes.h"

#include <initializer_list>

#include "absl/container/flat_hash_set.h"
#include "api/backend.h"
#include "proxy/grpc/grpc_services.h"
#include "proxy/grpc/local_call.h"

namespace keel::proxy::grpcproxy {
namespace {

using api::server::RpcType;

// The same methods remote_backend.cc may retry on another endpoint.
// (Alarm is read-only only for GET; the relay cannot see that without
// decoding, so it is treated as a write.)
const absl::flat_hash_set<std::string_view>& ReadOnlyMethods() {
  static const auto* methods = new absl::flat_hash_set<std::string_view>{
      "Range",    "LeaseTimeToLive", "LeaseLeases", "MemberList", "Status",
      "Hash",     "HashKV",          "AuthStatus",  "UserGet",    "UserList",
      "RoleGet",  "RoleList",        "Leader"};
  return *methods;
}

}  // namespace

RelayRoutes::RelayRoutes(const RelayRouteOptions& options, common::MetricsRegistry* metrics) {
  // Methods some layer of the chain changes, so they must run through it.
  absl::flat_hash_set<std::string_view> through_chain = {"MemberList", "Watch",
                                                          "LeaseKeepAlive"};
  if (options.namespaced) {
    for (std::string_view m : {"Range", "Put", "DeleteRange", "Txn", "LeaseTimeToLive", "Lock",
                               "Unlock", "Campaign", "Proclaim", "Leader", "Resign", "Observe"}) {
      through_chain.insert(m);
    }
  }
  absl::flat_hash_set<std::string_view> note_write;
  absl::flat_hash_set<std::string_view> flush_cache;
  if (options.cache) {
    through_chain.insert("Range");
    // Mirrors CachingBackend's KEEL_CACHE_WRITE and KEEL_CACHE_AUTH lists.
    note_write = {"Put",  "DeleteRange", "Txn",      "Compact",  "LeaseRevoke",
                  "Lock", "Unlock",      "Campaign", "Proclaim", "Resign"};
    flush_cache = {"AuthEnable",    "AuthDisable",    "UserAdd",
                   "UserDelete",    "UserChangePassword", "UserGrantRole",
                   "UserRevokeRole", "RoleAdd",        "RoleDelete",
                   "RoleGrantPermission", "RoleRevokePermission"};
  }

  auto add = [&](std::string_view service, std::string_view method, RpcType type) {
    metrics_.emplace_back(metrics, type, std::string(service), std::string(method));
    RelayRoute route;
    route.pass_through = !through_chain.contains(method);
    route.read_only = ReadOnlyMethods().contains(method);
    if (note_write.contains(method)) route.on_ok = OkHook::kNoteWriteRevision;
    if (flush_cache.contains(method)) route.on_ok = OkHook::kFlushCache;
    // Not under a namespace: the cache holds prefixed keys below it.
    route.cache_read = options.cache && !options.namespaced && method == "Range";
    route.metrics = &metrics_.back();
    std::string path = MethodPath(service, method);
    // Streams the relay serves itself, and unary calls that must run
    // through the chain (the rest go straight to etcd).
    if (type != RpcType::kUnary || !route.pass_through) route.local = LocalCallFactoryFor(path);
    routes_.emplace(std::move(path), route);
  };
#define KEEL_RELAY_ROUTE(service, method, Request, Response) \
  add(remote_services::service::service_full_name(), #method, RpcType::kUnary);
  KEEL_UNARY_METHODS(KEEL_RELAY_ROUTE)
#undef KEEL_RELAY_ROUTE
  add(remote_services::Watch::service_full_name(), "Watch", RpcType::kBidiStream);
  add(remote_services::Lease::service_full_name(), "LeaseKeepAlive", RpcType::kBidiStream);
  add(remote_services::Maintenance::service_full_name(), "Snapshot", RpcType::kServerStream);
  add(remote_services::Election::service_full_name(), "Observe", RpcType::kServerStream);
}

const RelayRoute* RelayRoutes::Find(std::string_view path) const {
  // absl::string_view: Debian's Abseil does not alias it to std::string_view.
  auto it = routes_.find(absl::string_view(path.data(), path.size()));
  return it == routes_.end() ? nullptr : &it->second;
}

}  // namespace keel::proxy::grpcproxy
