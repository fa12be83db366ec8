#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/url.h"

namespace keel::common {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string
  std::string query;   // after '?', may be empty
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
// Unknown paths get 404; handlers decide about methods (etcd answers 405 to a
// POST on /health). Connections are closed after each response.
// Thread-safe: Handle() before Start(), Stop() from any thread.
class HttpServer {
 public:
  HttpServer();
  ~HttpServer();  // Stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // REQUIRES: not started. `path` matches exactly.
  void Handle(const std::string& path, HttpHandler handler);
  // Binds and starts serving. Port 0 picks a free port (see port()).
  // Unavailable with the errno text if the bind fails.
  absl::Status Start(const HostPort& listen);
  int port() const { return port_; }
  void Stop();

 private:
  void Serve();

  std::map<std::string, HttpHandler> handlers_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
};

}  // namespace keel::common
