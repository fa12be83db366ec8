#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "api/etcdserverpb/rpc.grpc.pb.h"

namespace keel::bench {

// Flags shared by every gRPC subcommand (named as etcd's benchmark names them).
struct GlobalOptions {
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  int conns = 1;
  int clients = 1;
  uint64_t total = 10000;
  double rate = 0;          // requests/s, 0 = unlimited
  absl::Duration duration;  // > 0: run for this long instead of --total
  int key_size = 8;
  int val_size = 8;
  uint64_t key_space_size = 1;
  bool sequential_keys = false;
  bool target_leader = false;
  std::string cacert, cert, key;  // TLS files
  std::string user;               // "user:password"
  absl::Duration dial_timeout = absl::Seconds(5);
  int threads = 0;                 // completion-queue / loop threads, 0 = one per core
  std::string transport = "grpc";  // grpc or h2 (bench/transport.h)
  bool json = false;
  bool progress = true;  // progress bar when stderr is a TTY
};

// Something a completion queue hands back: the tag of one async operation.
class Tagged {
 public:
  virtual ~Tagged() = default;
  // Called on the queue's thread with the operation's `ok` flag.
  virtual void Proceed(bool ok) = 0;
};

// N completion queues, each drained by one thread that calls
// Tagged::Proceed. Objects are bound to one queue so their events are
// serialized without locks. Thread-safe.
class CqPool {
 public:
  explicit CqPool(int threads);
  ~CqPool();  // shuts down and joins
  int size() const { return static_cast<int>(cqs_.size()); }
  grpc::CompletionQueue* cq(int i) { return cqs_[static_cast<size_t>(i) % cqs_.size()].get(); }
  // Shuts the queues down and joins the threads (after draining). Idempotent.
  void Shutdown();

 private:
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs_;
  std::vector<std::thread> threads_;
  bool shut_down_ = false;
};

// The --conns gRPC channels (each its own TCP connection) spread over the
// endpoints, with the auth token. Thread-safe after Dial.
class Connections {
 public:
  // Dials every channel and waits up to --dial-timeout for it to connect;
  // resolves --target-leader and --user. Unavailable with a message naming
  // the endpoint if a connection cannot be made; other errors from
  // Status/Authenticate as returned by the server.
  static absl::StatusOr<std::unique_ptr<Connections>> Dial(const GlobalOptions& options);

  int size() const { return static_cast<int>(channels_.size()); }
  const std::shared_ptr<grpc::Channel>& channel(int i) const { return channels_[Index(i)]; }
  // Adds the auth token (if any) to a new call's context.
  void Prepare(grpc::ClientContext* ctx) const;
  // The --user token, "" without one.
  const std::string& token() const { return token_; }
  // The endpoints in use (after --target-leader).
  const std::vector<std::string>& endpoints() const { return endpoints_; }

 private:
  size_t Index(int i) const { return static_cast<size_t>(i) % channels_.size(); }
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::string> endpoints_;
  std::string token_;
};

// "rpc error: code = <Code> desc = <message>", the text etcd's Go clients
// print for a failed call, used as the error-distribution key.
std::string GrpcErrorText(const grpc::Status& status);

// Draws a progress bar on stderr while alive, if stderr is a TTY and
// `enabled`. `fraction` is polled every 200 ms and returns 0..1.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::function<double()> fraction);
  ~ProgressBar();  // stops and clears the line

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace keel::bench
