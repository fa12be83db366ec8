#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bench/transport.h"

namespace keel::bench {

// Transport `h2` (see Transport): gRPC over nghttp2 client sessions, plaintext
// only. Connection i lives on loop thread i % threads, so a connection's
// calls all run on one thread and QueueFor ignores the client. A broken
// connection ends its calls with UNAVAILABLE and is not redialled.
class H2Transport final : public Transport {
 public:
  // Connects `conns` connections round-robin over `targets` ("host:port"),
  // each within `dial_timeout` (Unavailable naming the endpoint otherwise),
  // and starts `threads` loops (0: one per core). `token` goes on every call
  // when not empty.
  static absl::StatusOr<std::unique_ptr<H2Transport>> Dial(const std::vector<std::string>& targets,
                                                           int conns, int threads,
                                                           std::string token,
                                                           absl::Duration dial_timeout);
  ~H2Transport() override;

  int conns() const override { return static_cast<int>(conns_.size()); }
  int QueueFor(int client, int conn) const override;
  void RunAt(int queue, absl::Time when, std::function<void()> fn) override;
  void Unary(int queue, int conn, const char* method, std::string request, absl::Duration timeout,
             UnaryDone done) override;
  std::unique_ptr<StreamCall> OpenStream(int queue, int conn, const char* method,
                                         StreamCall::Handler* handler) override;
  void Shutdown() override;

 private:
  class Loop;
  class Conn;
  class Call;
  struct Stream;

  H2Transport(int threads, std::string token);

  const std::string token_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<Conn*> conns_;  // owned by their loops
};

}  // namespace keel::bench
