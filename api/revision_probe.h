#pragma once

// RevisionProbe: learns the store's current revision with a linearizable
// read, for the layers that must prove freshness (the watch coalescer's
// `created` header, the range cache's linearizable reads). Concurrent callers
// share upstream reads, so N callers cost at most two.

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"

namespace keel::api {

// Thread-safe. `backend` must outlive the probe and every probe in flight.
class RevisionProbe {
 public:
  explicit RevisionProbe(Backend& backend) : state_(std::make_shared<State>(backend)) {}
  RevisionProbe(const RevisionProbe&) = delete;
  RevisionProbe& operator=(const RevisionProbe&) = delete;

  // Completes `done` with the response header (cluster_id, member_id,
  // revision, raft_term) of a linearizable count-only limit-1 Range over
  // [key, range_end) that was sent after this call, with ctx's token,
  // require_leader and deadline. Its revision is therefore >= every revision
  // acknowledged before Fetch was called. Callers that ask while a probe with
  // the same (token, require_leader, key, range_end) is in flight share the
  // next one. Errors (permission denied, no leader, ...) come from upstream
  // unchanged. Without a token, pass a fixed point key: nothing is checked.
  // After Close(), `done` gets CANCELLED at once.
  void Fetch(const CallContext& ctx, std::string key, std::string range_end,
             Done<::etcdserverpb::ResponseHeader> done) {
    ProbeKey probe_key{ctx.token, ctx.require_leader, std::move(key), std::move(range_end)};
    bool closed = false;
    {
      absl::MutexLock lock(&state_->mu);
      closed = state_->closed;
      if (!closed) {
        auto [it, inserted] = state_->probes.try_emplace(probe_key);
        if (!inserted) {
          // A probe is in flight: it may have been sent before this call, so
          // this caller waits for the next one.
          it->second.next.push_back(std::move(done));
          it->second.next_deadline = std::min(it->second.next_deadline, ctx.deadline);
          return;
        }
      }
    }
    if (closed) {
      std::move(done)(absl::CancelledError("revision probe closed"));
      return;
    }
    std::vector<Done<::etcdserverpb::ResponseHeader>> batch;
    batch.push_back(std::move(done));
    Send(state_, std::move(probe_key), std::move(batch), ctx.deadline);
  }

  // For the owner's shutdown: no upstream Range is sent any more (Fetch, and
  // the next probe a completing one would send, both complete their callers
  // with CANCELLED instead); callers waiting for a next probe get CANCELLED
  // now, on this thread. Probes already sent still complete normally.
  // Idempotent. Not to be called from inside a `done` of this probe while
  // holding a lock that `done` takes.
  void Close() {
    Waiters cancelled;
    {
      absl::MutexLock lock(&state_->mu);
      state_->closed = true;
      for (auto& [key, in_flight] : state_->probes) {
        for (auto& done : in_flight.next) cancelled.push_back(std::move(done));
        in_flight = InFlight{};
      }
    }
    for (auto& done : cancelled) std::move(done)(absl::CancelledError("revision probe closed"));
  }

 private:
  using ProbeKey = std::tuple<std::string, bool, std::string, std::string>;
  using Waiters = std::vector<Done<::etcdserverpb::ResponseHeader>>;

  struct InFlight {
    // Callers that arrived after the in-flight probe was sent.
    Waiters next;
    absl::Time next_deadline = absl::InfiniteFuture();
  };
  // Shared with the completion callbacks, which may run after the probe is
  // destroyed.
  struct State {
    explicit State(Backend& b) : backend(b) {}
    Backend& backend;
    absl::Mutex mu;
    // Present while a probe for that key is in flight.
    std::map<ProbeKey, InFlight> probes ABSL_GUARDED_BY(mu);
    bool closed ABSL_GUARDED_BY(mu) = false;  // Close() was called
  };

  static void Send(std::shared_ptr<State> state, ProbeKey probe_key, Waiters batch,
                   absl::Time deadline) {
    CallContext ctx;
    ctx.token = std::get<0>(probe_key);
    ctx.require_leader = std::get<1>(probe_key);
    ctx.deadline = deadline;
    ::etcdserverpb::RangeRequest request;
    request.set_key(std::get<2>(probe_key));
    request.set_range_end(std::get<3>(probe_key));
    request.set_limit(1);
    request.set_count_only(true);
    Backend& backend = state->backend;
    backend.Range(
        ctx, std::move(request),
        [state = std::move(state), probe_key = std::move(probe_key),
         batch = std::move(batch)](absl::StatusOr<::etcdserverpb::RangeResponse> response) mutable {
          absl::StatusOr<::etcdserverpb::ResponseHeader> header =
              response.ok() ? absl::StatusOr<::etcdserverpb::ResponseHeader>(response->header())
                            : absl::StatusOr<::etcdserverpb::ResponseHeader>(response.status());
          Waiters next;
          absl::Time next_deadline = absl::InfiniteFuture();
          bool closed = false;
          {
            absl::MutexLock lock(&state->mu);
            auto it = state->probes.find(probe_key);
            next = std::move(it->second.next);
            next_deadline = it->second.next_deadline;
            closed = state->closed;
            if (next.empty() || closed) {
              state->probes.erase(it);
            } else {
              it->second = InFlight{};
            }
          }
          for (auto& done : batch) std::move(done)(header);
          if (closed) {
            for (auto& done : next) std::move(done)(absl::CancelledError("revision probe closed"));
            return;
          }
          if (!next.empty()) {
            Send(std::move(state), std::move(probe_key), std::move(next), next_deadline);
          }
        });
  }

  std::shared_ptr<State> state_;
};

}  // namespace keel::api
