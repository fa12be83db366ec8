#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proxy/tcp/handles.h"
#include "proxy/tcp/sockets.h"

namespace keel::proxy::tcp {

// One asynchronous health probe of an endpoint, run on an event loop: a TCP
// connect to its addresses in order (each within `timeout`) and, for
// kHttpHealth, an HTTP/1.1 `GET /health` on the connection whose JSON reply
// must say "health":"true" (etcd's own health check: false when the member
// has no leader or an alarm is raised). Loop-confined.
class Probe {
 public:
  enum class Kind { kTcpConnect, kHttpHealth };
  // Runs once on the loop with the outcome: OK (healthy), or why not. The
  // Probe may be destroyed inside it.
  using Done = absl::AnyInvocable<void(absl::Status) &&>;

  // Starts probing. `host_header` is "host:port" for the HTTP request.
  // `done` never runs inside the constructor (an empty `addrs` reports
  // Unavailable from a later loop turn).
  Probe(event_base* base, std::vector<SockAddr> addrs, std::string host_header, Kind kind,
        absl::Duration timeout, Done done);
  ~Probe();
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;

 private:
  void ConnectNext();
  void OnEvent(short what);
  void OnConnected();
  void OnReadable();
  void Finish(absl::Status status);
  static void Callback(evutil_socket_t fd, short what, void* arg);

  event_base* base_;
  std::vector<SockAddr> addrs_;
  std::string host_header_;
  Kind kind_;
  absl::Duration timeout_;
  Done done_;

  enum class Phase { kConnecting, kSending, kReading };
  Phase phase_ = Phase::kConnecting;
  size_t next_addr_ = 0;
  bool failed_ = false;  // every address failed; a zero timer reports it
  absl::Status last_error_;
  UniqueFd fd_;
  EventPtr event_;
  std::string request_;
  size_t request_sent_ = 0;
  std::string response_;
};

// Whether an HTTP response to GET /health (status line, headers and body)
// reports a healthy etcd member: status 200 and a JSON body whose "health" is
// "true". Unavailable with the reason otherwise. Pure; exposed for tests.
absl::Status CheckHealthResponse(const std::string& response);

}  // namespace keel::proxy::tcp
