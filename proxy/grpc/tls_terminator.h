#pragma once

#include <openssl/ssl.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace keel::proxy::grpcproxy {

struct TlsTerminatorOptions {
  // The listener's context (MakeServerSslContext).
  std::shared_ptr<SSL_CTX> context;
  // Takes ownership of `fd`, one end of a socketpair that carries a client's
  // decrypted bytes both ways; `http2` tells whether they begin with the
  // HTTP/2 preface (else HTTP/1.x, or anything). Called on the terminator's
  // thread once the handshake is done and the first bytes arrived; must not
  // block.
  std::function<void(int fd, bool http2)> dispatch;
  // When set, HTTP/2 connections go here instead, still encrypted: takes
  // ownership of the client socket and its SSL (handshake done), with the
  // bytes already decrypted (the preface on). The frame relay speaks TLS
  // itself this way, without this thread or a socketpair in between. Called
  // on the terminator's thread; must not block.
  std::function<void(int fd, SSL* ssl, std::string first_bytes)> adopt_http2;
  // A client that has not finished its handshake and sent its first bytes
  // within this is closed.
  absl::Duration first_bytes_timeout = absl::Seconds(10);
};

// TLS on the grpc-proxy's main port, terminated by keel rather than by gRPC,
// so that one port serves gRPC and HTTP/1.1 under TLS as it does in plain
// text: each client connection's handshake is done here (OpenSSL), its first
// decrypted bytes are peeked like the plaintext listener's, and the
// connection is then carried, decrypted, over a socketpair to whichever
// server dispatch() hands the other end to (the frame relay, the gRPC
// server, the HTTP server), unless adopt_http2 takes it whole. A failed
// handshake just closes the connection (gRPC clients report UNAVAILABLE).
//
// Each direction is copied with back-pressure: at most 1 MiB waits for a
// slow reader before the other side is no longer read. When one side
// closes, what it sent is delivered and then both are closed.
//
// One thread runs an epoll loop for every TLS connection. Thread-safe.
class TlsTerminator {
 public:
  explicit TlsTerminator(TlsTerminatorOptions options);
  ~TlsTerminator();  // Stop()s
  TlsTerminator(const TlsTerminator&) = delete;
  TlsTerminator& operator=(const TlsTerminator&) = delete;

  // Starts the loop thread. Unavailable when libevent cannot.
  absl::Status Start();

  // Takes ownership of an accepted client socket (non-blocking) and serves
  // it. Closed at once when not started or stopping.
  void Serve(int fd);

  // Closes every connection (and its socketpair end) and joins the thread.
  // Idempotent.
  void Stop();

  // The loop's state (tls_terminator.cc).
  struct Loop;

 private:
  std::unique_ptr<Loop> loop_;
};

}  // namespace keel::proxy::grpcproxy
