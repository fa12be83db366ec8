#include "proxy/tcp/connection.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "proxy/tcp/worker.h"

namespace keel::proxy::tcp {
namespace {

// Reads per wake-up and direction before yielding to other connections.
constexpr int kMaxReadsPerWake = 8;
// iovecs per sendmsg of buffered bytes.
constexpr int kMaxIov = 16;

}  // namespace

Connection::Connection(Worker& worker, UniqueFd client, std::shared_ptr<const Routes> routes,
                       std::vector<size_t> order)
    : worker_(worker), routes_(std::move(routes)), order_(std::move(order)) {
  sides_[kClient].fd = std::move(client);
}

Connection::~Connection() {
  // Events go before the descriptors they watch.
  connect_event_.reset();
  for (Side& side : sides_) {
    side.read_event.reset();
    side.write_event.reset();
  }
}

void Connection::Start() { DialNext(); }

void Connection::DialNext() {
  while (candidate_ < order_.size()) {
    const RouteTarget& target = routes_->targets[order_[candidate_]];
    if (address_ >= target.addrs.size()) {
      if (target.addrs.empty()) {
        last_error_ = absl::UnavailableError(
            absl::StrCat("dial tcp ", target.name, ": host did not resolve"));
      }
      ReportCandidateFailure(std::move(last_error_));
      last_error_ = absl::OkStatus();
      ++candidate_;
      address_ = 0;
      continue;
    }
    const SockAddr& addr = target.addrs[address_++];
    absl::StatusOr<PendingConnect> pc = StartConnect(addr);
    if (!pc.ok() && pc.status().code() == absl::StatusCode::kResourceExhausted) {
      break;  // out of descriptors here: no endpoint is to blame
    }
    if (!pc.ok()) {
      last_error_ = pc.status();
      continue;
    }
    sides_[kUpstream].fd = std::move(pc->fd);
    if (pc->connected) {
      OnConnected();
      return;
    }
    connect_event_.reset(event_new(worker_.loop().base(), sides_[kUpstream].fd.get(), EV_WRITE,
                                   &Connection::ConnectCallback, this));
    const timeval tv = absl::ToTimeval(worker_.shared().dial_timeout);
    event_add(connect_event_.get(), &tv);
    return;
  }
  End();  // no endpoint took the connection: close the client without a byte
}

void Connection::ConnectCallback(evutil_socket_t, short what, void* arg) {
  static_cast<Connection*>(arg)->OnConnectEvent(what);
}

void Connection::OnConnectEvent(short what) {
  connect_event_.reset();
  const RouteTarget& target = routes_->targets[order_[candidate_]];
  absl::Status status;
  if (what & EV_TIMEOUT) {
    status = absl::DeadlineExceededError(
        absl::StrCat("dial tcp ", target.addrs[address_ - 1].ToString(), ": i/o timeout"));
  } else {
    status = FinishConnect(sides_[kUpstream].fd.get());
    if (!status.ok()) {
      status = absl::Status(
          status.code(),
          absl::StrCat("dial tcp ", target.addrs[address_ - 1].ToString(), ": ", status.message()));
    }
  }
  if (status.ok()) {
    OnConnected();
    return;
  }
  sides_[kUpstream].fd.Reset();
  last_error_ = std::move(status);
  DialNext();
}

void Connection::ReportCandidateFailure(absl::Status error) {
  const size_t index = order_[candidate_];
  routes_->targets[index].dial_failures->Increment();
  worker_.shared().observer->OnDialFailure(routes_->set->endpoints[index], std::move(error));
}

void Connection::OnConnected() {
  const size_t index = order_[candidate_];
  if (!routes_->set->active[index]) {
    worker_.shared().observer->OnDialSuccess(routes_->set->endpoints[index]);
  }
  StartRelay();
}

void Connection::StartRelay() {
  const RouteTarget& target = routes_->targets[order_[candidate_]];
  directions_[kClient].bytes = target.bytes_to_endpoint;
  directions_[kUpstream].bytes = target.bytes_to_client;
  event_base* base = worker_.loop().base();
  for (Side& side : sides_) {
    side.read_event.reset(
        event_new(base, side.fd.get(), EV_READ | EV_PERSIST, &Connection::ReadCallback, this));
    side.write_event.reset(
        event_new(base, side.fd.get(), EV_WRITE | EV_PERSIST, &Connection::WriteCallback, this));
    event_add(side.read_event.get(), nullptr);
  }
}

void Connection::ReadCallback(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<Connection*>(arg);
  self->OnReadable(fd == self->sides_[kClient].fd.get() ? kClient : kUpstream);
}

void Connection::WriteCallback(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<Connection*>(arg);
  self->OnWritable(fd == self->sides_[kClient].fd.get() ? kClient : kUpstream);
}

void Connection::OnReadable(int src) {
  Direction& dir = directions_[src];
  if (dir.splicing) {
    SpliceRead(src);
    return;
  }
  char* scratch = worker_.scratch();
  for (int round = 0; round < kMaxReadsPerWake; ++round) {
    const ssize_t n = ::recv(sides_[src].fd.get(), scratch, Worker::kScratchSize, 0);
    if (n > 0) {
      dir.bytes->Increment(static_cast<uint64_t>(n));
      if (!Forward(src, scratch, static_cast<size_t>(n))) return;
      // A short read means the socket is drained for now; level-triggered
      // readiness brings us back when more arrives, without an EAGAIN read.
      if (dir.paused || static_cast<size_t>(n) < Worker::kScratchSize) return;
      // A full read: the direction is streaming. Splice from now on, unless
      // bytes wait in `pending` (they must reach the sink first).
      if (!dir.no_pipe && Backlog(src) == 0) {
        EnterSpliceMode(src);
        if (dir.splicing) {
          SpliceRead(src);
          return;
        }
      }
      continue;
    }
    if (n == 0) {
      OnEof(src);
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    End();  // reset or other error: abort both sides
    return;
  }
}

void Connection::EnterSpliceMode(int d) {
  Direction& dir = directions_[d];
  if (!dir.pipe_read.valid()) {
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
      dir.no_pipe = true;  // out of descriptors: recv/send still works
      return;
    }
    dir.pipe_read = UniqueFd(fds[0]);
    dir.pipe_write = UniqueFd(fds[1]);
    // Best effort: the per-user pipe limits may refuse a bigger pipe.
    ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(kPipeSize));
    const int size = ::fcntl(fds[1], F_GETPIPE_SZ);
    if (size < static_cast<int>(kMinPipeSize)) {
      dir.pipe_read.Reset();
      dir.pipe_write.Reset();
      dir.no_pipe = true;
      return;
    }
    dir.pipe_size = static_cast<size_t>(size);
  }
  dir.splicing = true;
}

bool Connection::SpliceRead(int d) {
  Direction& dir = directions_[d];
  for (int round = 0; round < kMaxReadsPerWake; ++round) {
    const ssize_t n = ::splice(sides_[d].fd.get(), nullptr, dir.pipe_write.get(), nullptr,
                               kPipeSize, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      dir.bytes->Increment(static_cast<uint64_t>(n));
      dir.in_pipe += static_cast<size_t>(n);
      if (!SpliceFlush(d)) return false;
      if (static_cast<size_t>(n) >= kSpliceMinChunk) {
        dir.small_splices = 0;
        continue;  // a big splice may have left more
      }
      if (dir.in_pipe == 0 && ++dir.small_splices >= kSmallSplicesToLeave) {
        // Small messages again. The pipe is empty: give it back (it counts
        // against the user's pipe limits) until the next bulk transfer.
        dir.splicing = false;
        dir.small_splices = 0;
        dir.pipe_read.Reset();
        dir.pipe_write.Reset();
      }
      // A small splice drained the socket for now; level-triggered
      // readiness brings us back when more arrives.
      return true;
    }
    if (n == 0) {
      OnEof(d);
      return false;  // may have ended the connection
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      // With bytes in the pipe this may mean the pipe is full rather than
      // the socket drained: stop reading until the sink took half of them.
      if (dir.in_pipe > 0) {
        dir.paused = true;
        event_del(sides_[d].read_event.get());
      }
      return true;
    }
    End();
    return false;
  }
  return true;
}

bool Connection::SpliceFlush(int d) {
  Direction& dir = directions_[d];
  Side& sink = sides_[1 - d];
  while (dir.in_pipe > 0) {
    const ssize_t w = ::splice(dir.pipe_read.get(), nullptr, sink.fd.get(), nullptr, dir.in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (w > 0) {
      dir.in_pipe -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      End();
      return false;
    }
    break;
  }
  // A no-op when the write event is already armed.
  if (dir.in_pipe > 0) event_add(sink.write_event.get(), nullptr);
  return true;
}

size_t Connection::Backlog(int d) const {
  const Direction& dir = directions_[d];
  return dir.in_pipe + (dir.pending == nullptr ? 0 : evbuffer_get_length(dir.pending.get()));
}

bool Connection::Forward(int d, const char* data, size_t len) {
  Direction& dir = directions_[d];
  Side& sink = sides_[1 - d];
  size_t sent = 0;
  const bool backlog = Backlog(d) > 0;
  if (!backlog) {
    const ssize_t w = ::send(sink.fd.get(), data, len, MSG_NOSIGNAL);
    if (w >= 0) {
      sent = static_cast<size_t>(w);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      End();
      return false;
    }
  }
  if (sent == len) return true;
  if (dir.pending == nullptr) dir.pending.reset(evbuffer_new());
  evbuffer_add(dir.pending.get(), data + sent, len - sent);
  if (!backlog) event_add(sink.write_event.get(), nullptr);
  if (evbuffer_get_length(dir.pending.get()) > kHighWatermark && !dir.paused) {
    dir.paused = true;
    event_del(sides_[d].read_event.get());
  }
  return true;
}

void Connection::OnWritable(int sink) {
  const int d = 1 - sink;
  Direction& dir = directions_[d];
  if (!Flush(d)) return;
  if (dir.in_pipe > 0 && !SpliceFlush(d)) return;
  const size_t left = Backlog(d);
  // A splicing direction reads again once its pipe is half empty, a
  // buffering one below the low watermark.
  const bool resume = dir.splicing ? left <= dir.pipe_size / 2 : left < kLowWatermark;
  if (dir.paused && resume && !dir.eof) {
    dir.paused = false;
    event_add(sides_[d].read_event.get(), nullptr);
  }
  if (left > 0) return;
  event_del(sides_[sink].write_event.get());
  if (dir.eof && !dir.shut) {
    dir.shut = true;
    ::shutdown(sides_[sink].fd.get(), SHUT_WR);
    MaybeFinish();
  }
}

bool Connection::Flush(int d) {
  Direction& dir = directions_[d];
  if (dir.pending == nullptr) return true;
  evbuffer* buf = dir.pending.get();
  while (evbuffer_get_length(buf) > 0) {
    evbuffer_iovec vec[kMaxIov];
    const int n = evbuffer_peek(buf, -1, nullptr, vec, kMaxIov);
    iovec iov[kMaxIov];
    const int count = n < kMaxIov ? n : kMaxIov;
    for (int i = 0; i < count; ++i) iov[i] = {vec[i].iov_base, vec[i].iov_len};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t w = ::sendmsg(sides_[1 - d].fd.get(), &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
      End();
      return false;
    }
    evbuffer_drain(buf, static_cast<size_t>(w));
    if (w == 0) return true;
  }
  return true;
}

void Connection::OnEof(int d) {
  Direction& dir = directions_[d];
  dir.eof = true;
  event_del(sides_[d].read_event.get());
  if (Backlog(d) > 0) return;  // OnWritable forwards the EOF after the flush
  dir.shut = true;
  ::shutdown(sides_[1 - d].fd.get(), SHUT_WR);
  MaybeFinish();
}

void Connection::MaybeFinish() {
  if (directions_[kClient].shut && directions_[kUpstream].shut) End();
}

void Connection::End() { worker_.Remove(this); }

}  // namespace keel::proxy::tcp
