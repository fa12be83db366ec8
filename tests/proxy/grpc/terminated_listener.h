#pragma once

// Test helper: a 127.0.0.1 listener served through a TlsTerminator, as the
// grpc-proxy serves its TLS port.

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <thread>
#include <utility>

#include "absl/time/time.h"
#include "common/tcp_listen.h"
#include "proxy/grpc/tls_terminator.h"

namespace keel::proxy::grpcproxy {

// A listener on a free 127.0.0.1 port served as the grpc-proxy serves its
// TLS port: a TlsTerminator with `context` hands each connection, decrypted,
// to `dispatch`. Without a context, accepted connections go to `dispatch`
// as they are (as HTTP/2).
class TerminatedListener {
 public:
  TerminatedListener(std::shared_ptr<SSL_CTX> context, std::function<void(int, bool)> dispatch,
                     absl::Duration first_bytes_timeout = absl::Seconds(10)) {
    absl::StatusOr<int> fd = common::ListenTcp({"127.0.0.1", 0});
    if (!fd.ok()) return;
    listen_fd_ = *fd;
    port_ = common::BoundPort(listen_fd_);
    fcntl(listen_fd_, F_SETFL, 0);  // blocking accept4 in the thread below
    if (context != nullptr) {
      TlsTerminatorOptions options;
      options.context = std::move(context);
      options.dispatch = dispatch;
      options.first_bytes_timeout = first_bytes_timeout;
      tls_ = std::make_unique<TlsTerminator>(std::move(options));
      if (!tls_->Start().ok()) return;
    }
    accept_thread_ = std::thread([this, dispatch] {
      while (true) {
        const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (client < 0) return;  // shut down
        if (tls_ != nullptr) {
          tls_->Serve(client);
        } else {
          dispatch(client, true);
        }
      }
    });
  }
  ~TerminatedListener() {
    if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);  // ends accept4
    if (accept_thread_.joinable()) accept_thread_.join();
    if (listen_fd_ >= 0) close(listen_fd_);
    if (tls_ != nullptr) tls_->Stop(absl::ZeroDuration());
  }
  bool started() const { return accept_thread_.joinable(); }
  int port() const { return port_; }
  const TlsTerminator* terminator() const { return tls_.get(); }

 private:
  int port_ = 0;
  int listen_fd_ = -1;
  std::unique_ptr<TlsTerminator> tls_;
  std::thread accept_thread_;
};

}  // namespace keel::proxy::grpcproxy
