#pragma once

#include "api/backend.h"
#include "grpcpp/server_context.h"

namespace keel::api::server {

// The CallContext of an incoming call: metadata "token" → token, metadata
// "hasleader" equal to "true" → require_leader (etcd's rpctypes keys), the
// client's deadline → deadline (InfiniteFuture() when it set none).
// Thread-safe for distinct contexts; call it from the method handler.
CallContext CallContextFrom(const grpc::ServerContextBase& context);

}  // namespace keel::api::server
