#include "proxy/grpc/registration.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"

namespace keel::proxy::grpcproxy {
namespace {

// etcd's proxy rate-limits registration attempts to one per second.
constexpr absl::Duration kRetryInterval = absl::Seconds(1);
// Lower bound of a unary call's deadline (the TTL when that is longer).
constexpr absl::Duration kMinCallTimeout = absl::Seconds(5);

std::string LeaseIdHex(int64_t id) { return absl::StrFormat("%016x", static_cast<uint64_t>(id)); }

absl::Status InvalidValue(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid registration value: ", what));
}

}  // namespace

std::string EncodeRegistrationValue(std::string_view addr, std::string_view hostname) {
  // Go marshals naming.Update's fields in declaration order (Op, Addr,
  // Metadata), so the object must keep insertion order; Metadata is the JSON
  // text of {"name": hostname}, embedded as a string.
  nlohmann::ordered_json metadata;
  metadata["name"] = std::string(hostname);
  nlohmann::ordered_json update;
  update["Op"] = 0;
  update["Addr"] = std::string(addr);
  update["Metadata"] = metadata.dump();
  return update.dump();
}

absl::StatusOr<RegisteredEndpoint> DecodeRegistrationValue(std::string_view value) {
  // Mirrors Go's json.Unmarshal into naming.Update followed by the proxy's
  // decoding of the metadata string into {"name": string}.
  nlohmann::json update = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (update.is_discarded()) return InvalidValue("not JSON");
  if (!update.is_object()) return InvalidValue("not a JSON object");
  RegisteredEndpoint out;
  if (auto it = update.find("Op"); it != update.end() && !it->is_null()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() > 255) {
      return InvalidValue("\"Op\" is not an integer in 0..255");
    }
    out.op = static_cast<int>(it->get<uint64_t>());
  }
  if (auto it = update.find("Addr"); it != update.end() && !it->is_null()) {
    if (!it->is_string()) return InvalidValue("\"Addr\" is not a string");
    out.addr = it->get<std::string>();
  }
  auto meta_it = update.find("Metadata");
  if (meta_it == update.end() || !meta_it->is_string()) {
    return InvalidValue("\"Metadata\" is not a string");
  }
  nlohmann::json metadata =
      nlohmann::json::parse(meta_it->get<std::string>(), nullptr, /*allow_exceptions=*/false);
  if (metadata.is_discarded()) return InvalidValue("\"Metadata\" is not JSON");
  if (metadata.is_null()) return out;
  if (!metadata.is_object()) return InvalidValue("\"Metadata\" is not a JSON object");
  if (auto it = metadata.find("name"); it != metadata.end() && !it->is_null()) {
    if (!it->is_string()) return InvalidValue("metadata \"name\" is not a string");
    out.name = it->get<std::string>();
  }
  return out;
}

// State shared with Backend callbacks. They hold it by shared_ptr: a callback
// may still be returning (releasing `mu`) when the thread it woke up goes on
// to finish, and Stop() and the destructor follow.
struct Registration::Shared {
  absl::Mutex start_mu;  // serializes Start() and Stop()
  bool started ABSL_GUARDED_BY(start_mu) = false;

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // Stop() cancels the unary call in flight (a hung etcd must not hold up
  // shutdown for a whole TTL); every later call is cancelled at once.
  const std::shared_ptr<api::CancelSignal> cancel = std::make_shared<api::CancelSignal>();
};

// Records what one keepalive stream delivers; the registration thread acts on
// it. Lives until its OnDone has run (KeepAlive waits for that).
class Registration::KeepAliveObserver final
    : public api::StreamObserver<etcdserverpb::LeaseKeepAliveResponse> {
 public:
  explicit KeepAliveObserver(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

  void OnResponse(etcdserverpb::LeaseKeepAliveResponse response) override {
    absl::MutexLock lock(&shared_->mu);
    response_ = std::move(response);
  }
  void OnDone(absl::Status status) override {
    absl::MutexLock lock(&shared_->mu);
    done_ = std::move(status);
  }

  // Guarded by shared_->mu (read by the registration thread).
  std::optional<etcdserverpb::LeaseKeepAliveResponse> response_;
  std::optional<absl::Status> done_;

 private:
  const std::shared_ptr<Shared> shared_;
};

Registration::Registration(api::Backend& backend, RegistrationOptions options)
    : backend_(backend),
      options_(std::move(options)),
      key_(options_.prefix + "/" + options_.advertise),
      value_(EncodeRegistrationValue(options_.advertise, options_.hostname)),
      shared_(std::make_shared<Shared>()) {}

Registration::~Registration() { Stop(); }

void Registration::Start() {
  absl::MutexLock lock(&shared_->start_mu);
  if (shared_->started) return;
  shared_->started = true;
  thread_ = std::thread([this] { Run(); });
}

void Registration::Stop() {
  // Held across the join so that a concurrent Stop() returns only once the
  // thread is gone; the thread never takes start_mu.
  absl::MutexLock lock(&shared_->start_mu);
  shared_->started = true;  // a later Start() does nothing
  {
    absl::MutexLock stop_lock(&shared_->mu);
    shared_->stopping = true;
  }
  shared_->cancel->Cancel();
  if (thread_.joinable()) thread_.join();
}

bool Registration::SleepUntil(absl::Time deadline) {
  absl::MutexLock lock(&shared_->mu);
  shared_->mu.AwaitWithDeadline(absl::Condition(&shared_->stopping), deadline);
  return !shared_->stopping;
}

template <class Request, class Response>
absl::StatusOr<Response> Registration::Call(void (api::Backend::*method)(const api::CallContext&,
                                                                         Request,
                                                                         api::Done<Response>),
                                            Request request) {
  auto result = std::make_shared<std::optional<absl::StatusOr<Response>>>();
  api::CallContext ctx;
  ctx.deadline = absl::Now() + std::max(kMinCallTimeout, absl::Seconds(options_.ttl_seconds));
  ctx.cancel = shared_->cancel;
  // The callback only records the answer (it must not block).
  (backend_.*method)(ctx, std::move(request),
                     [shared = shared_, result](absl::StatusOr<Response> response) {
                       absl::MutexLock lock(&shared->mu);
                       *result = std::move(response);
                     });
  // Waits even when Stop() is called meanwhile: once Stop() has returned no
  // callback of ours may run, so the Backend can be destroyed right after.
  // Stop() cancels the call, and the deadline bounds the wait.
  absl::MutexLock lock(&shared_->mu);
  auto answered = [&result]() { return result->has_value(); };
  shared_->mu.Await(absl::Condition(&answered));
  return std::move(**result);
}

absl::StatusOr<std::pair<int64_t, int64_t>> Registration::RegisterOnce() {
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(options_.ttl_seconds);
  absl::StatusOr<etcdserverpb::LeaseGrantResponse> granted =
      Call(&api::Backend::LeaseGrant, std::move(grant));
  if (!granted.ok()) return granted.status();
  if (!granted->error().empty()) return absl::UnavailableError(granted->error());
  if (!SleepUntil(absl::InfinitePast())) return absl::CancelledError("registration stopped");

  // Unconditional Txn (no compares): the put always applies. If it fails the
  // lease is not kept alive and expires on its own.
  etcdserverpb::TxnRequest txn;
  etcdserverpb::PutRequest* put = txn.add_success()->mutable_request_put();
  put->set_key(key_);
  put->set_value(value_);
  put->set_lease(granted->id());
  absl::StatusOr<etcdserverpb::TxnResponse> txned = Call(&api::Backend::Txn, std::move(txn));
  if (!txned.ok()) return txned.status();
  return std::make_pair(granted->id(),
                        granted->ttl() > 0 ? granted->ttl() : int64_t{options_.ttl_seconds});
}

void Registration::KeepAlive(int64_t lease_id, int64_t ttl_seconds) {
  auto logger = common::Logger("grpc-proxy");
  auto observer = std::make_unique<KeepAliveObserver>(shared_);
  std::unique_ptr<api::LeaseKeepAliveStream> stream =
      backend_.LeaseKeepAlive(api::CallContext{}, observer.get());
  stream->ReadNext();

  // As etcd's client: the first keepalive at once, the next TTL/3 after each
  // answer; the lease counts as expired when no answer came for a whole TTL.
  absl::Time expires = absl::Now() + absl::Seconds(ttl_seconds);
  absl::Time next_send = absl::Now();
  while (true) {
    if (absl::Now() >= next_send) {
      etcdserverpb::LeaseKeepAliveRequest request;
      request.set_id(lease_id);
      stream->Write(std::move(request));
      next_send = absl::Now() + absl::Seconds(ttl_seconds) / 3;
    }
    bool stopping = false;
    std::optional<etcdserverpb::LeaseKeepAliveResponse> response;
    std::optional<absl::Status> done;
    {
      absl::MutexLock lock(&shared_->mu);
      auto ready = [this, &observer]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(shared_->mu) {
        return shared_->stopping || observer->response_.has_value() || observer->done_.has_value();
      };
      shared_->mu.AwaitWithDeadline(absl::Condition(&ready), std::min(next_send, expires));
      stopping = shared_->stopping;
      response = std::move(observer->response_);
      observer->response_.reset();
      done = observer->done_;
    }
    if (stopping) break;
    if (response.has_value()) {
      if (response->ttl() <= 0) {
        KEEL_LOG_EVENT(*logger, spdlog::level::warn, "registration lease expired",
                       {{"key", key_}, {"lease-id", LeaseIdHex(lease_id)}});
        break;
      }
      ttl_seconds = response->ttl();
      expires = absl::Now() + absl::Seconds(ttl_seconds);
      next_send = absl::Now() + absl::Seconds(ttl_seconds) / 3;
      if (!done.has_value()) stream->ReadNext();
    }
    if (done.has_value()) {
      KEEL_LOG_EVENT(
          *logger, spdlog::level::warn, "registration keepalive stream ended",
          {{"key", key_}, {"lease-id", LeaseIdHex(lease_id)}, {"error", done->ToString()}});
      break;
    }
    if (absl::Now() >= expires) {
      KEEL_LOG_EVENT(*logger, spdlog::level::warn, "no keepalive answer within the lease TTL",
                     {{"key", key_}, {"lease-id", LeaseIdHex(lease_id)}});
      break;
    }
  }

  // The observer must outlive the stream's OnDone: cancel, then wait for it.
  bool ended = false;
  {
    absl::MutexLock lock(&shared_->mu);
    ended = observer->done_.has_value();
  }
  if (!ended) {
    stream->Cancel();
    absl::MutexLock lock(&shared_->mu);
    auto has_ended = [&observer]() { return observer->done_.has_value(); };
    shared_->mu.Await(absl::Condition(&has_ended));
  }
  stream.reset();
  observer.reset();
}

void Registration::Run() {
  auto logger = common::Logger("grpc-proxy");
  absl::Time next_attempt = absl::InfinitePast();
  while (SleepUntil(next_attempt)) {
    next_attempt = absl::Now() + kRetryInterval;
    absl::StatusOr<std::pair<int64_t, int64_t>> lease = RegisterOnce();
    if (!lease.ok()) {
      if (!SleepUntil(absl::InfinitePast())) return;  // stopped, not failed
      KEEL_LOG_EVENT(*logger, spdlog::level::warn, "failed to register",
                     {{"key", key_}, {"error", lease.status().ToString()}});
      continue;
    }
    KEEL_LOG_EVENT(*logger, spdlog::level::info, "registered",
                   {{"key", key_}, {"lease-id", LeaseIdHex(lease->first)}, {"ttl", lease->second}});
    KeepAlive(lease->first, lease->second);
    if (!SleepUntil(absl::InfinitePast())) return;
    KEEL_LOG_EVENT(*logger, spdlog::level::warn, "registration lost; registering again",
                   {{"key", key_}});
  }
}

}  // namespace keel::proxy::grpcproxy
