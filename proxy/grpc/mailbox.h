#pragma once

// Mailbox: where any thread leaves events for one relay loop thread, which
// takes them in batches. Posting to an empty mailbox from another thread
// calls `wake`, so a burst of events costs the loop one wake-up; the loop's
// own posts need none (it takes what is left before it sleeps).

#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace keel::proxy::grpcproxy {

// Thread-safe. `wake` runs under the mailbox's lock: it must be short and
// must not post.
template <class Event>
class Mailbox {
 public:
  explicit Mailbox(std::function<void()> wake) : wake_(std::move(wake)) {}
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // The calling thread is the one that Take()s: its posts need no wake-up.
  void SetReaderThread() {
    absl::MutexLock lock(&mu_);
    reader_ = std::this_thread::get_id();
  }
  // False, dropping `event`, once the mailbox is closed.
  bool Post(Event event) {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    const bool wake = events_.empty() && std::this_thread::get_id() != reader_;
    events_.push_back(std::move(event));
    // Under the lock: once Close() has returned, no wake-up is under way.
    if (wake) wake_();
    return true;
  }
  // Every event posted so far, in order, into `events` (cleared first; its
  // capacity goes back to the mailbox for the next posts). False when there
  // was none.
  bool Take(std::vector<Event>& events) {
    events.clear();
    absl::MutexLock lock(&mu_);
    events.swap(events_);
    return !events.empty();
  }
  // The newest event posted, taken out of turn, when `pred` accepts it.
  template <class Pred>
  std::optional<Event> TakeNewestIf(Pred pred) {
    absl::MutexLock lock(&mu_);
    if (events_.empty() || !pred(events_.back())) return std::nullopt;
    std::optional<Event> newest(std::move(events_.back()));
    events_.pop_back();
    return newest;
  }
  bool Empty() {
    absl::MutexLock lock(&mu_);
    return events_.empty();
  }
  // No more posts and no more wake-ups (the loop is going): once it
  // returns, `wake` is not running and never runs again. What was posted
  // before can still be taken.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  const std::function<void()> wake_;
  absl::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id reader_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::proxy::grpcproxy
