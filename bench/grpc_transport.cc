#include "bench/grpc_transport.h"

#include <grpcpp/alarm.h>
#include <grpcpp/support/byte_buffer.h>

#include <deque>

namespace keel::bench {

namespace {

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// A RunAt task: an alarm on the queue; frees itself when it fires.
struct TimerTask : Tagged {
  grpc::Alarm alarm;
  std::function<void()> fn;
  void Proceed(bool) override {
    fn();
    delete this;
  }
};

// One unary call; frees itself when the queue returns it.
struct UnaryTask : Tagged {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  Transport::UnaryDone done;
  void Proceed(bool ok) override {
    if (!ok && status.ok()) status = grpc::Status(grpc::StatusCode::UNKNOWN, "call failed");
    if (status.ok()) {
      const std::string bytes = FromByteBuffer(response);
      done(status, bytes);
    } else {
      done(status, {});
    }
    delete this;
  }
};

}  // namespace

// A streaming call on one completion queue: one write in flight, the rest
// queued; reads re-armed until the stream ends. Its state is confined to
// the queue's thread except Cancel. OnEnd waits for the write in flight so
// that nothing refers to the call once the owner may free it.
class GrpcTransport::Call final : public StreamCall {
 public:
  Call(Connections& conns, grpc::GenericStub& stub, grpc::CompletionQueue* cq, const char* method,
       Handler* handler)
      : handler_(handler) {
    for (Op* op : {&started_op_, &write_op_, &read_op_, &finish_op_}) op->call = this;
    started_op_.fn = &Call::OnStarted;
    write_op_.fn = &Call::OnWritten;
    read_op_.fn = &Call::OnRead;
    finish_op_.fn = &Call::OnFinished;
    conns.Prepare(&ctx_);
    rw_ = stub.PrepareCall(&ctx_, method, cq);
    rw_->StartCall(&started_op_);
  }

  void Write(std::string message) override {
    if (ended_) return;
    queued_.push_back(std::move(message));
    WriteNext();
  }
  void Cancel() override { ctx_.TryCancel(); }

 private:
  struct Op : Tagged {
    Call* call = nullptr;
    void (Call::*fn)(bool) = nullptr;
    void Proceed(bool ok) override { (call->*fn)(ok); }
  };

  void OnStarted(bool ok) {
    if (!ok) {
      rw_->Finish(&status_, &finish_op_);
      return;
    }
    started_ = true;
    rw_->Read(&in_, &read_op_);
    WriteNext();
  }
  void WriteNext() {
    if (!started_ || writing_ || finishing_ || queued_.empty()) return;
    out_ = ToByteBuffer(queued_.front());
    queued_.pop_front();
    writing_ = true;
    rw_->Write(out_, &write_op_);
  }
  void OnWritten(bool ok) {
    writing_ = false;
    if (ok) WriteNext();
    MaybeEnd();
  }
  void OnRead(bool ok) {
    if (!ok) {
      finishing_ = true;
      rw_->Finish(&status_, &finish_op_);
      return;
    }
    const std::string bytes = FromByteBuffer(in_);
    handler_->OnMessage(bytes);
    rw_->Read(&in_, &read_op_);
  }
  void OnFinished(bool) {
    finished_ = true;
    MaybeEnd();
  }
  void MaybeEnd() {
    if (!finished_ || writing_ || ended_) return;
    ended_ = true;
    handler_->OnEnd(status_);
  }

  Handler* handler_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> rw_;
  grpc::ByteBuffer in_, out_;
  std::deque<std::string> queued_;
  grpc::Status status_;
  bool started_ = false;
  bool writing_ = false;
  bool finishing_ = false;
  bool finished_ = false;
  bool ended_ = false;
  Op started_op_, write_op_, read_op_, finish_op_;
};

GrpcTransport::GrpcTransport(std::unique_ptr<Connections> conns, int threads)
    : conns_(std::move(conns)), pool_(threads) {
  for (int i = 0; i < conns_->size(); ++i) {
    stubs_.push_back(std::make_unique<grpc::GenericStub>(conns_->channel(i)));
  }
}

GrpcTransport::~GrpcTransport() { Shutdown(); }

int GrpcTransport::QueueFor(int client, int) const { return client % pool_.size(); }

void GrpcTransport::RunAt(int queue, absl::Time when, std::function<void()> fn) {
  auto* task = new TimerTask();
  task->fn = std::move(fn);
  task->alarm.Set(pool_.cq(queue), absl::ToChronoTime(when), task);
}

void GrpcTransport::Unary(int queue, int conn, const char* method, std::string request,
                          absl::Duration timeout, UnaryDone done) {
  auto* task = new UnaryTask();
  task->done = std::move(done);
  conns_->Prepare(&task->ctx);
  if (timeout != absl::InfiniteDuration()) {
    task->ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  task->reader = stubs_[static_cast<size_t>(conn)]->PrepareUnaryCall(
      &task->ctx, method, ToByteBuffer(request), pool_.cq(queue));
  task->reader->StartCall();
  task->reader->Finish(&task->response, &task->status, task);
}

std::unique_ptr<StreamCall> GrpcTransport::OpenStream(int queue, int conn, const char* method,
                                                      StreamCall::Handler* handler) {
  return std::make_unique<Call>(*conns_, *stubs_[static_cast<size_t>(conn)], pool_.cq(queue),
                                method, handler);
}

void GrpcTransport::Shutdown() { pool_.Shutdown(); }

}  // namespace keel::bench
