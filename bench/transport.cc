#include "bench/transport.h"

#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/grpc_transport.h"
#include "bench/h2_transport.h"

namespace keel::bench {

absl::StatusOr<std::unique_ptr<Transport>> Transport::Dial(const GlobalOptions& options) {
  if (options.conns < 1) return absl::InvalidArgumentError("--conns must be at least 1");
  if (options.transport != "grpc" && options.transport != "h2") {
    return absl::InvalidArgumentError(
        absl::StrCat("--transport must be grpc or h2, not \"", options.transport, "\""));
  }
  if (options.transport == "h2") {
    bool tls = !options.cacert.empty() || !options.cert.empty() || !options.key.empty();
    for (const std::string& e : options.endpoints) tls = tls || absl::StartsWith(e, "https://");
    if (tls) {
      return absl::InvalidArgumentError(
          "--transport=h2 speaks plaintext HTTP/2 only; use --transport=grpc for TLS");
    }
    // One gRPC connection resolves --target-leader and --user, then goes.
    GlobalOptions setup = options;
    setup.conns = 1;
    absl::StatusOr<std::unique_ptr<Connections>> probe = Connections::Dial(setup);
    if (!probe.ok()) return probe.status();
    const std::vector<std::string> targets = (*probe)->endpoints();
    const std::string token = (*probe)->token();
    probe->reset();
    absl::StatusOr<std::unique_ptr<H2Transport>> h2 =
        H2Transport::Dial(targets, options.conns, options.threads, token, options.dial_timeout);
    if (!h2.ok()) return h2.status();
    return std::unique_ptr<Transport>(std::move(*h2));
  }
  absl::StatusOr<std::unique_ptr<Connections>> conns = Connections::Dial(options);
  if (!conns.ok()) return conns.status();
  return std::unique_ptr<Transport>(
      std::make_unique<GrpcTransport>(std::move(*conns), options.threads));
}

grpc::Status Transport::CallSync(int conn, const char* method, std::string request,
                                 std::string* response, absl::Duration timeout) {
  // Shared with the callback, which may outlive a timed-out wait.
  struct Result {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    grpc::Status status ABSL_GUARDED_BY(mu);
    std::string response ABSL_GUARDED_BY(mu);
  };
  auto result = std::make_shared<Result>();
  Unary(QueueFor(0, conn), conn, method, std::move(request), timeout,
        [result](const grpc::Status& status, std::string_view bytes) {
          absl::MutexLock lock(&result->mu);
          result->done = true;
          result->status = status;
          result->response.assign(bytes);
        });
  absl::MutexLock lock(&result->mu);
  // The call's own deadline ends it; the wait allows a little more.
  if (!result->mu.AwaitWithTimeout(absl::Condition(&result->done), timeout + absl::Seconds(5))) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        absl::StrCat("no answer within ", absl::FormatDuration(timeout)));
  }
  *response = std::move(result->response);
  return result->status;
}

}  // namespace keel::bench
