#include "api/server/call_context.h"

#include <chrono>
#include <string>

#include "absl/time/clock.h"

namespace keel::api::server {

namespace {

// etcd's rpctypes.TokenFieldNameGRPC, MetadataRequireLeaderKey and
// MetadataHasLeader. gRPC lower-cases metadata keys on the wire.
constexpr char kTokenKey[] = "token";
constexpr char kRequireLeaderKey[] = "hasleader";
constexpr char kHasLeader[] = "true";

}  // namespace

CallContext CallContextFrom(const grpc::ServerContextBase& context) {
  CallContext ctx;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find(kTokenKey); it != metadata.end()) {
    ctx.token.assign(it->second.data(), it->second.size());
  }
  if (auto it = metadata.find(kRequireLeaderKey); it != metadata.end()) {
    ctx.require_leader = it->second == kHasLeader;
  }
  // gRPC reports "no deadline" as time_point::max().
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    ctx.deadline = absl::FromChrono(deadline);
  }
  return ctx;
}

}  // namespace keel::api::server
