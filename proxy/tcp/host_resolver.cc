#include "proxy/tcp/host_resolver.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace keel::proxy::tcp {

bool IsIpLiteral(const std::string& host) {
  in6_addr buf;
  return inet_pton(AF_INET, host.c_str(), &buf) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &buf) == 1;
}

struct HostResolver::State {
  struct Request {
    std::vector<common::HostPort> hosts;
    Done done;
  };

  State(EventLoop& l, ResolveFn r) : loop(l), resolve(std::move(r)) {}

  bool Stopped() {
    absl::MutexLock lock(&mu);
    return stopped;
  }

  EventLoop& loop;  // posted to only while !stopped
  const ResolveFn resolve;
  absl::Mutex mu;
  std::deque<Request> queue ABSL_GUARDED_BY(mu);
  bool stopped ABSL_GUARDED_BY(mu) = false;
  // The worker is inside loop.Post(): Stop() waits for it, so that nothing is
  // posted after Stop() returns (the loop may be gone by then).
  bool posting ABSL_GUARDED_BY(mu) = false;
};

HostResolver::HostResolver(EventLoop& loop, ResolveFn resolve)
    : state_(std::make_shared<State>(loop, std::move(resolve))) {
  // Detached: a getaddrinfo call cannot be cancelled, and shutdown must not
  // wait out a dead DNS server. The worker keeps `state_` alive itself.
  std::thread(&HostResolver::Run, state_).detach();
}

HostResolver::~HostResolver() { Stop(); }

void HostResolver::Resolve(std::vector<common::HostPort> hosts, Done done) {
  absl::MutexLock lock(&state_->mu);
  if (state_->stopped) return;  // `done` dies with this frame, after the unlock
  state_->queue.push_back({std::move(hosts), std::move(done)});
}

void HostResolver::Stop() {
  std::deque<State::Request> dropped;  // destroyed after the unlock
  absl::MutexLock lock(&state_->mu);
  state_->stopped = true;
  dropped.swap(state_->queue);
  state_->mu.Await(absl::Condition(
      +[](State* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) { return !s->posting; }, state_.get()));
}

void HostResolver::Run(std::shared_ptr<State> state) {
  for (;;) {
    State::Request request;
    {
      absl::MutexLock lock(&state->mu);
      state->mu.Await(absl::Condition(
          +[](State* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) {
            return s->stopped || !s->queue.empty();
          },
          state.get()));
      if (state->stopped) return;
      request = std::move(state->queue.front());
      state->queue.pop_front();
    }
    Results results;
    for (const common::HostPort& hp : request.hosts) {
      if (state->Stopped()) return;
      results.push_back(state->resolve(hp));
    }
    {
      absl::MutexLock lock(&state->mu);
      if (state->stopped) return;
      state->posting = true;
    }
    // Posted outside the lock; a Stop() meanwhile waits for `posting`, and
    // the task itself drops the answer if Stop() came before it ran.
    state->loop.Post([state, done = std::move(request.done), results = std::move(results)]() mutable {
      if (!state->Stopped()) std::move(done)(std::move(results));
    });
    absl::MutexLock lock(&state->mu);
    state->posting = false;
  }
}

}  // namespace keel::proxy::tcp
