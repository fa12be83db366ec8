#pragma once

#include <event2/event.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proxy/tcp/handles.h"

namespace keel::proxy::tcp {

// One libevent event_base run by its own thread. Everything registered on
// base() is loop-confined: only the loop thread touches it. Other threads
// reach the loop only through Post(), an eventfd-driven task queue, so the
// base itself needs no locking (libevent's evthread locks are not enabled).
// Post() and Stop() are thread-safe; the rest is loop-confined. The loop
// thread blocks SIGPIPE (writes to a closed peer fail with EPIPE instead).
class EventLoop {
 public:
  // Creates the base and the wake-up eventfd; Internal if libevent or the
  // eventfd cannot be set up. The loop does not run until Start().
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(std::string name);
  ~EventLoop();  // Stop()s and joins.
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Spawns the loop thread. REQUIRES: called once.
  void Start();

  // Runs `fn` on the loop thread, after the tasks posted before it. Tasks
  // posted once the loop has stopped are destroyed without running.
  // Thread-safe; never blocks on the loop.
  void Post(absl::AnyInvocable<void() &&> fn);

  // Makes the loop thread return after the tasks already posted and joins it.
  // Pending events stay registered (their owners free them). Thread-safe,
  // idempotent; REQUIRES: not called from the loop thread.
  void Stop();

  // True when called from the loop thread.
  bool IsLoopThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // The base, for registering events from the loop thread (or before Start).
  event_base* base() const { return base_.get(); }
  const std::string& name() const { return name_; }

 private:
  EventLoop(std::string name, EventBasePtr base, UniqueFd wake_fd);
  static void OnWake(evutil_socket_t fd, short what, void* arg);
  void RunTasks();

  const std::string name_;
  EventBasePtr base_;
  UniqueFd wake_fd_;
  EventPtr wake_event_;
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_;

  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
  bool joined_ = false;
};

}  // namespace keel::proxy::tcp
