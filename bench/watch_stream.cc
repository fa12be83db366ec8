#include "bench/watch_stream.h"

namespace keel::bench {

WatchStream::WatchStream(Connections& conns, int conn, grpc::CompletionQueue* cq,
                         std::vector<std::string> keys, Counters& counters,
                         std::function<void(const etcdserverpb::WatchResponse&)> on_events)
    : conns_(conns),
      conn_(conn),
      cq_(cq),
      keys_(std::move(keys)),
      counters_(counters),
      on_events_(std::move(on_events)) {
  started_op_.stream = this;
  started_op_.fn = &WatchStream::OnStarted;
  write_op_.stream = this;
  write_op_.fn = &WatchStream::OnWritten;
  read_op_.stream = this;
  read_op_.fn = &WatchStream::OnRead;
  finish_op_.stream = this;
  finish_op_.fn = &WatchStream::OnFinished;
}

void WatchStream::Start() {
  conns_.Prepare(&ctx_);
  rw_ = conns_.watch(conn_).PrepareAsyncWatch(&ctx_, cq_);
  rw_->StartCall(&started_op_);
}

void WatchStream::Cancel() {
  cancelled_.store(true);
  ctx_.TryCancel();
}

void WatchStream::OnStarted(bool ok) {
  if (!ok) {
    // The call could not start; Finish reports why.
    rw_->Finish(&status_, &finish_op_);
    return;
  }
  rw_->Read(&resp_, &read_op_);
  WriteNext();
}

void WatchStream::WriteNext() {
  if (next_key_ >= keys_.size()) return;
  write_req_.Clear();
  write_req_.mutable_create_request()->set_key(keys_[next_key_++]);
  rw_->Write(write_req_, &write_op_);
}

void WatchStream::OnWritten(bool ok) {
  if (ok) WriteNext();
}

void WatchStream::OnRead(bool ok) {
  if (!ok) {
    rw_->Finish(&status_, &finish_op_);
    return;
  }
  if (resp_.created()) counters_.created.fetch_add(1);
  if (resp_.canceled() && !cancelled_.load()) {
    error_ = "watch canceled by the server: " + resp_.cancel_reason();
  }
  if (resp_.events_size() > 0) on_events_(resp_);
  rw_->Read(&resp_, &read_op_);
}

void WatchStream::OnFinished(bool) {
  if (!cancelled_.load()) {
    if (!status_.ok()) {
      error_ = GrpcErrorText(status_);
    } else if (error_.empty()) {
      error_ = "watch stream closed by the server";
    }
    counters_.failed.fetch_add(1);
  }
  counters_.finished.fetch_add(1);
}

}  // namespace keel::bench
