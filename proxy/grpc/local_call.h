#pragma once

// The frame relay's own calls: a Watch or LeaseKeepAlive stream, or a unary
// call, that the relay serves against the Backend chain itself, without the
// chain's gRPC server. Messages are decoded here; the relay does the HTTP/2
// framing. This is what makes a watch event fanned out to 1,000 client
// watchers cost 1,000 small writes gathered on a relay loop's thread instead of
// 1,000 gRPC server writes, and a call the chain must see (a cached or
// namespaced read, MemberList) cost no gRPC server call.

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "api/backend.h"
#include "proxy/grpc/mailbox.h"

namespace keel::proxy::grpcproxy {

class LocalCall;

// One thing a local call's backend stream did, for its relay loop's thread.
struct LocalEvent {
  LocalCall* call = nullptr;
  // One response, serialized as a gRPC message (behind its 5-byte prefix),
  // unless done.
  std::string message;
  // Set on the call's last event: how its backend stream ended.
  std::optional<absl::Status> done;
};

// Where backend callbacks (any thread) leave LocalEvents for the relay's
// loop: a fan-out of many events costs it one wake-up.
using LocalMailbox = Mailbox<LocalEvent>;

// The relay's handle on one backend stream or unary call. Its events
// (responses, then one `done`) arrive through the mailbox it was opened
// with; a stream's response comes only after a ReadNext() asked for it, so
// the relay bounds what it holds (a unary call has one response and ignores
// ReadNext; it goes to the backend on its one Write, and Write refuses a
// second message).
// Relay-thread confined, but its events are posted from any thread; the
// relay may call it from inside its own Take() processing.
// Destroy it only after its `done` event has been taken (the backend may
// still touch it until then).
class LocalCall {
 public:
  virtual ~LocalCall() = default;
  // Decodes one request message and writes it to the backend stream.
  // Returns false, writing nothing, when it is not a valid message.
  virtual bool Write(std::string_view message) = 0;
  // The client half-closed: no more requests; responses go on.
  virtual void WritesDone() = 0;
  // Allows one more response event.
  virtual void ReadNext() = 0;
  // Ends the stream; the `done` event follows (CANCELLED or its own status).
  virtual void Cancel() = 0;

  // The relay's own per-call state; never touched here.
  void* tag = nullptr;
};

// Opens one local call on `backend`: a Watch or LeaseKeepAlive stream (its
// first response already asked for), or a unary call (sent on its Write).
// `backend` and `mailbox` must outlive the call's `done` event.
using LocalCallFactory = std::unique_ptr<LocalCall> (*)(api::Backend& backend,
                                                        const api::CallContext& ctx,
                                                        std::shared_ptr<LocalMailbox> mailbox);

// The factory of the call at `path` ("/etcdserverpb.Watch/Watch"): Watch,
// LeaseKeepAlive and every unary method; null for any other path.
LocalCallFactory LocalCallFactoryFor(std::string_view path);

}  // namespace keel::proxy::grpcproxy
