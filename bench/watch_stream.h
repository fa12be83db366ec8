#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "api/etcdserverpb/rpc.pb.h"
#include "bench/transport.h"

namespace keel::bench {

// One Watch stream that creates a watcher per key in `keys` (all create
// requests queued at once, sent in order), then hands every response
// carrying events to `on_events`. Confined to its queue's thread but for
// Start and Cancel; the counters it bumps are atomics owned by the caller.
// Must outlive the transport's Shutdown.
class WatchStream : private StreamCall::Handler {
 public:
  struct Counters {
    std::atomic<int64_t> created{0};   // watchers confirmed by the server
    std::atomic<int64_t> finished{0};  // streams that ended
    std::atomic<int64_t> failed{0};    // streams that ended with an error we did not cause
  };

  WatchStream(Transport& transport, int conn, int queue, std::vector<std::string> keys,
              Counters& counters,
              std::function<void(const etcdserverpb::WatchResponse&)> on_events);
  // Opens the call on its queue. Call once.
  void Start();
  // Cancels the call; `finished` counts it once it ended.
  void Cancel();
  // The stream's error, if it failed ("" otherwise). Read after it finished.
  const std::string& error() const { return error_; }

 private:
  void OnMessage(std::string_view message) override;
  void OnEnd(const grpc::Status& status) override;

  Transport& transport_;
  const int conn_;
  const int queue_;
  std::vector<std::string> keys_;
  Counters& counters_;
  std::function<void(const etcdserverpb::WatchResponse&)> on_events_;
  std::unique_ptr<StreamCall> call_;
  etcdserverpb::WatchResponse resp_;
  std::atomic<bool> cancelled_{false};
  std::string error_;
};

}  // namespace keel::bench
