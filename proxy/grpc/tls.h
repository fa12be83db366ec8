#pragma once

#include <grpcpp/security/credentials.h>
#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace keel::proxy::grpcproxy {

// TLS of the grpc-proxy's listener (client → proxy, the terminating side), from
// --cert-file, --key-file, --trusted-ca-file, --auto-tls and --data-dir.
struct ServerTlsOptions {
  // The listener's certificate and key; a trusted CA set → client certs required.
  std::string cert_file, key_file, trusted_ca_file;
  // Self-signed certificate when no cert/key/CA file is given.
  bool auto_tls = false;
  // Auto-TLS writes <data_dir>/fixtures/proxy/{cert,key}.pem.
  std::string data_dir;
  // SAN of the auto-TLS certificate (IP or DNS name; brackets of an IPv6 literal allowed).
  std::string listen_host;
  // --listen-cipher-suites: the TLS 1.2 cipher suites allowed, by Go's names
  // (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ...); empty: OpenSSL's
  // defaults. As in Go, TLS 1.3's suites are not configurable.
  std::vector<std::string> cipher_suites;
  // --client-crl-file: client certificates it lists are refused (client_crl.h).
  std::string client_crl_file;
};

// True if the listener serves TLS: any of cert/key/CA set, or --auto-tls.
bool ServerTlsEnabled(const ServerTlsOptions& options);

// The listener's OpenSSL context (TlsTerminator serves with it). With a CA
// file, clients must present a certificate signed by it (mTLS). TLS 1.2 at
// least. ALPN: a client offering http/1.1 gets it (curl, Go's net/http), one
// offering only h2 (grpc-go, grpc-java, gRPC core, so etcdctl and
// python3-etcd3) gets h2. Unlike etcd (Go's server prefers h2), a gRPC
// client that offers http/1.1 as well (Envoy's auto_config, .NET's
// RequestVersionOrHigher) is taken for an HTTP client: the price of curl
// reaching /metrics on the TLS port without --http1.1.
// With only --auto-tls, uses <data_dir>/fixtures/proxy/{cert,key}.pem, creating
// them (EC P-256, self-signed, one year, SAN = listen_host, mode 0600) when they
// do not exist yet, like etcd; existing ones are reused across restarts.
// Errors: InvalidArgument with a message naming the flag and file when a file is
// missing, unreadable or not PEM, when the key does not match the certificate, or
// when only one of cert/key is given (or a CA without them), or when TLS is not
// enabled; etcd's `unexpected TLS cipher suite "X"` for a name Go does not
// know, and a message naming it for one this OpenSSL lacks (RC4, 3DES);
// Internal or InvalidArgument when auto-TLS cannot create its files.
// Thread-safe.
absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeServerSslContext(const ServerTlsOptions& options);

// The whole file `path`, given with `flag`; InvalidArgument naming both
// (`<flag> "<path>": cannot open: <why>`) when it cannot be read.
absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path);

// The first queued OpenSSL error as text (or `fallback`); clears the queue so
// a failure never leaks into another caller's ERR_get_error on this thread.
std::string TakeOpenSslError(std::string_view fallback);

// TLS of the proxy's connections to etcd, from --cert, --key, --cacert and
// --insecure-skip-tls-verify.
struct ClientTlsOptions {
  // --cert/--key: the proxy's client certificate (must have no CN); --cacert: etcd's CA.
  std::string cert, key, cacert;
  // --insecure-skip-tls-verify: TLS without checking etcd's certificate.
  bool insecure_skip_verify = false;
  // Some --endpoints had https://.
  bool tls_endpoints = false;
};

// True if the proxy dials etcd over TLS: any file set, skip-verify, or https endpoints.
bool ClientTlsEnabled(const ClientTlsOptions& options);

// Channel credentials for the upstream etcd endpoints. Insecure credentials when
// TLS is not enabled. Without --cacert the system roots verify etcd; with
// --insecure-skip-tls-verify the server certificate is not checked at all.
// Errors: InvalidArgument as for MakeServerSslContext; with --cert, a certificate
// whose subject has a Common Name is refused with etcd 3.4's message
// "cert has non empty Common Name (<cn>)", because etcd with --client-cert-auth
// would take that CN as the user of every proxied client (etcd #9521).
// Thread-safe.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options);

// The same TLS to etcd as an OpenSSL client context, for the frame relay's
// own connections to etcd: the same files and checks (with the Common Name
// rule), TLS 1.2 at least, ALPN h2. Without --cacert the system's roots
// verify etcd, as gRPC's do; the caller names the endpoint on each
// connection (ConfigureUpstreamSsl). REQUIRES: ClientTlsEnabled(options).
// Errors as MakeChannelCredentials. Thread-safe.
absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeClientSslContext(const ClientTlsOptions& options);

// Makes `ssl`, a client connection of a MakeClientSslContext context, check
// that etcd's certificate names `host` (an IP address, without brackets, or
// a DNS name: HostPort::host) and send it as SNI when it is a name. False if
// OpenSSL refuses the host.
bool ConfigureUpstreamSsl(SSL* ssl, const std::string& host);

}  // namespace keel::proxy::grpcproxy
