#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "common/url.h"
#include "proxy/tcp/event_loop.h"
#include "proxy/tcp/sockets.h"

namespace keel::proxy::tcp {

// Whether `host` is an IPv4 or IPv6 literal (no brackets), which
// ResolveHostPort converts without a DNS lookup, so an event loop may do it
// inline. Pure.
bool IsIpLiteral(const std::string& host);

// Resolves host names on one worker thread and posts the answers back to an
// event loop, so the loop never blocks on a slow or dead DNS server (glibc's
// getaddrinfo waits 5 s per attempt). Requests are served one at a time, in
// order. Thread-safe. The worker is detached and owns its state: Stop() (and
// the destructor) never wait for a lookup in flight.
class HostResolver {
 public:
  // Looks up one host; blocking. ResolveHostPort in production.
  using ResolveFn = std::function<absl::StatusOr<std::vector<SockAddr>>(const common::HostPort&)>;
  // One answer per requested host, in request order.
  using Results = std::vector<absl::StatusOr<std::vector<SockAddr>>>;
  // Runs once on the loop with the answers, unless Stop() came first.
  using Done = absl::AnyInvocable<void(Results) &&>;

  // Starts the worker. REQUIRES: `loop` outlives this object's Stop(). `resolve`
  // is called on the worker only; it may outlive this object by one call.
  explicit HostResolver(EventLoop& loop, ResolveFn resolve = ResolveHostPort);
  ~HostResolver();  // Stop()s
  HostResolver(const HostResolver&) = delete;
  HostResolver& operator=(const HostResolver&) = delete;

  // Queues a lookup of `hosts`; `done` runs on the loop with the answers.
  // Never blocks. After Stop() the request is dropped (`done` is destroyed
  // without running).
  void Resolve(std::vector<common::HostPort> hosts, Done done);

  // Drops queued requests and answers not yet delivered and tells the worker
  // to exit. Returns without waiting for a lookup in flight (the worker
  // finishes it, discards the answer and exits); once it returns nothing more
  // is posted to the loop and no `done` starts. Thread-safe, idempotent.
  void Stop();

 private:
  struct State;
  static void Run(std::shared_ptr<State> state);

  std::shared_ptr<State> state_;  // shared with the worker and posted answers
};

}  // namespace keel::proxy::tcp
