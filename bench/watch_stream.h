#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "bench/client.h"

namespace keel::bench {

// One Watch stream that creates a watcher per key in `keys` (one write in
// flight at a time), then hands every response carrying events to
// `on_events`. Confined to its completion queue's thread; the counters it
// bumps are atomics owned by the caller.
class WatchStream {
 public:
  struct Counters {
    std::atomic<int64_t> created{0};   // watchers confirmed by the server
    std::atomic<int64_t> finished{0};  // streams that ended
    std::atomic<int64_t> failed{0};    // streams that ended with an error we did not cause
  };

  WatchStream(Connections& conns, int conn, grpc::CompletionQueue* cq,
              std::vector<std::string> keys, Counters& counters,
              std::function<void(const etcdserverpb::WatchResponse&)> on_events);
  // Starts the call. Call once.
  void Start();
  // Cancels the call; `finished` counts it once the queue reports the end.
  void Cancel();
  // The stream's error, if it failed ("" otherwise). Read after it finished.
  const std::string& error() const { return error_; }

 private:
  struct Op : Tagged {
    WatchStream* stream = nullptr;
    void (WatchStream::*fn)(bool) = nullptr;
    void Proceed(bool ok) override { (stream->*fn)(ok); }
  };
  void OnStarted(bool ok);
  void OnWritten(bool ok);
  void OnRead(bool ok);
  void OnFinished(bool ok);
  void WriteNext();

  Connections& conns_;
  int conn_;
  grpc::CompletionQueue* cq_;
  std::vector<std::string> keys_;
  size_t next_key_ = 0;
  Counters& counters_;
  std::function<void(const etcdserverpb::WatchResponse&)> on_events_;
  grpc::ClientContext ctx_;
  std::unique_ptr<
      grpc::ClientAsyncReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>>
      rw_;
  etcdserverpb::WatchRequest write_req_;
  etcdserverpb::WatchResponse resp_;
  grpc::Status status_;
  std::atomic<bool> cancelled_{false};
  std::string error_;
  Op started_op_, write_op_, read_op_, finish_op_;
};

}  // namespace keel::bench
