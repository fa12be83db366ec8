#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tests/testutil/process.h"

namespace keel::testutil {

// A real etcd cluster (Debian's /usr/bin/etcd) on free 127.0.0.1 ports in a
// temporary directory. Members can be stopped and restarted with their data.
// Every process is killed on destruction. Thread-compatible.
class EtcdCluster {
 public:
  struct Options {
    int members = 1;
    // Extra flags passed to every member.
    std::vector<std::string> extra_flags;
    // Client URL scheme: "http" or "https" (then cert flags go in extra_flags).
    std::string client_scheme = "http";

    // Plain members, `n` of them.
    static Options Members(int n) {
      Options options;
      options.members = n;
      return options;
    }
  };

  explicit EtcdCluster(Options options);
  EtcdCluster() : EtcdCluster(Options{}) {}
  ~EtcdCluster();

  int size() const { return static_cast<int>(members_.size()); }
  // "127.0.0.1:<client port>" of member i.
  std::string ClientAddr(int i) const;
  int ClientPort(int i) const { return members_[i].client_port; }
  // "<scheme>://127.0.0.1:<port>" of member i.
  std::string ClientUrl(int i) const;
  // Every member's ClientAddr, comma-separated (for --endpoints).
  std::string ClientAddrs() const;
  std::string ClientUrls() const;

  // Starts all members and waits until each serves client requests.
  // Returns false (with the logs in `error`) if that did not happen in time.
  bool Start(std::string* error = nullptr);
  // SIGKILLs member i.
  void Stop(int i);
  // Freezes member i (SIGSTOP): its sockets stay open, nothing answers, as
  // with a member whose host hangs. Resume(i) (SIGCONT) thaws it.
  void Pause(int i);
  void Resume(int i);
  // Restarts a stopped member on its old ports and data dir; does not wait.
  void Restart(int i);
  // Waits until member i answers a serializable read (so it needs no quorum).
  bool WaitServing(int i, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Waits until the cluster has a leader and accepts a write through member i.
  bool WaitWritable(int i, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  bool Running(int i) { return members_[i].process && members_[i].process->Running(); }
  std::string Log(int i) const;
  const TempDir& dir() const { return dir_; }

  // Runs `etcdctl --endpoints=<endpoint> args...` (API v3) and returns its result.
  static CommandResult Etcdctl(const std::string& endpoint, std::vector<std::string> args,
                               std::chrono::milliseconds timeout = std::chrono::seconds(15));

 private:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    std::unique_ptr<Subprocess> process;
  };
  void Launch(int i, const std::string& state);

  Options options_;
  TempDir dir_;
  std::vector<Member> members_;
  std::string initial_cluster_;
};

}  // namespace keel::testutil
