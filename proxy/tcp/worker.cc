#include "proxy/tcp/worker.h"

#include <errno.h>

#include <string>
#include <utility>
#include <vector>

#include "common/logging.h"
#include "proxy/tcp/connection.h"
#include "proxy/tcp/endpoint_picker.h"

namespace keel::proxy::tcp {

Worker::Worker(EventLoop& loop, const WorkerShared& shared, uint64_t seed)
    : loop_(loop), shared_(shared), rng_(seed), scratch_(new char[kScratchSize]) {}

Worker::~Worker() { CloseAll(); }

absl::Status Worker::Listen(const SockAddr& addr) {
  listener_.reset(evconnlistener_new_bind(
      loop_.base(), &Worker::AcceptCallback, this,
      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT,
      /*backlog=*/1024, addr.get(), static_cast<int>(addr.len)));
  if (listener_ == nullptr) {
    return GoErrnoStatus(errno, "listen tcp " + addr.ToString() + ": bind");
  }
  evconnlistener_set_error_cb(listener_.get(), &Worker::AcceptErrorCallback);
  resume_timer_.reset(event_new(loop_.base(), -1, 0, &Worker::ResumeCallback, this));
  return absl::OkStatus();
}

void Worker::SetRoutes(std::shared_ptr<const Routes> routes) { routes_ = std::move(routes); }

void Worker::StopAccepting(std::function<void()> on_idle) {
  resume_timer_.reset();
  listener_.reset();
  on_idle_ = std::move(on_idle);
  if (connections_.empty() && on_idle_) std::exchange(on_idle_, nullptr)();
}

void Worker::CloseAll() {
  // Connections remove themselves from the map only through Remove(); here
  // the map is simply dropped, closing every socket.
  auto connections = std::move(connections_);
  connections_.clear();
  if (shared_.active_connections != nullptr) {
    shared_.active_connections->Add(-static_cast<int64_t>(connections.size()));
  }
  connections.clear();
  if (on_idle_) std::exchange(on_idle_, nullptr)();
}

void Worker::Remove(Connection* c) {
  auto it = connections_.find(c);
  if (it == connections_.end()) return;
  std::unique_ptr<Connection> doomed = std::move(it->second);
  connections_.erase(it);
  shared_.active_connections->Add(-1);
  doomed.reset();
  if (connections_.empty() && on_idle_) std::exchange(on_idle_, nullptr)();
}

void Worker::AcceptCallback(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
  static_cast<Worker*>(arg)->OnAccept(UniqueFd(fd));
}

void Worker::AcceptErrorCallback(evconnlistener*, void* arg) {
  static_cast<Worker*>(arg)->OnAcceptError(EVUTIL_SOCKET_ERROR());
}

void Worker::ResumeCallback(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  if (self->listener_ != nullptr) evconnlistener_enable(self->listener_.get());
}

void Worker::OnAcceptError(int err) {
  if (listener_ == nullptr || resume_timer_ == nullptr) return;
  // Out of descriptors (or another accept error): the connection stays
  // queued and the listener would fire again at once.
  const absl::Status status = GoErrnoStatus(err, "accept");
  common::LogEvent(*common::Logger("gateway"), spdlog::level::warn,
                   "failed to accept a client connection; pausing for 100ms",
                   {{"error", std::string(status.message())}});
  evconnlistener_disable(listener_.get());
  const timeval pause = {0, 100 * 1000};
  event_add(resume_timer_.get(), &pause);
}

void Worker::OnAccept(UniqueFd fd) {
  shared_.connections_total->Increment();
  if (routes_ == nullptr || routes_->targets.empty()) return;  // closes the client
  SetStreamOptions(fd.get());
  const uint64_t ticket = shared_.tickets->fetch_add(1, std::memory_order_relaxed);
  std::vector<size_t> order = PickOrder(*routes_->set, ticket, rng_);
  auto conn = std::make_unique<Connection>(*this, std::move(fd), routes_, std::move(order));
  Connection* raw = conn.get();
  connections_.emplace(raw, std::move(conn));
  shared_.active_connections->Add(1);
  raw->Start();
}

}  // namespace keel::proxy::tcp
