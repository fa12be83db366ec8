#pragma once

// Internal to RemoteBackend: the etcd endpoints (one channel and one set of
// stubs each), the sticky preferred endpoint, and the classification of a
// failed attempt that drives failover. See remote_backend.h for the scheme.

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "api/backend.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "proxy/grpc/grpc_services.h"
#include "proxy/grpc/remote_backend.h"

namespace keel::proxy::grpcproxy {

// How one attempt on one endpoint failed.
enum class AttemptFailure {
  kNone,      // etcd answered (OK or an error of its own): return it
  kNotSent,   // the channel could not connect: nothing reached etcd
  kTransport  // the connection failed while the call was open: may have reached etcd
};

// Classifies the final status of one attempt. Thread-safe.
AttemptFailure ClassifyAttempt(const ::grpc::Status& status);

// Whether a request only reads, so that it may be sent again after a
// transport failure that left its fate unknown (remote_backend.h).
template <class Request>
bool IsReadOnly(const Request&) {
  return false;
}
inline bool IsReadOnly(const ::etcdserverpb::RangeRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::LeaseTimeToLiveRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::LeaseLeasesRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::MemberListRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::StatusRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AlarmRequest& request) {
  return request.action() == ::etcdserverpb::AlarmRequest::GET;
}
inline bool IsReadOnly(const ::etcdserverpb::HashRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::HashKVRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AuthStatusRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AuthUserGetRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AuthUserListRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AuthRoleGetRequest&) { return true; }
inline bool IsReadOnly(const ::etcdserverpb::AuthRoleListRequest&) { return true; }
inline bool IsReadOnly(const ::v3electionpb::LeaderRequest&) { return true; }

// Whether a request whose attempt failed so may be sent again (to the next
// endpoint, or by the relay through the gRPC client): when it never reached
// etcd, or when it only reads.
inline bool MaySendAgain(AttemptFailure failure, bool read_only) {
  return failure == AttemptFailure::kNotSent ||
         (failure == AttemptFailure::kTransport && read_only);
}

// Whether an error message is etcd's own ("etcdserver: ..."), as opposed to
// one of the transport's: an UNAVAILABLE from etcd is an answer, not a
// reason to try again.
bool IsEtcdError(absl::string_view message);

// grpc::Status → absl::Status with the same code and message.
absl::Status ToAbslStatus(const ::grpc::Status& status);

// The endpoints of one RemoteBackend. Immutable after construction except
// for the preferred index (atomic). Thread-safe.
class RemoteEndpoints {
 public:
  // Creates the channels (they connect lazily). REQUIRES: !options.endpoints.empty().
  explicit RemoteEndpoints(const RemoteOptions& options);

  size_t size() const { return endpoints_.size(); }
  const std::string& address(size_t i) const { return endpoints_[i].address; }
  const RemoteOptions& options() const { return options_; }

  // Index of the endpoint calls start on.
  size_t preferred() const { return preferred_.load(std::memory_order_relaxed); }
  // Endpoint `i` answered a call: make it the preferred one.
  void MarkAnswered(size_t i);

  // The stub of `Service` (a remote_services type) for endpoint `i`.
  template <class Service>
  typename Service::Stub* Stub(size_t i) const {
    return std::get<std::unique_ptr<typename Service::Stub>>(endpoints_[i].stubs).get();
  }

  // Prepares a fresh ClientContext for one attempt: token and hasleader
  // metadata, the client's deadline, wait_for_ready(false).
  static void PrepareContext(const api::CallContext& ctx, ::grpc::ClientContext* client);

 private:
  struct Endpoint {
    std::string address;
    std::shared_ptr<::grpc::Channel> channel;
    std::tuple<
        std::unique_ptr<remote_services::KV::Stub>, std::unique_ptr<remote_services::Watch::Stub>,
        std::unique_ptr<remote_services::Lease::Stub>,
        std::unique_ptr<remote_services::Cluster::Stub>,
        std::unique_ptr<remote_services::Maintenance::Stub>,
        std::unique_ptr<remote_services::Auth::Stub>, std::unique_ptr<remote_services::Lock::Stub>,
        std::unique_ptr<remote_services::Election::Stub>>
        stubs;
  };

  RemoteOptions options_;
  std::vector<Endpoint> endpoints_;
  std::atomic<size_t> preferred_{0};
};

}  // namespace keel::proxy::grpcproxy
