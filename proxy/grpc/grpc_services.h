#pragma once

#include <string>
#include <string_view>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "api/v3electionpb/v3election.grpc.pb.h"
#include "api/v3lockpb/v3lock.grpc.pb.h"

namespace keel::proxy::grpcproxy {

// The generated service classes, by the service names KEEL_UNARY_METHODS
// (api/backend.h) uses: their stubs, and service_full_name() for paths.
namespace remote_services {
using KV = ::etcdserverpb::KV;
using Watch = ::etcdserverpb::Watch;
using Lease = ::etcdserverpb::Lease;
using Cluster = ::etcdserverpb::Cluster;
using Maintenance = ::etcdserverpb::Maintenance;
using Auth = ::etcdserverpb::Auth;
using Lock = ::v3lockpb::Lock;
using Election = ::v3electionpb::Election;
}  // namespace remote_services

// A method's HTTP/2 :path, "/<service full name>/<method>".
inline std::string MethodPath(std::string_view service, std::string_view method) {
  std::string path;
  path.reserve(service.size() + method.size() + 2);
  path.append("/").append(service).append("/").append(method);
  return path;
}

}  // namespace keel::proxy::grpcproxy
