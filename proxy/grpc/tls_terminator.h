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
// slow reader before the other side is no longer read. When the server side
// closes, what it sent is delivered, then the client gets close_notify. When
// the client closes (close_notify or EOF), what it sent is delivered and the
// server side sees a half-close (SHUT_WR), as over plain TCP; its answer is
// still carried back. Once one side has ended the other has 10 s to finish.
//
// One thread runs an epoll loop for every TLS connection. Start() first;
// then Serve() and Stop() from any thread.
class TlsTerminator {
 public:
  explicit TlsTerminator(TlsTerminatorOptions options);
  ~TlsTerminator();  // Stop(0)s
  TlsTerminator(const TlsTerminator&) = delete;
  TlsTerminator& operator=(const TlsTerminator&) = delete;

  // Starts the loop thread. Unavailable when epoll or eventfd fail.
  absl::Status Start();

  // Takes ownership of an accepted client socket (non-blocking) and serves
  // it. Closed at once when not started or stopping. With `http_only` (a
  // port that serves only HTTP, such as an https:// --metrics-addr) it goes
  // to dispatch() as HTTP/1.x whatever its first bytes.
  void Serve(int fd, bool http_only = false);

  // Connections taken by Serve() and not handed on yet (handshake, first
  // bytes): the listener stops accepting while there are too many, as it
  // does for plaintext connections it has not classified.
  size_t Waiting() const;

  // Closes the connections still in their handshake at once; the others get
  // up to `grace` to deliver what either side sent last (the servers have
  // usually closed their ends by then), then are closed. Joins the thread.
  // Idempotent.
  void Stop(absl::Duration grace);

  // The loop's state (tls_terminator.cc).
  struct Loop;

 private:
  std::unique_ptr<Loop> loop_;
};

}  // namespace keel::proxy::grpcproxy
