#include "common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::common {
namespace {

using testutil::ConnectTcp;
using testutil::SendAll;

// Reads until EOF, error or 20 s without data (a broken server fails the
// test instead of hanging it).
std::string ReadAll(int fd) { return testutil::ReadToEof(fd, std::chrono::seconds(20)); }

// Sends `request` on a new connection and returns everything the server
// wrote before closing.
std::string Exchange(int port, const std::string& request) {
  const int fd = ConnectTcp(port);
  if (fd < 0) return "connect failed";
  SendAll(fd, request);
  std::string response = ReadAll(fd);
  close(fd);
  return response;
}

std::string Get(int port, const std::string& target) {
  return Exchange(port, "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

std::string Body(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// True once the peer has closed `fd` (EOF or reset), polling up to `timeout`.
bool PeerClosed(int fd, std::chrono::milliseconds timeout) {
  return testutil::WaitFor(
      [fd] {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 0) <= 0) return false;
        char c;
        const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
      },
      timeout);
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Handle("/health", [this](const HttpRequest& req) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_ = req;
      }
      if (req.method != "GET")
        return HttpResponse{405, "text/plain; charset=utf-8", "Method Not Allowed"};
      return HttpResponse{200, "application/json", "{\"health\":\"true\"}"};
    });
    server_.Handle("/metrics", [this](const HttpRequest& req) {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = req;
      return HttpResponse{200, "text/plain; version=0.0.4", "up 1\n"};
    });
    ASSERT_TRUE(server_.Start(HostPort{"127.0.0.1", 0}).ok());
    ASSERT_GT(server_.port(), 0);
  }

  HttpRequest Last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

  HttpServer server_;
  std::mutex mu_;
  HttpRequest last_;
};

TEST_F(HttpServerTest, GetExistingPath) {
  const std::string response = Get(server_.port(), "/health");
  EXPECT_EQ(response,
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: 17\r\n"
            "Connection: close\r\n\r\n"
            "{\"health\":\"true\"}");
  EXPECT_EQ(Last().method, "GET");
  EXPECT_EQ(Last().path, "/health");
}

TEST_F(HttpServerTest, UnknownPathIs404) {
  const std::string response = Get(server_.port(), "/nope");
  EXPECT_EQ(response.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << response;
  EXPECT_NE(response.find("Content-Length: 19\r\n"), std::string::npos) << response;
  EXPECT_EQ(Body(response), "404 page not found\n");
  // Matching is exact: no prefix matching, no trailing-slash redirect.
  EXPECT_EQ(Body(Get(server_.port(), "/health/")), "404 page not found\n");
}

TEST_F(HttpServerTest, QueryIsSplitOff) {
  const std::string response = Get(server_.port(), "/metrics?name=a%20b");
  EXPECT_EQ(Body(response), "up 1\n");
  EXPECT_EQ(Last().path, "/metrics");
  EXPECT_EQ(Last().query, "name=a%20b");
  EXPECT_EQ(Body(Get(server_.port(), "/m%65trics")), "up 1\n");
}

TEST_F(HttpServerTest, PostGoesToHandler) {
  const std::string response = Exchange(
      server_.port(), "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world");
  EXPECT_EQ(response.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u) << response;
  EXPECT_EQ(Body(response), "Method Not Allowed");
  EXPECT_EQ(Last().method, "POST");
}

TEST_F(HttpServerTest, HeadHasNoBody) {
  const std::string response = Exchange(server_.port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response;
  EXPECT_NE(response.find("Content-Length: 5\r\n"), std::string::npos) << response;
  EXPECT_EQ(Last().method, "HEAD");
  EXPECT_EQ(Body(response), "");
}

TEST_F(HttpServerTest, MalformedRequestIs400) {
  const std::string response = Exchange(server_.port(), "garbage\r\n\r\n");
  EXPECT_EQ(response.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << response;
}

TEST_F(HttpServerTest, OversizedRequestIsRejected) {
  std::string request = "GET /health HTTP/1.1\r\nX-Big: ";
  request += std::string(9000, 'a');
  const std::string response = Exchange(server_.port(), request);
  EXPECT_EQ(response.rfind("HTTP/1.1 431 ", 0), 0u) << response.substr(0, 100);
  EXPECT_EQ(Body(Get(server_.port(), "/health")), "{\"health\":\"true\"}");
}

TEST_F(HttpServerTest, StalledClientDoesNotBlockOthers) {
  const int slow = ConnectTcp(server_.port());
  ASSERT_GE(slow, 0);
  ASSERT_TRUE(SendAll(slow, "GET /hea"));
  const int idle = ConnectTcp(server_.port());
  ASSERT_GE(idle, 0);
  // Both stalled connections are open; other requests are still served.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Body(Get(server_.port(), "/health")), "{\"health\":\"true\"}");
  }
  // The stalled ones are dropped after the 5 s read timeout, unanswered.
  EXPECT_TRUE(PeerClosed(slow, std::chrono::seconds(30)));
  EXPECT_TRUE(PeerClosed(idle, std::chrono::seconds(30)));
  close(slow);
  close(idle);
}

TEST_F(HttpServerTest, SplitRequestIsAssembled) {
  const int fd = ConnectTcp(server_.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "GET /heal"));
  // Give the server a chance to read the first part on its own.
  EXPECT_FALSE(PeerClosed(fd, std::chrono::milliseconds(100)));
  ASSERT_TRUE(SendAll(fd, "th HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(Body(ReadAll(fd)), "{\"health\":\"true\"}");
  close(fd);
}

TEST_F(HttpServerTest, ConcurrentClients) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([this, &ok] {
      for (int i = 0; i < 10; ++i) {
        if (Body(Get(server_.port(), "/metrics")) == "up 1\n") ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 80);
}

TEST_F(HttpServerTest, StopWhileClientConnected) {
  const int fd = ConnectTcp(server_.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "GET /health HTTP/1.1\r\n"));  // incomplete
  const int port = server_.port();
  server_.Stop();
  EXPECT_TRUE(PeerClosed(fd, std::chrono::seconds(10)));
  close(fd);
  EXPECT_FALSE(testutil::CanConnect("127.0.0.1", port));
  server_.Stop();  // idempotent
}

TEST(HttpServer, StartErrors) {
  HttpServer first;
  ASSERT_TRUE(first.Start(HostPort{"127.0.0.1", 0}).ok());
  EXPECT_EQ(first.Start(HostPort{"127.0.0.1", 0}).code(), absl::StatusCode::kFailedPrecondition);

  HttpServer second;
  absl::Status s = second.Start(HostPort{"127.0.0.1", first.port()});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "listen tcp 127.0.0.1:" + std::to_string(first.port()) +
                             ": bind: address already in use");
}

TEST(HttpServer, StartOnFixedFreePort) {
  const int port = testutil::FreePort();
  HttpServer server;
  server.Handle("/x", [](const HttpRequest&) { return HttpResponse{200, "text/plain", "x"}; });
  ASSERT_TRUE(server.Start(HostPort{"127.0.0.1", port}).ok());
  EXPECT_EQ(server.port(), port);
  EXPECT_EQ(Body(Get(port, "/x")), "x");
  server.Stop();
  // Restartable on a new server object after Stop.
  HttpServer again;
  ASSERT_TRUE(again.Start(HostPort{"127.0.0.1", port}).ok());
}

TEST(HttpServer, LocalhostAndWildcardAreReachableOnIpv4Loopback) {
  for (const char* host : {"localhost", ""}) {
    HttpServer server;
    server.Handle("/x", [](const HttpRequest&) { return HttpResponse{200, "text/plain", "x"}; });
    ASSERT_TRUE(server.Start(HostPort{host, 0}).ok()) << host;
    EXPECT_EQ(Body(Get(server.port(), "/x")), "x") << host;
  }
}

TEST(HttpServer, DestructorStops) {
  int port = 0;
  {
    HttpServer server;
    ASSERT_TRUE(server.Start(HostPort{"127.0.0.1", 0}).ok());
    port = server.port();
    EXPECT_TRUE(testutil::CanConnect("127.0.0.1", port));
  }
  EXPECT_FALSE(testutil::CanConnect("127.0.0.1", port));
}

// A listener of the test's own whose accepted connections are handed to a
// server started without a listener, as keel's grpc-proxy does with the
// HTTP/1.1 connections of its shared port.
TEST(HttpServer, ServesHandedOverConnections) {
  HttpServer server;
  server.Handle("/x", [](const HttpRequest&) { return HttpResponse{200, "text/plain", "x"}; });
  ASSERT_TRUE(server.Start().ok());
  EXPECT_EQ(server.port(), 0);
  EXPECT_EQ(server.Start().code(), absl::StatusCode::kFailedPrecondition);

  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);

  for (int i = 0; i < 3; ++i) {
    const int client = ConnectTcp(port);
    ASSERT_GE(client, 0);
    const int accepted = accept(listener, nullptr, nullptr);  // blocking: the client is queued
    ASSERT_GE(accepted, 0);
    SendAll(client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    // The request may already be waiting (peeked, not read) when handed over.
    char peek[4];
    ASSERT_EQ(recv(accepted, peek, sizeof(peek), MSG_PEEK | MSG_WAITALL), 4);
    server.ServeConnection(accepted);
    const std::string response = ReadAll(client);
    close(client);
    EXPECT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response;
    EXPECT_EQ(Body(response), "x");
  }

  // After Stop() a handed-over connection is closed without an answer.
  server.Stop();
  const int client = ConnectTcp(port);
  ASSERT_GE(client, 0);
  const int accepted = accept(listener, nullptr, nullptr);
  ASSERT_GE(accepted, 0);
  server.ServeConnection(accepted);
  EXPECT_EQ(ReadAll(client), "");
  close(client);
  close(listener);
}

TEST_F(HttpServerTest, HttpGetFetchesFromServer) {
  absl::StatusOr<HttpResponse> r =
      HttpGet(HostPort{"127.0.0.1", server_.port()}, "/metrics", absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->content_type, "text/plain; version=0.0.4");
  EXPECT_EQ(r->body, "up 1\n");
  EXPECT_EQ(Last().method, "GET");

  r = HttpGet(HostPort{"localhost", server_.port()}, "/nope", absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, "404 page not found\n");
}

TEST(HttpServer, HttpGetErrors) {
  // Nothing listens on a port that was free a moment ago.
  const int port = testutil::FreePort();
  absl::StatusOr<HttpResponse> r = HttpGet(HostPort{"127.0.0.1", port}, "/", absl::Seconds(20));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("connection refused"), std::string::npos) << r.status();
}

// A raw server answering one request with `answer` (then closing), and one
// that accepts but never answers.
class RawServer {
 public:
  explicit RawServer(std::string answer) : answer_(std::move(answer)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 4);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      const int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string request;
      char buf[1024];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        request_ = request;
      }
      if (!answer_.empty()) {
        SendAll(c, answer_);
      } else {
        testutil::WaitFor([this] { return done_.load(); }, std::chrono::seconds(60));
      }
      close(c);
    });
  }
  ~RawServer() {
    done_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }
  std::string request() {
    std::lock_guard<std::mutex> lock(mu_);
    return request_;
  }

 private:
  std::string answer_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> done_{false};
  std::mutex mu_;
  std::string request_;
  std::thread thread_;
};

TEST(HttpServer, HttpGetDecodesChunkedAnswer) {
  RawServer raw(
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n");
  absl::StatusOr<HttpResponse> r =
      HttpGet(HostPort{"127.0.0.1", raw.port()}, "/version", absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->content_type, "text/plain");
  EXPECT_EQ(r->body, "hello, world");
  EXPECT_EQ(raw.request().rfind("GET /version HTTP/1.0\r\n", 0), 0u) << raw.request();
}

TEST(HttpServer, HttpGetRejectsNonHttpAnswer) {
  RawServer raw("SSH-2.0-OpenSSH\r\n");
  absl::StatusOr<HttpResponse> r =
      HttpGet(HostPort{"127.0.0.1", raw.port()}, "/", absl::Seconds(20));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST(HttpServer, HttpGetTimesOut) {
  RawServer raw("");  // never answers
  absl::StatusOr<HttpResponse> r =
      HttpGet(HostPort{"127.0.0.1", raw.port()}, "/", absl::Milliseconds(300));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
}

}  // namespace
}  // namespace keel::common
