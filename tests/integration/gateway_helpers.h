#pragma once

// Header-only helpers for the gateway's integration tests: the keel gateway
// as a child process, a tiny test-local TCP server, and a raw HTTP/1.1 client.
// Socket primitives (ConnectTcp, SendAll, ReadToEof, ReadN) are in
// tests/testutil/socket_io.h.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/testutil/text.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::testutil {

// `keel gateway start` with `flags`, listening on a free port (unless the
// flags name --listen-addr). Ready() waits for etcd's ready line.
class GatewayProcess {
 public:
  GatewayProcess(const TempDir& dir, std::vector<std::string> flags,
                 std::map<std::string, std::string> env = {}) {
    port_ = FreePort();
    std::vector<std::string> argv = {BinDir() + "/keel", "gateway", "start"};
    bool has_listen = false;
    for (const auto& f : flags) has_listen |= f.rfind("--listen-addr", 0) == 0;
    if (!has_listen) argv.push_back("--listen-addr=127.0.0.1:" + std::to_string(port_));
    for (auto& f : flags) argv.push_back(std::move(f));
    static int counter = 0;
    process_ = std::make_unique<Subprocess>(
        argv, dir.File("gateway-" + std::to_string(counter++) + ".log"), std::move(env));
  }

  bool Ready(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    return process_->WaitForLog("ready to proxy client requests", timeout);
  }
  int port() const { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  Subprocess& process() { return *process_; }
  std::string Log() const { return process_->Log(); }

 private:
  int port_ = 0;
  std::unique_ptr<Subprocess> process_;
};


// Waits until `sent` (bytes a sender thread has pushed so far) stops growing
// for 25 consecutive polls, i.e. the sender is blocked: the way these tests
// see flow control at work. False if it still moves after `timeout`.
inline bool WaitUntilStalled(const std::atomic<size_t>& sent,
                             std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  size_t last = 0;
  int unchanged = 0;
  return WaitFor(
      [&] {
        const size_t now = sent.load();
        unchanged = (now == last && now > 0) ? unchanged + 1 : 0;
        last = now;
        return unchanged >= 25;
      },
      timeout);
}

// One HTTP/1.1 request on its own connection (Connection: close). Returns
// the status code and the body, or nullopt if the connection failed.
struct HttpResult {
  int status = 0;
  std::string body;
};
inline std::optional<HttpResult> HttpCall(int port, const std::string& method,
                                          const std::string& path, const std::string& body = "") {
  int fd = ConnectTcp(port);
  if (fd < 0) return std::nullopt;
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                    "\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body;
  std::string resp;
  if (SendAll(fd, req)) resp = ReadToEof(fd);
  close(fd);
  size_t header_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || header_end == std::string::npos) return std::nullopt;
  HttpResult r;
  r.status = std::stoi(resp.substr(resp.find(' ') + 1, 3));
  r.body = resp.substr(header_end + 4);
  return r;
}

// A TCP server on 127.0.0.1 (free port) running `handler(fd)` for each
// accepted connection on its own thread; the handler owns nothing: the server
// closes the fd after it returns. Stops and joins everything on destruction.
class TcpServer {
 public:
  // `port` 0 picks a free one.
  explicit TcpServer(std::function<void(int)> handler, int port = 0)
      : handler_(std::move(handler)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 64);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~TcpServer() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    for (auto& t : handlers_) t.join();
    close(listen_fd_);
  }
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  int port() const { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  int accepted() const { return accepted_.load(); }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++accepted_;
      handlers_.emplace_back([this, fd] {
        handler_(fd);
        close(fd);
      });
    }
  }

  std::function<void(int)> handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  std::vector<std::thread> handlers_;
};

// Handler: echoes every chunk back until EOF, then closes.
inline void EchoHandler(int fd) {
  char buf[65536];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 30000) <= 0) return;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return;
    if (!SendAll(fd, std::string(buf, static_cast<size_t>(n)))) return;
  }
}

}  // namespace keel::testutil
