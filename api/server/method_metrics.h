#pragma once

#include <array>
#include <string>

#include "common/metrics.h"
#include "grpcpp/support/status.h"

namespace keel::api::server {

// go-grpc-prometheus's grpc_type label values.
enum class RpcType { kUnary, kServerStream, kBidiStream };

// The server counters of one gRPC method, in go-grpc-prometheus's names and
// labels (what etcd and its grpc-proxy export): grpc_server_started_total,
// grpc_server_handled_total (one series per code, all registered up front as
// go-grpc-prometheus's InitializeMetrics does), grpc_server_msg_received_total
// and grpc_server_msg_sent_total. Every method is a no-op when built without a
// registry. Thread-safe (lock-free updates).
class MethodMetrics {
 public:
  // `registry` may be null (no metrics); it must outlive this object.
  // `service` is the full gRPC service name ("etcdserverpb.KV"), `method` the
  // bare method name ("Range").
  MethodMetrics(common::MetricsRegistry* registry, RpcType type, const std::string& service,
                const std::string& method);

  // The call reached its handler.
  void Started() {
    if (started_ != nullptr) started_->Increment();
  }
  // One request message was received from the client.
  void Received() {
    if (received_ != nullptr) received_->Increment();
  }
  // One response message was sent to the client.
  void Sent() {
    if (sent_ != nullptr) sent_->Increment();
  }
  // The call ended with `code`.
  void Handled(grpc::StatusCode code);

 private:
  static constexpr int kCodes = static_cast<int>(grpc::StatusCode::UNAUTHENTICATED) + 1;

  common::Counter* started_ = nullptr;
  common::Counter* received_ = nullptr;
  common::Counter* sent_ = nullptr;
  std::array<common::Counter*, kCodes> handled_{};
};

}  // namespace keel::api::server
