#include "proxy/grpc/cluster_view.h"

#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "namespace/key_prefix.h"
#include "proxy/grpc/registration.h"

namespace keel::proxy::grpcproxy {
namespace {

// The answer etcd's proxy gives when it only knows itself: no header, ID 0,
// no peer URLs.
etcdserverpb::MemberListResponse SelfOnly(const ClusterViewOptions& options) {
  etcdserverpb::MemberListResponse response;
  etcdserverpb::Member* self = response.add_members();
  self->set_name(options.hostname);
  self->add_clienturls(options.advertise_client_url);
  return response;
}

// The proxies registered in `range` (values of the resolver prefix).
absl::StatusOr<etcdserverpb::MemberListResponse> FromRegistrations(
    const etcdserverpb::RangeResponse& range, const ClusterViewOptions& options) {
  etcdserverpb::MemberListResponse response;
  std::set<std::string> seen;
  for (const mvccpb::KeyValue& kv : range.kvs()) {
    absl::StatusOr<RegisteredEndpoint> endpoint = DecodeRegistrationValue(kv.value());
    if (!endpoint.ok()) {
      return absl::InternalError(absl::StrCat("grpcproxy: cannot decode the registration at ",
                                              kv.key(), ": ", endpoint.status().message()));
    }
    // etcd's proxy folds the updates into a map keyed by Addr: only adds
    // (Op 0) list an address, and each address is listed once.
    if (endpoint->op != 0 || !seen.insert(endpoint->addr).second) continue;
    etcdserverpb::Member* member = response.add_members();
    member->set_name(endpoint->name);
    member->add_clienturls(endpoint->addr);
  }
  if (response.members().empty()) return SelfOnly(options);
  return response;
}

}  // namespace

ClusterViewBackend::ClusterViewBackend(api::Backend& inner, ClusterViewOptions options)
    : api::ForwardingBackend(inner), options_(std::move(options)) {}

void ClusterViewBackend::MemberList(const api::CallContext& ctx,
                                    etcdserverpb::MemberListRequest request,
                                    api::Done<etcdserverpb::MemberListResponse> done) {
  if (options_.advertise_client_url.empty()) {
    inner().MemberList(ctx, std::move(request), std::move(done));
    return;
  }
  if (options_.resolver_prefix.empty()) {
    std::move(done)(SelfOnly(options_));
    return;
  }
  etcdserverpb::RangeRequest range;
  const std::string key = options_.resolver_prefix + "/";
  range.set_key(key);
  range.set_range_end(ns::KeyPrefix::PrefixEnd(key));
  range.set_serializable(true);
  inner().Range(ctx, std::move(range),
                [options = options_, done = std::move(done)](
                    absl::StatusOr<etcdserverpb::RangeResponse> response) mutable {
                  if (!response.ok()) {
                    std::move(done)(response.status());
                    return;
                  }
                  std::move(done)(FromRegistrations(*response, options));
                });
}

}  // namespace keel::proxy::grpcproxy
