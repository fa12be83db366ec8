#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace keel::testutil {

// A directory under $TMPDIR (or /tmp) removed with its contents on
// destruction. Thread-compatible.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // Returns path()/name.
  std::string File(const std::string& name) const;

 private:
  std::string path_;
};

// A free TCP port on 127.0.0.1, picked by binding port 0. Another process may
// take it before the caller binds it; ports are handed out so that two calls
// in one test process never return the same port.
int FreePort();

// Polls `ready` every 20 ms until it returns true or `timeout` passes.
// Returns whether it became true. No fixed sleeps in tests: use this.
bool WaitFor(const std::function<bool()>& ready,
             std::chrono::milliseconds timeout = std::chrono::seconds(10));

// True if a TCP connect to host:port succeeds now.
bool CanConnect(const std::string& host, int port);

// The directory holding keel's built binaries (build/bin), from the
// KEEL_BIN_DIR compile definition.
std::string BinDir();

// Result of RunCommand.
struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs argv[0] (searched in PATH) to completion with extra environment
// variables, killing it after `timeout`. Standard input is /dev/null.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(30));

// A child process in its own process group, with stdout and stderr appended
// to one log file. The destructor kills the group (SIGKILL) and reaps it, so
// no test leaves a process behind. Thread-compatible.
class Subprocess {
 public:
  // Starts argv with `env` added to the environment. `log_path` receives
  // stdout and stderr.
  Subprocess(std::vector<std::string> argv, std::string log_path,
             std::map<std::string, std::string> env = {});
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // True while the child has not exited (reaps it if it has).
  bool Running();
  // Sends `sig` to the process group.
  void Signal(int sig);
  // SIGKILL and reap.
  void Kill();
  // Waits up to `timeout` for exit; returns the exit code (128+signal when
  // killed by a signal) or nullopt if still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // Everything the child has written so far.
  std::string Log() const;
  // Polls the log for `text`.
  bool WaitForLog(const std::string& text,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

 private:
  std::vector<std::string> argv_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace keel::testutil
