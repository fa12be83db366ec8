#include "tests/testutil/etcd_cluster.h"

#include <signal.h>

namespace keel::testutil {

EtcdCluster::EtcdCluster(Options options) : options_(std::move(options)) {
  for (int i = 0; i < options_.members; ++i) {
    Member m;
    m.name = "m" + std::to_string(i);
    m.client_port = FreePort();
    m.peer_port = FreePort();
    if (!initial_cluster_.empty()) initial_cluster_ += ",";
    initial_cluster_ += m.name + "=http://127.0.0.1:" + std::to_string(m.peer_port);
    members_.push_back(std::move(m));
  }
}

EtcdCluster::~EtcdCluster() {
  for (auto& m : members_) m.process.reset();
}

std::string EtcdCluster::ClientAddr(int i) const {
  return "127.0.0.1:" + std::to_string(members_[i].client_port);
}

std::string EtcdCluster::ClientUrl(int i) const {
  return options_.client_scheme + "://" + ClientAddr(i);
}

std::string EtcdCluster::ClientAddrs() const {
  std::string out;
  for (int i = 0; i < size(); ++i) out += (i ? "," : "") + ClientAddr(i);
  return out;
}

std::string EtcdCluster::ClientUrls() const {
  std::string out;
  for (int i = 0; i < size(); ++i) out += (i ? "," : "") + ClientUrl(i);
  return out;
}

void EtcdCluster::Launch(int i, const std::string& state) {
  Member& m = members_[i];
  std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
  std::string client = ClientUrl(i);
  std::vector<std::string> argv = {
      "etcd",
      "--name=" + m.name,
      "--data-dir=" + dir_.File(m.name + ".etcd"),
      "--listen-client-urls=" + client,
      "--advertise-client-urls=" + client,
      "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer,
      "--initial-cluster=" + initial_cluster_,
      "--initial-cluster-state=" + state,
      "--initial-cluster-token=keel-test",
      // Short timings keep elections after a kill quick on a loaded 2-core box.
      "--heartbeat-interval=50",
      "--election-timeout=500",
  };
  for (const auto& f : options_.extra_flags) argv.push_back(f);
  m.process = std::make_unique<Subprocess>(argv, dir_.File(m.name + ".log"));
}

bool EtcdCluster::Start(std::string* error) {
  for (int i = 0; i < size(); ++i) Launch(i, "new");
  for (int i = 0; i < size(); ++i) {
    if (!WaitWritable(i)) {
      if (error != nullptr) *error = "member " + members_[i].name + " not ready:\n" + Log(i);
      return false;
    }
  }
  return true;
}

void EtcdCluster::Stop(int i) { members_[i].process.reset(); }

void EtcdCluster::Pause(int i) { members_[i].process->Signal(SIGSTOP); }

void EtcdCluster::Resume(int i) { members_[i].process->Signal(SIGCONT); }

void EtcdCluster::Restart(int i) {
  members_[i].process.reset();
  Launch(i, "existing");
}

bool EtcdCluster::WaitServing(int i, std::chrono::milliseconds timeout) {
  return WaitFor(
      [&] {
        return Etcdctl(ClientUrl(i), {"get", "--consistency=s", "keel-test-probe"},
                       std::chrono::seconds(3))
                   .exit_code == 0;
      },
      timeout);
}

bool EtcdCluster::WaitWritable(int i, std::chrono::milliseconds timeout) {
  return WaitFor(
      [&] {
        return Etcdctl(ClientUrl(i), {"put", "keel-test-probe", "1"}, std::chrono::seconds(3))
                   .exit_code == 0;
      },
      timeout);
}

std::string EtcdCluster::Log(int i) const {
  return members_[i].process ? members_[i].process->Log() : std::string();
}

CommandResult EtcdCluster::Etcdctl(const std::string& endpoint, std::vector<std::string> args,
                                   std::chrono::milliseconds timeout) {
  std::vector<std::string> argv = {"etcdctl", "--endpoints=" + endpoint,
                                   "--dial-timeout=2s", "--command-timeout=5s"};
  for (auto& a : args) argv.push_back(std::move(a));
  return RunCommand(argv, {{"ETCDCTL_API", "3"}}, timeout);
}

}  // namespace keel::testutil
