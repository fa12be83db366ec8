#include "proxy/grpc/local_call.h"

#include <atomic>
#include <cstdint>
#include <utility>

#include "google/protobuf/message_lite.h"

namespace keel::proxy::grpcproxy {
namespace {

constexpr std::string_view kWatchPath = "/etcdserverpb.Watch/Watch";
constexpr std::string_view kLeaseKeepAlivePath = "/etcdserverpb.Lease/LeaseKeepAlive";
constexpr size_t kGrpcPrefix = 5;

// `message` serialized behind its gRPC prefix (uncompressed, 4-byte
// big-endian length).
std::string Framed(const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  std::string framed(kGrpcPrefix + size, '\0');
  framed[1] = static_cast<char>(size >> 24);
  framed[2] = static_cast<char>(size >> 16);
  framed[3] = static_cast<char>(size >> 8);
  framed[4] = static_cast<char>(size);
  message.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(framed.data() + kGrpcPrefix));
  return framed;
}

// A bidi Backend stream as a LocalCall: it is also the stream's observer.
template <class Request, class Response>
class BidiLocalCall final : public LocalCall, public api::StreamObserver<Response> {
 public:
  explicit BidiLocalCall(std::shared_ptr<LocalMailbox> mailbox) : mailbox_(std::move(mailbox)) {}

  template <class Open>
  void Start(Open&& open) {
    stream_ = std::forward<Open>(open)(static_cast<api::StreamObserver<Response>*>(this));
    ReadNext();
  }

  // Once the backend ended the stream (maybe inside Watch() itself), its
  // handle is not called again: only the relay's own end remains.
  bool Write(std::string_view message) override {
    Request request;
    if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) return false;
    if (!done_.load(std::memory_order_acquire)) stream_->Write(std::move(request));
    return true;
  }
  void WritesDone() override {
    if (!done_.load(std::memory_order_acquire)) stream_->WritesDone();
  }
  void ReadNext() override {
    if (!done_.load(std::memory_order_acquire)) stream_->ReadNext();
  }
  void Cancel() override {
    if (!done_.load(std::memory_order_acquire)) stream_->Cancel();
  }

  void OnResponse(Response response) override {
    mailbox_->Post(LocalEvent{this, Framed(response), std::nullopt});
  }
  void OnDone(absl::Status status) override {
    done_.store(true, std::memory_order_release);
    // The relay may destroy this call as soon as the event is posted.
    std::shared_ptr<LocalMailbox> mailbox = mailbox_;
    mailbox->Post(LocalEvent{this, std::string(), std::move(status)});
  }

 private:
  std::shared_ptr<LocalMailbox> mailbox_;
  std::unique_ptr<api::BidiStream<Request>> stream_;
  std::atomic<bool> done_{false};
};

}  // namespace

void LocalMailbox::SetReaderThread() {
  absl::MutexLock lock(&mu_);
  reader_ = std::this_thread::get_id();
}

void LocalMailbox::Post(LocalEvent event) {
  absl::MutexLock lock(&mu_);
  const bool wake = events_.empty() && !closed_ && std::this_thread::get_id() != reader_;
  events_.push_back(std::move(event));
  // Under the lock: once Close() has returned, no wake-up is under way.
  if (wake) wake_();
}

std::vector<LocalEvent> LocalMailbox::Take() {
  std::vector<LocalEvent> events;
  absl::MutexLock lock(&mu_);
  events.swap(events_);
  return events;
}

bool LocalMailbox::Empty() {
  absl::MutexLock lock(&mu_);
  return events_.empty();
}

void LocalMailbox::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool IsLocalCallPath(std::string_view path) {
  return path == kWatchPath || path == kLeaseKeepAlivePath;
}

std::unique_ptr<LocalCall> OpenLocalCall(std::string_view path, api::Backend& backend,
                                         const api::CallContext& ctx,
                                         std::shared_ptr<LocalMailbox> mailbox) {
  if (path == kWatchPath) {
    auto call = std::make_unique<
        BidiLocalCall<::etcdserverpb::WatchRequest, ::etcdserverpb::WatchResponse>>(
        std::move(mailbox));
    call->Start([&](api::StreamObserver<::etcdserverpb::WatchResponse>* observer) {
      return backend.Watch(ctx, observer);
    });
    return call;
  }
  if (path == kLeaseKeepAlivePath) {
    auto call = std::make_unique<BidiLocalCall<::etcdserverpb::LeaseKeepAliveRequest,
                                               ::etcdserverpb::LeaseKeepAliveResponse>>(
        std::move(mailbox));
    call->Start([&](api::StreamObserver<::etcdserverpb::LeaseKeepAliveResponse>* observer) {
      return backend.LeaseKeepAlive(ctx, observer);
    });
    return call;
  }
  return nullptr;
}

}  // namespace keel::proxy::grpcproxy
