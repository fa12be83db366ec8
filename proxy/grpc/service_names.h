#pragma once

#include <string_view>

namespace keel::proxy::grpcproxy {

// The full gRPC service name of each service of KEEL_UNARY_METHODS
// (api/backend.h), named as the X-macro names it: k##service.
inline constexpr std::string_view kKV = "etcdserverpb.KV";
inline constexpr std::string_view kLease = "etcdserverpb.Lease";
inline constexpr std::string_view kCluster = "etcdserverpb.Cluster";
inline constexpr std::string_view kMaintenance = "etcdserverpb.Maintenance";
inline constexpr std::string_view kAuth = "etcdserverpb.Auth";
inline constexpr std::string_view kLock = "v3lockpb.Lock";
inline constexpr std::string_view kElection = "v3electionpb.Election";

}  // namespace keel::proxy::grpcproxy
