#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "proxy/tcp/event_loop.h"
#include "proxy/tcp/handles.h"
#include "proxy/tcp/routes.h"
#include "proxy/tcp/sockets.h"

namespace keel::proxy::tcp {

class Connection;

// What every Worker shares. Everything here is thread-safe and outlives the
// workers.
struct WorkerShared {
  absl::Duration dial_timeout = absl::Seconds(1);
  std::atomic<uint64_t>* tickets = nullptr;  // one ticket per client connection
  DialObserver* observer = nullptr;
  common::Counter* connections_total = nullptr;
  common::Gauge* active_connections = nullptr;
};

// The data path of one event loop: its own SO_REUSEPORT listener, its
// connections, and the routing snapshot it was last given. Loop-confined:
// once its loop runs, call it only there (via EventLoop::Post); before that
// (Listen, the first SetRoutes) and after the loop stopped, from its owner.
// No locks.
class Worker {
 public:
  // Size of the per-loop read buffer shared by its connections.
  static constexpr size_t kScratchSize = 128 << 10;

  // REQUIRES: `loop` and `shared`'s pointees outlive the worker.
  Worker(EventLoop& loop, const WorkerShared& shared, uint64_t seed);
  ~Worker();  // closes every connection
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds a listener on `addr` (SO_REUSEADDR + SO_REUSEPORT) on this loop.
  // Call before the loop starts. Unavailable/AlreadyExists with the errno text
  // if the bind or listen fails.
  absl::Status Listen(const SockAddr& addr);

  // Routes for connections accepted from now on.
  void SetRoutes(std::shared_ptr<const Routes> routes);

  // Closes the listener; open connections continue. When the last one ends
  // (or at once if there is none), `on_idle` runs once on the loop.
  void StopAccepting(std::function<void()> on_idle);

  // Ends every connection now.
  void CloseAll();

  size_t connection_count() const { return connections_.size(); }
  // The listening socket (-1 when not listening).
  int listener_fd() const {
    return listener_ == nullptr ? -1 : evconnlistener_get_fd(listener_.get());
  }

  // For Connection.
  EventLoop& loop() { return loop_; }
  char* scratch() { return scratch_.get(); }
  const WorkerShared& shared() const { return shared_; }
  // Destroys `c`. Called by the connection itself when it ends.
  void Remove(Connection* c);

 private:
  static void AcceptCallback(evconnlistener* listener, evutil_socket_t fd, sockaddr* addr, int len,
                             void* arg);
  static void AcceptErrorCallback(evconnlistener* listener, void* arg);
  static void ResumeCallback(evutil_socket_t fd, short what, void* arg);
  void OnAccept(UniqueFd fd);
  // accept() failed (e.g. EMFILE): pause accepting briefly instead of
  // spinning on the pending connection.
  void OnAcceptError(int err);

  EventLoop& loop_;
  const WorkerShared shared_;
  std::mt19937_64 rng_;
  std::unique_ptr<char[]> scratch_;
  ListenerPtr listener_;
  EventPtr resume_timer_;  // re-enables the listener after an accept error
  std::shared_ptr<const Routes> routes_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  std::function<void()> on_idle_;
};

}  // namespace keel::proxy::tcp
