#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
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
// Thread-safe: Handle() before Start(), Stop() from any thread.
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
  // The bound port, valid after a successful Start().
  int port() const { return port_; }
  // Closes the listener and every connection and joins the thread. Handlers
  // are not running when it returns. Idempotent.
  void Stop();

 private:
  void Serve();

  std::map<std::string, HttpHandler> handlers_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
  std::mutex stop_mu_;  // serializes Start() and Stop()
};

}  // namespace keel::common
