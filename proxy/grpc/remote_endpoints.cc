#include "proxy/grpc/remote_endpoints.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "grpc/grpc.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace keel::proxy::grpcproxy {
namespace {

// Substrings of the messages gRPC gives a call that failed because its
// channel could not connect (pick_first in TRANSIENT_FAILURE, a refused or
// timed-out connect, name resolution failing). Such a call was never
// written to a transport.
constexpr std::string_view kNotSentMarkers[] = {
    "failed to connect to all addresses",
    "Failed to connect to remote host",
    "Connection refused",
    "DNS resolution failed",
    "empty address list",
};

// Every error etcd itself returns starts with this (api/errors.h).
constexpr std::string_view kEtcdPrefix = "etcdserver: ";

int ToMillis(absl::Duration d) {
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 100, std::numeric_limits<int>::max()));
}

}  // namespace

bool IsEtcdError(absl::string_view message) {
  return absl::StartsWith(message, absl::string_view(kEtcdPrefix.data(), kEtcdPrefix.size()));
}

AttemptFailure ClassifyAttempt(const ::grpc::Status& status) {
  if (status.error_code() != ::grpc::StatusCode::UNAVAILABLE) return AttemptFailure::kNone;
  const std::string& msg = status.error_message();
  if (IsEtcdError(msg)) return AttemptFailure::kNone;
  for (std::string_view marker : kNotSentMarkers) {
    if (msg.find(marker) != std::string::npos) return AttemptFailure::kNotSent;
  }
  return AttemptFailure::kTransport;
}

absl::Status ToAbslStatus(const ::grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

RemoteEndpoints::RemoteEndpoints(const RemoteOptions& options) : options_(options) {
  std::shared_ptr<::grpc::ChannelCredentials> creds = options_.credentials;
  if (creds == nullptr) creds = ::grpc::InsecureChannelCredentials();
  endpoints_.reserve(options_.endpoints.size());
  for (const std::string& address : options_.endpoints) {
    ::grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(options_.max_send_bytes);
    args.SetMaxReceiveMessageSize(options_.max_recv_bytes);
    // Own connections per backend (no global subchannel sharing), so one
    // backend's view of a member does not depend on another's.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    // Failover is ours (see remote_backend.h); gRPC's retry filter would only
    // add per-call bookkeeping (it buffers every request for a replay).
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    // Keepalive like etcd's client with --dial-keepalive-time: pings only
    // while calls are open (etcd refuses pings without streams), no cap on
    // pings without data so an idle watch still detects a dead member.
    // 10 s is above etcd's --grpc-keepalive-min-time default (5 s).
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // A connect attempt may take up to dial_timeout (gRPC's minimum connect
    // timeout); retries back off from 100 ms to at most 2 s, so a restarted
    // member is used again within seconds (etcd's proxy can lag for tens of
    // seconds with gRPC's default 120 s cap).
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, ToMillis(options_.dial_timeout));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    Endpoint ep;
    ep.address = address;
    ep.channel = ::grpc::CreateCustomChannel(address, creds, args);
    ep.stubs = {remote_services::KV::NewStub(ep.channel),
                remote_services::Watch::NewStub(ep.channel),
                remote_services::Lease::NewStub(ep.channel),
                remote_services::Cluster::NewStub(ep.channel),
                remote_services::Maintenance::NewStub(ep.channel),
                remote_services::Auth::NewStub(ep.channel),
                remote_services::Lock::NewStub(ep.channel),
                remote_services::Election::NewStub(ep.channel)};
    endpoints_.push_back(std::move(ep));
  }
}

void RemoteEndpoints::MarkAnswered(size_t i) {
  if (preferred_.load(std::memory_order_relaxed) == i) return;
  size_t old = preferred_.exchange(i, std::memory_order_relaxed);
  if (old != i) {
    KEEL_LOG_EVENT(*common::Logger("grpc-proxy"), spdlog::level::warn, "switched etcd endpoint",
                   {{"from", endpoints_[old].address}, {"to", endpoints_[i].address}});
  }
}

void RemoteEndpoints::PrepareContext(const api::CallContext& ctx, ::grpc::ClientContext* client) {
  if (!ctx.token.empty()) client->AddMetadata("token", ctx.token);
  if (ctx.require_leader) client->AddMetadata("hasleader", "true");
  if (ctx.deadline != absl::InfiniteFuture()) {
    client->set_deadline(absl::ToChronoTime(ctx.deadline));
  }
  client->set_wait_for_ready(false);
}

}  // namespace keel::proxy::grpcproxy
