#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/url.h"

namespace keel::common {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string, percent-decoded
  std::string query;   // after '?', may be empty (raw, not decoded)
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Runs on the server's own thread; must not block for long.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

// A small HTTP/1.1 server for operational endpoints (/health, /metrics,
// /version), one thread, poll(2)-driven, plain TCP. Not for client traffic.
// Unknown paths get 404 "404 page not found\n" (Go's text); handlers decide
// about methods (etcd answers 405 to a POST on /health). A request body is
// not read (nor passed on); HEAD responses carry no body. Connections are
// closed after each response ("Connection: close").
// Limits: request line + headers at most 8 KiB (else 431), 5 s to receive
// them (else the connection is closed without an answer), 5 s to take the
// response, at most 128 connections at once (more wait in the backlog).
// Slow clients do not delay others: every connection is polled concurrently.
// Connections can also come from elsewhere (ServeConnection), e.g. from a
// listener shared with gRPC that hands over the HTTP/1.1 connections.
// Thread-safe: Handle() before Start(), Stop() and ServeConnection() from
// any thread.
class HttpServer {
 public:
  HttpServer();
  ~HttpServer();  // Stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // REQUIRES: not started. `path` matches exactly.
  void Handle(const std::string& path, HttpHandler handler);
  // Binds and starts serving. Port 0 picks a free port (see port()). An
  // empty host listens on all addresses. Unavailable with Go's wording
  // ("listen tcp 127.0.0.1:2379: bind: address already in use") if resolving,
  // binding or listening fails; FailedPrecondition if already started.
  absl::Status Start(const HostPort& listen);
  // Serves on `listen_fd`, a non-blocking listening socket (TCP or unix) the
  // server owns from now on, also when starting fails. port() is 0 for a
  // unix socket. FailedPrecondition if already started, Unavailable without
  // a wake-up pipe.
  absl::Status Start(int listen_fd);
  // Starts serving without a listener of its own: only connections handed
  // over with ServeConnection() are served. port() stays 0. Unavailable if
  // the wake-up pipe cannot be created; FailedPrecondition if already started.
  absl::Status Start();
  // Takes ownership of `fd`, an accepted TCP connection whose first bytes
  // (possibly still unread, e.g. only peeked with MSG_PEEK) are an HTTP/1.x
  // request, and serves it like a connection of the server's own listener
  // (same limits; beyond 128 connections it is closed at once). The fd is
  // made non-blocking.
  // If the server is not running (not started, or stopped) the fd is closed.
  void ServeConnection(int fd);
  // The bound port, valid after a successful Start().
  int port() const { return port_; }
  // Closes the listener and every connection and joins the thread. Handlers
  // are not running when it returns. Idempotent.
  void Stop();

 private:
  void Serve();
  // Moves the handed-over connections out of the queue.
  std::vector<int> TakeHandoffs();

  std::map<std::string, HttpHandler> handlers_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
  std::mutex stop_mu_;     // serializes Start() and Stop()
  std::mutex handoff_mu_;  // guards the three fields below
  bool running_ = false;   // between Start() and Stop()
  bool stopping_ = false;  // Stop() asked the thread to exit
  std::vector<int> handoff_;
};

// A plain-HTTP GET of `path` on `server` (an HTTP/1.0 request with
// "Connection: close", so the answer is read to EOF; a chunked answer is
// decoded), for fetching another server's /metrics or /version. Blocking, at
// most `timeout` in total. Any status code is returned as a response
// (content type from the answer, or "" if it had none). Unavailable if
// connecting, sending or receiving fails or the answer is not HTTP;
// DeadlineExceeded on timeout; ResourceExhausted if the answer exceeds
// 64 MiB. Thread-safe.
absl::StatusOr<HttpResponse> HttpGet(const HostPort& server, const std::string& path,
                                     absl::Duration timeout);

}  // namespace keel::common
