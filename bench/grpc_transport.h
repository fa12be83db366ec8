#pragma once

#include <grpcpp/generic/generic_stub.h>

#include <memory>
#include <vector>

#include "bench/client.h"
#include "bench/transport.h"

namespace keel::bench {

// Transport `grpc` (see Transport): gRPC C++'s completion-queue client over
// generic (byte-buffer) stubs on the Connections' channels. Queue i is
// completion queue i of the CqPool, which a client keeps whatever its
// connection, as gRPC C++ spreads its polling over the queues' threads.
class GrpcTransport final : public Transport {
 public:
  // `threads` completion-queue threads (0: one per core).
  GrpcTransport(std::unique_ptr<Connections> conns, int threads);
  ~GrpcTransport() override;

  int conns() const override { return conns_->size(); }
  int QueueFor(int client, int conn) const override;
  void RunAt(int queue, absl::Time when, std::function<void()> fn) override;
  void Unary(int queue, int conn, const char* method, std::string request, absl::Duration timeout,
             UnaryDone done) override;
  std::unique_ptr<StreamCall> OpenStream(int queue, int conn, const char* method,
                                         StreamCall::Handler* handler) override;
  void Shutdown() override;

 private:
  class Call;
  std::unique_ptr<Connections> conns_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  CqPool pool_;
};

}  // namespace keel::bench
