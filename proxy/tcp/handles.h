#pragma once

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <unistd.h>

#include <memory>
#include <utility>

namespace keel::proxy::tcp {

// Owning wrappers for the C handles of the gateway (STYLE.md section 5). Each
// is created where the handle is created and frees it exactly once.

struct EventBaseFree {
  void operator()(event_base* b) const { event_base_free(b); }
};
using EventBasePtr = std::unique_ptr<event_base, EventBaseFree>;

struct EventFree {
  void operator()(event* e) const { event_free(e); }
};
using EventPtr = std::unique_ptr<event, EventFree>;

struct EvBufferFree {
  void operator()(evbuffer* b) const { evbuffer_free(b); }
};
using EvBufferPtr = std::unique_ptr<evbuffer, EvBufferFree>;

struct ListenerFree {
  void operator()(evconnlistener* l) const { evconnlistener_free(l); }
};
using ListenerPtr = std::unique_ptr<evconnlistener, ListenerFree>;

// An owned file descriptor, closed on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int Release() { return std::exchange(fd_, -1); }
  // Closes the held descriptor, if any.
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace keel::proxy::tcp
