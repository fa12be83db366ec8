#include "proxy/tcp/event_loop.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "common/sigpipe.h"
#include "common/status.h"

namespace keel::proxy::tcp {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(std::string name) {
  EventBasePtr base(event_base_new());
  if (base == nullptr) return absl::InternalError("event_base_new failed");
  UniqueFd wake_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd.valid()) return common::ErrnoStatus(errno, "eventfd");
  std::unique_ptr<EventLoop> loop(
      new EventLoop(std::move(name), std::move(base), std::move(wake_fd)));
  loop->wake_event_.reset(event_new(loop->base(), loop->wake_fd_.get(), EV_READ | EV_PERSIST,
                                    &EventLoop::OnWake, loop.get()));
  if (loop->wake_event_ == nullptr || event_add(loop->wake_event_.get(), nullptr) != 0) {
    return absl::InternalError("cannot register the loop's wake-up event");
  }
  return loop;
}

EventLoop::EventLoop(std::string name, EventBasePtr base, UniqueFd wake_fd)
    : name_(std::move(name)), base_(std::move(base)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() {
  Stop();
  wake_event_.reset();
  {
    // Tasks never run may own resources that refer to the base: drop them
    // while it still exists.
    absl::MutexLock lock(&mu_);
    tasks_.clear();
  }
}

void EventLoop::Start() {
  started_ = true;
  thread_ = std::thread([this] {
    common::BlockSigpipeInThisThread();  // splice(2) to a socket has no MSG_NOSIGNAL
    thread_id_.store(std::this_thread::get_id());
    // EVLOOP_NO_EXIT_ON_EMPTY: the wake-up event is always there anyway.
    event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY);
    thread_id_.store(std::thread::id());
  });
}

void EventLoop::Post(absl::AnyInvocable<void() &&> fn) {
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    wake = tasks_.empty();
    tasks_.push_back(std::move(fn));
  }
  if (wake) {
    const uint64_t one = 1;
    // EAGAIN means the counter is saturated: a wake-up is pending anyway.
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
  }
}

void EventLoop::Stop() {
  if (!started_ || joined_) return;
  Post([this]() { event_base_loopbreak(base_.get()); });
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  joined_ = true;
}

void EventLoop::OnWake(evutil_socket_t fd, short, void* arg) {
  uint64_t count = 0;
  [[maybe_unused]] ssize_t n = ::read(fd, &count, sizeof(count));
  static_cast<EventLoop*>(arg)->RunTasks();
}

void EventLoop::RunTasks() {
  std::vector<absl::AnyInvocable<void() &&>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) std::move(task)();
}

}  // namespace keel::proxy::tcp
