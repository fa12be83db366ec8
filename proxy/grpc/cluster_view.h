#pragma once

// MemberList as etcd's grpc-proxy answers it (spec/proxy.md 2.6): clients that
// sync their endpoints through a proxy must discover proxies, not the etcd
// members behind them.

#include <string>

#include "api/backend.h"

namespace keel::proxy::grpcproxy {

// How the proxy presents the cluster to its clients.
struct ClusterViewOptions {
  std::string advertise_client_url;  // empty: MemberList passes through to etcd
  std::string resolver_prefix;       // empty: MemberList lists only this proxy
  std::string hostname;              // member name in synthetic entries (OS hostname)
};

// A Backend decorator that answers Cluster.MemberList from the proxy's own
// view and forwards every other call to `inner` unchanged.
//  - advertise_client_url empty: MemberList passes through (etcd's members,
//    with etcd's header).
//  - advertise set, no resolver_prefix: one member {name = hostname,
//    client_urls = [advertise]}, ID 0, no peer URLs and no header.
//  - advertise and prefix set: every proxy registered under prefix + "/" (see
//    Registration), read with a serializable prefix Range through `inner` (so
//    the namespace decorator below applies, as in etcd), in key order; each
//    {name = the registration's metadata name, client_urls = [its Addr]}, ID 0,
//    no header. Registrations with Op 1 (delete) are skipped and an Addr listed
//    twice is listed once. When none is registered: the synthetic self entry.
// Errors of that MemberList: the Range's error unchanged; INTERNAL
// "grpcproxy: cannot decode the registration at <key>: <why>" when a value is
// not a registration (etcd's proxy fails MemberList too, with Go's JSON error).
// The Range carries the caller's CallContext (token, deadline).
// Thread-safe; `inner` must outlive this object.
class ClusterViewBackend final : public api::ForwardingBackend {
 public:
  ClusterViewBackend(api::Backend& inner, ClusterViewOptions options);

  // See the class comment. `done` runs once, maybe on the inner Range's thread.
  void MemberList(const api::CallContext& ctx, etcdserverpb::MemberListRequest request,
                  api::Done<etcdserverpb::MemberListResponse> done) override;

 private:
  const ClusterViewOptions options_;
};

}  // namespace keel::proxy::grpcproxy
