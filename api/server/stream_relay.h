#pragma once

// The front's stream reactors: one gRPC server stream relayed to one Backend
// stream. Internal to api/server (front.cc); a header only to keep front.cc
// short.

#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "api/backend.h"
#include "api/server/call_context.h"
#include "api/server/grpc_status.h"
#include "api/server/method_metrics.h"
#include "grpcpp/support/server_callback.h"

namespace keel::api::server {

// The response half shared by the bidi and the server-streaming relays.
// `GrpcReactor` is grpc::ServerBidiReactor<Req, Response> or
// grpc::ServerWriteReactor<Response>; `Handle` the backend's stream handle.
//
// Flow control is end to end: the backend is asked for one response
// (ReadNext) at the start and one more each time the previous one has been
// written to the client, so at most one write is in flight and a slow client
// holds back its backend. The backend's OnDone becomes the call's status (after
// the write in flight, if any, has completed); the client's cancellation
// becomes Cancel() on the backend stream.
//
// Lifetime: heap-allocated by Start(), deleted by itself once both the gRPC
// OnDone and the backend's OnDone have happened. gRPC's OnDone always follows
// the Finish that the backend's OnDone causes, so whichever of the two returns
// last deletes the relay and with it the backend handle: either as the last
// action inside the observer's OnDone, or on a gRPC thread right after it.
// A Backend must therefore not touch the observer, and must let its handle be
// destroyed, from the moment it calls the observer's OnDone.
//
// Thread-safe: reactions and backend callbacks may run concurrently on any
// threads; shared state is under mu_ and nothing is called out under it.
template <class GrpcReactor, class Response, class Handle>
class ResponseRelay : public GrpcReactor, public StreamObserver<Response> {
 public:
  ResponseRelay(const ResponseRelay&) = delete;
  ResponseRelay& operator=(const ResponseRelay&) = delete;

  // StreamObserver: one response the relay asked for; written to the client.
  void OnResponse(Response response) override {
    response_ = std::move(response);
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = true;
    }
    this->StartWrite(&response_);
  }

  // StreamObserver: the backend stream ended; its status ends the call.
  void OnDone(absl::Status status) override {
    bool finish_now = false;
    {
      absl::MutexLock lock(&mu_);
      backend_status_ = status;
      finish_now = !write_in_flight_;
      finish_pending_ = write_in_flight_;
    }
    if (finish_now) FinishWith(status);
    bool last;
    {
      absl::MutexLock lock(&mu_);
      backend_returned_ = true;
      last = grpc_done_;
    }
    if (last) delete this;
  }

  // gRPC: the last write to the client completed (ok) or failed (!ok: the
  // call is dead; cancel the backend).
  void OnWriteDone(bool ok) override {
    if (ok) metrics_.Sent();
    std::optional<absl::Status> finish;
    bool read_next = false;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (finish_pending_) {
        finish_pending_ = false;
        finish = backend_status_;
      } else {
        read_next = ok && !backend_status_.has_value();
      }
    }
    if (finish.has_value()) {
      FinishWith(*finish);
    } else if (read_next) {
      stream_->ReadNext();
    } else if (!ok) {
      stream_->Cancel();
    }
  }

  // gRPC: the client cancelled, its deadline passed or the server shuts down.
  // The backend's OnDone (CANCELLED) then finishes the call.
  void OnCancel() override {
    if (stream_ != nullptr) stream_->Cancel();
  }

  // gRPC: the call is over (always after Finish, hence after the backend's
  // OnDone has started).
  void OnDone() override {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      grpc_done_ = true;
      last = backend_returned_;
    }
    if (last) delete this;
  }

 protected:
  explicit ResponseRelay(MethodMetrics& metrics) : metrics_(metrics) { metrics_.Started(); }
  ~ResponseRelay() override = default;

  // Opens the backend stream with `open(ctx, observer)` and asks for the first
  // response. Returns false if the backend already ended the stream (inside
  // `open`). REQUIRES: called once, from the method handler, before the
  // reactor is returned to gRPC.
  template <class Open>
  bool OpenBackend(const CallContext& ctx, Open&& open) {
    stream_ = std::forward<Open>(open)(ctx, static_cast<StreamObserver<Response>*>(this));
    if (BackendFinished()) return false;
    stream_->ReadNext();
    return true;
  }

  // Whether the backend's OnDone has been called.
  bool BackendFinished() {
    absl::MutexLock lock(&mu_);
    return backend_status_.has_value();
  }

  Handle& stream() { return *stream_; }
  MethodMetrics& metrics() { return metrics_; }

 private:
  void FinishWith(const absl::Status& status) {
    grpc::Status grpc_status = ToGrpcStatus(status);
    metrics_.Handled(grpc_status.error_code());
    this->Finish(std::move(grpc_status));
  }

  MethodMetrics& metrics_;
  // Set before the reactor is returned to gRPC, never changed after.
  std::unique_ptr<Handle> stream_;
  // The response being written; only touched between OnResponse and the
  // OnWriteDone that follows it.
  Response response_;

  absl::Mutex mu_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  // The backend ended while a write was in flight: Finish after it.
  bool finish_pending_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> backend_status_ ABSL_GUARDED_BY(mu_);
  bool backend_returned_ ABSL_GUARDED_BY(mu_) = false;
  bool grpc_done_ ABSL_GUARDED_BY(mu_) = false;
};

// Watch and LeaseKeepAlive: client messages are written to the backend stream
// as they arrive (the next read starts at once, so clients may pipeline); the
// client's half-close becomes WritesDone() and the stream stays open for the
// backend's responses, as etcd's own server does (etcd's grpc-proxy ends it
// instead, etcd #9751).
template <class Request, class Response>
class BidiRelay final : public ResponseRelay<grpc::ServerBidiReactor<Request, Response>, Response,
                                             BidiStream<Request>> {
 public:
  // Creates the reactor for one call and opens the backend stream with
  // `open(const CallContext&, StreamObserver<Response>*)`.
  template <class Open>
  static grpc::ServerBidiReactor<Request, Response>* Start(grpc::CallbackServerContext* context,
                                                           MethodMetrics& metrics, Open&& open) {
    auto* relay = new BidiRelay(metrics);
    if (relay->OpenBackend(CallContextFrom(*context), std::forward<Open>(open))) {
      relay->StartRead(&relay->request_);
    }
    return relay;
  }

  // gRPC: one client message (ok) or the client's half-close / the call's end.
  void OnReadDone(bool ok) override {
    if (!ok) {
      this->stream().WritesDone();
      return;
    }
    this->metrics().Received();
    if (this->BackendFinished()) return;
    this->stream().Write(std::move(request_));
    request_.Clear();
    this->StartRead(&request_);
  }

 private:
  using Base =
      ResponseRelay<grpc::ServerBidiReactor<Request, Response>, Response, BidiStream<Request>>;
  explicit BidiRelay(MethodMetrics& metrics) : Base(metrics) {}

  Request request_;
};

// Snapshot and Observe: one request, then the backend's responses.
template <class Request, class Response>
class WriteRelay final
    : public ResponseRelay<grpc::ServerWriteReactor<Response>, Response, ReadStream> {
 public:
  // Creates the reactor for one call and opens the backend stream with
  // `open(const CallContext&, Request, StreamObserver<Response>*)`.
  template <class Open>
  static grpc::ServerWriteReactor<Response>* Start(grpc::CallbackServerContext* context,
                                                   MethodMetrics& metrics, const Request& request,
                                                   Open&& open) {
    auto* relay = new WriteRelay(metrics);
    relay->metrics().Received();
    relay->OpenBackend(CallContextFrom(*context),
                       [&](const CallContext& ctx, StreamObserver<Response>* observer) {
                         return open(ctx, Request(request), observer);
                       });
    return relay;
  }

 private:
  using Base = ResponseRelay<grpc::ServerWriteReactor<Response>, Response, ReadStream>;
  explicit WriteRelay(MethodMetrics& metrics) : Base(metrics) {}
};

}  // namespace keel::api::server
