#pragma once

// Helpers for the grpc-proxy's integration tests: `keel grpc-proxy start` as
// a child process. HTTP and socket helpers come from gateway_helpers.h and
// tests/testutil/socket_io.h.

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tests/integration/gateway_helpers.h"
#include "tests/testutil/process.h"

namespace keel::testutil {

// `keel grpc-proxy start` with `flags`, listening on a free port (unless the
// flags name --listen-addr) and advertising that address (unless the flags
// name --advertise-client-url). Ready() waits for etcd's start-up line.
class GrpcProxyProcess {
 public:
  GrpcProxyProcess(const TempDir& dir, std::vector<std::string> flags,
                   std::map<std::string, std::string> env = {}) {
    port_ = FreePort();
    std::vector<std::string> argv = {BinDir() + "/keel", "grpc-proxy", "start"};
    bool has_listen = false;
    bool has_advertise = false;
    for (const auto& f : flags) {
      has_listen |= f.rfind("--listen-addr", 0) == 0;
      has_advertise |= f.rfind("--advertise-client-url", 0) == 0;
    }
    if (!has_listen) argv.push_back("--listen-addr=" + addr());
    if (!has_advertise) argv.push_back("--advertise-client-url=" + addr());
    static int counter = 0;
    const std::string name = "grpc-proxy-" + std::to_string(counter++);
    argv.push_back("--data-dir=" + dir.File(name + ".data"));
    for (auto& f : flags) argv.push_back(std::move(f));
    process_ = std::make_unique<Subprocess>(argv, dir.File(name + ".log"), std::move(env));
  }

  bool Ready(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    return process_->WaitForLog("\"msg\":\"started gRPC proxy\"", timeout);
  }
  int port() const { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  Subprocess& process() { return *process_; }
  std::string Log() const { return process_->Log(); }

 private:
  int port_ = 0;
  std::unique_ptr<Subprocess> process_;
};

// A counter's or gauge's value in a Prometheus text page (the series written
// exactly as `name`, labels included); nullopt if absent.
inline std::optional<double> MetricValue(const std::string& page, const std::string& name) {
  const std::string needle = "\n" + name + " ";
  const size_t at = ("\n" + page).find(needle);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(("\n" + page).substr(at + needle.size()));
}

// MetricValue from the proxy's /metrics on its listen port.
inline std::optional<double> ProxyMetric(const GrpcProxyProcess& proxy, const std::string& name) {
  std::optional<HttpResult> r = HttpCall(proxy.port(), "GET", "/metrics");
  if (!r.has_value() || r->status != 200) return std::nullopt;
  return MetricValue(r->body, name);
}

}  // namespace keel::testutil
