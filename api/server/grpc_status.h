#pragma once

// Status conversion at the gRPC edge of the front (STYLE.md 4: foreign errors
// are converted once, where they enter or leave).

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace keel::api::server {

// The gRPC status a client sees for `status`: the same code (absl's codes have
// gRPC's numbers) and the message byte for byte, so etcd's error strings reach
// clients unchanged. A code outside gRPC's range becomes UNKNOWN. Thread-safe.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse: a gRPC status as absl::Status, code and message unchanged.
// Thread-safe.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace keel::api::server
