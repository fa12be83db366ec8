#pragma once

#include <openssl/ssl.h>

#include <string>

#include "absl/status/status.h"

namespace keel::proxy::grpcproxy {

// --client-crl-file as etcd applies it (pkg/transport): a client
// certificate whose serial number the list names is refused in the
// handshake. Only serial numbers count (not the list's issuer, signature or
// dates); the file is read again when it changes; while it cannot be read,
// every client certificate is refused (logged once). Sessions are not
// resumed on `ctx` (a resumed one skips the check).
//
// Reads `path` (PEM or DER) into `ctx`, which owns it from then on.
// InvalidArgument naming the flag and the path when it cannot be read or
// holds no list. Call before `ctx` is used.
absl::Status InstallClientCrl(SSL_CTX* ctx, const std::string& path);

}  // namespace keel::proxy::grpcproxy
