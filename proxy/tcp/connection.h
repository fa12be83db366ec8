#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "proxy/tcp/handles.h"
#include "proxy/tcp/routes.h"

namespace keel::proxy::tcp {

class Worker;

// One client connection: dials the endpoints of its routing snapshot in the
// picked order (each with the dial timeout, a failure moves on at once), then
// relays bytes both ways until both directions have ended.
//
// Relay: level-triggered read events; each wake-up reads into the loop's
// scratch buffer and writes straight to the peer (one read + one write per
// message in the common case), buffering only what the peer does not take.
// While a direction holds more than kHighWatermark unsent bytes its source is
// not read; reading resumes below kLowWatermark. An EOF is propagated as
// shutdown(SHUT_WR) once the buffered bytes are flushed (half-close); the
// connection ends when both directions have, or at once on an error.
//
// Bulk: once a read fills the whole scratch buffer (the direction is
// streaming), the direction switches to splice(2) through its own pipe
// (socket -> pipe -> socket, no copy to user space). The pipe holds the
// in-flight bytes the sink has not taken; when it is full (or cannot be told
// from full) the source is not read until the sink took half of them. After
// kSmallSplicesToLeave splices in a row that moved less than kSpliceMinChunk
// each, with the pipe empty, the direction returns to recv/send and closes
// the pipe. Byte counters, half-close and errors work the same in both modes.
//
// Loop-confined; owned by its Worker, which destroys it when it ends.
class Connection {
 public:
  static constexpr size_t kHighWatermark = 1 << 20;
  static constexpr size_t kLowWatermark = 256 << 10;
  // Requested pipe capacity of a splicing direction; a pipe that ends up
  // smaller than kMinPipeSize (per-user pipe limits) is not used.
  static constexpr size_t kPipeSize = 1 << 20;
  static constexpr size_t kMinPipeSize = 64 << 10;
  // Splices smaller than this, kSmallSplicesToLeave in a row, leave splice
  // mode.
  static constexpr size_t kSpliceMinChunk = 16 << 10;
  static constexpr int kSmallSplicesToLeave = 8;

  // `order`: indices into routes->targets, from PickOrder.
  Connection(Worker& worker, UniqueFd client, std::shared_ptr<const Routes> routes,
             std::vector<size_t> order);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts dialling. May end the connection (Worker::Remove) before returning.
  void Start();

 private:
  enum { kClient = 0, kUpstream = 1 };

  struct Side {
    UniqueFd fd;
    EventPtr read_event;
    EventPtr write_event;
  };
  // Bytes flowing from sides_[i] to sides_[1 - i] use directions_[i].
  struct Direction {
    EvBufferPtr pending;    // read from the source, not yet taken by the sink
    bool paused = false;    // source read event removed (high watermark / full pipe)
    bool eof = false;       // source reached EOF
    bool shut = false;      // EOF forwarded with shutdown(SHUT_WR) on the sink
    bool splicing = false;  // bulk mode: source -> pipe -> sink; `pending` is empty
    bool no_pipe = false;   // a pipe could not be set up: recv/send only
    size_t in_pipe = 0;     // bytes in the pipe, not yet taken by the sink
    size_t pipe_size = 0;   // the pipe's capacity
    int small_splices = 0;  // consecutive splices below kSpliceMinChunk
    UniqueFd pipe_read;     // open while splicing
    UniqueFd pipe_write;
    common::Counter* bytes = nullptr;
  };

  void DialNext();
  void OnConnectEvent(short what);
  void OnConnected();
  void ReportCandidateFailure(absl::Status error);
  void StartRelay();

  void OnReadable(int src);
  // Splice-mode read of direction `d`'s source. Returns after the wake-up's
  // work (the connection may have ended: then false).
  bool SpliceRead(int d);
  // Moves the pipe's bytes of direction `d` to its sink. False if the
  // connection was ended.
  bool SpliceFlush(int d);
  // Switches direction `d` to splice mode if a pipe can be set up (if not,
  // the direction stays with recv/send for good).
  void EnterSpliceMode(int d);
  // Bytes read from direction `d`'s source that its sink has not taken yet.
  size_t Backlog(int d) const;
  void OnWritable(int sink);
  // Sends `data` to the sink of direction `dir`, buffering the rest. False if
  // the connection was ended.
  bool Forward(int dir, const char* data, size_t len);
  // Writes buffered bytes of direction `dir`. False if the connection ended.
  bool Flush(int dir);
  void OnEof(int dir);
  void MaybeFinish();
  // Ends the connection now (destroys *this).
  void End();

  static void ReadCallback(evutil_socket_t fd, short what, void* arg);
  static void WriteCallback(evutil_socket_t fd, short what, void* arg);
  static void ConnectCallback(evutil_socket_t fd, short what, void* arg);

  Worker& worker_;
  std::shared_ptr<const Routes> routes_;
  std::vector<size_t> order_;
  size_t candidate_ = 0;     // position in order_
  size_t address_ = 0;       // next address of the current candidate
  absl::Status last_error_;  // of the current candidate
  EventPtr connect_event_;
  std::array<Side, 2> sides_;
  std::array<Direction, 2> directions_;
};

}  // namespace keel::proxy::tcp
