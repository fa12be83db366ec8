#include "tests/testutil/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace keel::testutil {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Builds envp from the current environment plus overrides.
std::vector<std::string> MergedEnv(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> all;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) all[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : extra) all[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : all) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// fork+exec with stdin from /dev/null, stdout/stderr to the given fds, in a
// new process group. Exits 127 in the child if exec fails.
pid_t Spawn(std::vector<std::string> argv, const std::map<std::string, std::string>& env,
            int out_fd, int err_fd) {
  std::vector<std::string> envs = MergedEnv(env);
  std::vector<char*> cargv = CStrings(argv);
  std::vector<char*> cenv = CStrings(envs);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    execvpe(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/keel-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::File(const std::string& name) const { return path_ + "/" + name; }

int FreePort() {
  static std::mutex mu;
  static std::set<int> handed_out;
  std::lock_guard<std::mutex> lock(mu);
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd);
      continue;
    }
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    int port = ntohs(addr.sin_port);
    if (handed_out.insert(port).second) return port;
  }
  throw std::runtime_error("no free port");
}

bool WaitFor(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool CanConnect(const std::string& host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

std::string BinDir() { return KEEL_BIN_DIR; }

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env,
                         std::chrono::milliseconds timeout) {
  TempDir dir;
  std::string out_path = dir.File("out"), err_path = dir.File("err");
  int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = Spawn(argv, env, out_fd, err_fd);
  close(out_fd);
  close(err_fd);
  CommandResult result;
  int status = 0;
  bool exited = WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, timeout);
  if (!exited) {
    kill(-pid, SIGKILL);
    waitpid(pid, &status, 0);
    result.exit_code = -1;
  } else {
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

Subprocess::Subprocess(std::vector<std::string> argv, std::string log_path,
                       std::map<std::string, std::string> env)
    : argv_(std::move(argv)), log_path_(std::move(log_path)) {
  int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) throw std::runtime_error("cannot open " + log_path_);
  pid_ = Spawn(argv_, env, fd, fd);
  close(fd);
}

Subprocess::~Subprocess() { Kill(); }

bool Subprocess::Running() {
  if (exit_code_.has_value() || pid_ < 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_code_ = DecodeWaitStatus(status);
    return false;
  }
  return true;
}

void Subprocess::Signal(int sig) {
  if (Running()) kill(-pid_, sig);
}

void Subprocess::Kill() {
  if (pid_ < 0 || exit_code_.has_value()) return;
  kill(-pid_, SIGKILL);  // the whole group, so helpers the child started go too
  int status = 0;
  if (waitpid(pid_, &status, 0) == pid_) exit_code_ = DecodeWaitStatus(status);
}

std::optional<int> Subprocess::Wait(std::chrono::milliseconds timeout) {
  WaitFor([&] { return !Running(); }, timeout);
  return exit_code_;
}

std::string Subprocess::Log() const { return ReadFile(log_path_); }

bool Subprocess::WaitForLog(const std::string& text, std::chrono::milliseconds timeout) const {
  return WaitFor([&] { return Log().find(text) != std::string::npos; }, timeout);
}

}  // namespace keel::testutil
