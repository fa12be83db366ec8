#pragma once

// `--namespace=P`: a Backend decorator that keeps a client inside the key
// prefix P. It prefixes every key on the way in and strips P from every key on
// the way out (spec/proxy.md 2.9), with our fixes: the correct prefix end for
// "\x00" range ends, empty keys refused with etcd's own error, Lock and
// Election namespaced too (scenario 42), and no key outside P ever returned.

#include <memory>
#include <string>

#include "api/backend.h"
#include "namespace/key_prefix.h"

namespace keel::ns {

// Thread-safe (stateless besides the immutable prefix). Calls that carry no
// keys (Compact, LeaseGrant/Revoke/Leases/KeepAlive, Cluster, Maintenance,
// Auth) pass through unchanged. Completions and stream callbacks run on the
// inner backend's threads. In-flight calls and streams may outlive this
// object; `inner` must outlive both.
class NamespaceBackend final : public api::ForwardingBackend {
 public:
  // REQUIRES: !prefix.empty(). `inner` must outlive this.
  NamespaceBackend(api::Backend& inner, std::string prefix);

  // KV. A Range, DeleteRange or Put with an empty key, or a Txn with one in
  // any of its operations (nested ones included), fails with
  // EtcdStatus(kEmptyKey) (INVALID_ARGUMENT "etcdserver: key is not
  // provided", as etcd answers) and reaches nothing. Keys and range ends are
  // mapped as KeyPrefix does; response keys are stripped.
  void Range(const api::CallContext& ctx, ::etcdserverpb::RangeRequest request,
             api::Done<::etcdserverpb::RangeResponse> done) override;
  void Put(const api::CallContext& ctx, ::etcdserverpb::PutRequest request,
           api::Done<::etcdserverpb::PutResponse> done) override;
  void DeleteRange(const api::CallContext& ctx, ::etcdserverpb::DeleteRangeRequest request,
                   api::Done<::etcdserverpb::DeleteRangeResponse> done) override;
  void Txn(const api::CallContext& ctx, ::etcdserverpb::TxnRequest request,
           api::Done<::etcdserverpb::TxnResponse> done) override;

  // Only the lease's keys inside P are returned, stripped.
  void LeaseTimeToLive(const api::CallContext& ctx, ::etcdserverpb::LeaseTimeToLiveRequest request,
                       api::Done<::etcdserverpb::LeaseTimeToLiveResponse> done) override;

  // Lock: name → P+name, the returned key stripped. Unlock: key → P+key; an
  // empty key fails with EtcdStatus(kEmptyKey).
  void Lock(const api::CallContext& ctx, ::v3lockpb::LockRequest request,
            api::Done<::v3lockpb::LockResponse> done) override;
  void Unlock(const api::CallContext& ctx, ::v3lockpb::UnlockRequest request,
              api::Done<::v3lockpb::UnlockResponse> done) override;

  // Election: names and leader keys prefixed, returned ones stripped. An
  // empty leader key in Proclaim or Resign fails with EtcdStatus(kEmptyKey).
  void Campaign(const api::CallContext& ctx, ::v3electionpb::CampaignRequest request,
                api::Done<::v3electionpb::CampaignResponse> done) override;
  void Proclaim(const api::CallContext& ctx, ::v3electionpb::ProclaimRequest request,
                api::Done<::v3electionpb::ProclaimResponse> done) override;
  void Leader(const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
              api::Done<::v3electionpb::LeaderResponse> done) override;
  void Resign(const api::CallContext& ctx, ::v3electionpb::ResignRequest request,
              api::Done<::v3electionpb::ResignResponse> done) override;

  // Watch: create requests mapped (an empty key with an empty range_end
  // watches exactly the key P), event keys stripped; cancel and progress
  // requests and every other response pass through.
  std::unique_ptr<api::WatchStream> Watch(
      const api::CallContext& ctx,
      api::StreamObserver<::etcdserverpb::WatchResponse>* observer) override;
  // Observe: name prefixed, every response's kv.key stripped.
  std::unique_ptr<api::ReadStream> Observe(
      const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
      api::StreamObserver<::v3electionpb::LeaderResponse>* observer) override;

 private:
  // Shared with in-flight completions and streams, which may outlive this.
  std::shared_ptr<const KeyPrefix> prefix_;
};

}  // namespace keel::ns
