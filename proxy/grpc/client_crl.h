#pragma once

#include <openssl/ssl.h>

#include <string>

#include "absl/status/status.h"

namespace keel::proxy::grpcproxy {

// --client-crl-file, applied as etcd applies it (pkg/transport): a client
// certificate whose serial number the list names is refused. As in etcd,
// only serial numbers count (the list's issuer, signature and dates are not
// checked), and the list is read again when its file changes, so a new list
// takes effect without a restart. A file that can no longer be read or
// parsed refuses every client certificate (etcd refuses the connection) and
// says so in the log, once per change of the file.
//
// Reads `path` (PEM or DER) and makes `ctx`, which asks for client
// certificates, refuse the listed ones in the handshake (a
// certificate_revoked alert). `ctx` owns what is installed. InvalidArgument
// naming --client-crl-file and the path when it cannot be read or holds no
// revocation list. Call before `ctx` is used; handshakes may then run on
// any threads.
absl::Status InstallClientCrl(SSL_CTX* ctx, const std::string& path);

}  // namespace keel::proxy::grpcproxy
