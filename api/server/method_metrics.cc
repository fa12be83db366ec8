#include "api/server/method_metrics.h"

namespace keel::api::server {

namespace {

// Go's codes.Code.String(), the grpc_code label values.
constexpr const char* kCodeNames[] = {
    "OK",       "Canceled",        "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",   "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",      "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated",
};

const char* TypeName(RpcType type) {
  switch (type) {
    case RpcType::kUnary:
      return "unary";
    case RpcType::kServerStream:
      return "server_stream";
    case RpcType::kBidiStream:
      return "bidi_stream";
  }
  return "unary";
}

}  // namespace

MethodMetrics::MethodMetrics(common::MetricsRegistry* registry, RpcType type,
                             const std::string& service, const std::string& method) {
  static_assert(sizeof(kCodeNames) / sizeof(kCodeNames[0]) == kCodes);
  if (registry == nullptr) return;
  common::Labels labels = {
      {"grpc_type", TypeName(type)}, {"grpc_service", service}, {"grpc_method", method}};
  // Help texts are go-grpc-prometheus's.
  started_ = registry->GetCounter("grpc_server_started_total",
                                  "Total number of RPCs started on the server.", labels);
  received_ =
      registry->GetCounter("grpc_server_msg_received_total",
                           "Total number of RPC stream messages received on the server.", labels);
  sent_ = registry->GetCounter("grpc_server_msg_sent_total",
                               "Total number of gRPC stream messages sent by the server.", labels);
  for (int code = 0; code < kCodes; ++code) {
    labels["grpc_code"] = kCodeNames[code];
    handled_[code] = registry->GetCounter(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.", labels);
  }
}

void MethodMetrics::Handled(grpc::StatusCode code) {
  const int index = static_cast<int>(code);
  if (index < 0 || index >= kCodes) return;
  if (handled_[index] != nullptr) handled_[index]->Increment();
}

}  // namespace keel::api::server
