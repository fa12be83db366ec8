#include "bench/watch_stream.h"

namespace keel::bench {

WatchStream::WatchStream(Transport& transport, int conn, int queue, std::vector<std::string> keys,
                         Counters& counters,
                         std::function<void(const etcdserverpb::WatchResponse&)> on_events)
    : transport_(transport),
      conn_(conn),
      queue_(queue),
      keys_(std::move(keys)),
      counters_(counters),
      on_events_(std::move(on_events)) {}

void WatchStream::Start() {
  transport_.RunAt(queue_, absl::Now(), [this] {
    if (cancelled_.load()) {  // cancelled before it was opened
      counters_.finished.fetch_add(1);
      return;
    }
    call_ = transport_.OpenStream(queue_, conn_, kWatchMethod, this);
    etcdserverpb::WatchRequest req;
    for (const std::string& key : keys_) {
      req.mutable_create_request()->set_key(key);
      call_->Write(req.SerializeAsString());
    }
  });
}

void WatchStream::Cancel() {
  cancelled_.store(true);
  transport_.RunAt(queue_, absl::Now(), [this] {
    if (call_ != nullptr) call_->Cancel();
  });
}

void WatchStream::OnMessage(std::string_view message) {
  if (!resp_.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
    error_ = "undecodable WatchResponse";
    call_->Cancel();
    return;
  }
  if (resp_.created()) counters_.created.fetch_add(1);
  if (resp_.canceled() && !cancelled_.load()) {
    error_ = "watch canceled by the server: " + resp_.cancel_reason();
  }
  if (resp_.events_size() > 0) on_events_(resp_);
}

void WatchStream::OnEnd(const grpc::Status& status) {
  if (!cancelled_.load()) {
    if (error_.empty()) {
      error_ = status.ok() ? "watch stream closed by the server" : GrpcErrorText(status);
    }
    counters_.failed.fetch_add(1);
  }
  counters_.finished.fetch_add(1);
}

}  // namespace keel::bench
