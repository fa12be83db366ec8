// `keel grpc-proxy start` against real etcd 3.4 and real etcdctl
// (proxy.md sections 2.1-2.3, 2.6, 2.13, 2.14 and the scenarios of section 4).

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "api/v3lockpb/v3lock.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/gateway_helpers.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;

std::string Keel() { return BinDir() + "/keel"; }

// Lines of `etcdctl member list` (one per member) through `endpoint`, or ""
// if the command failed.
std::string MemberList(const std::string& endpoint) {
  CommandResult r = EtcdCluster::Etcdctl(endpoint, {"member", "list"});
  return r.exit_code == 0 ? r.out : "";
}

// `etcdctl put <key>` with the value read from `file` (too big for argv).
CommandResult PutFromFile(const std::string& endpoint, const std::string& key,
                          const std::string& file) {
  return RunCommand({"sh", "-c",
                     "etcdctl --endpoints=" + endpoint +
                         " --dial-timeout=2s --command-timeout=10s put " + key + " < " + file},
                    {{"ETCDCTL_API", "3"}});
}

// The last line etcdctl printed on stderr ("Error: ...").
std::string LastErrorLine(const CommandResult& r) {
  std::string err = r.err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  return err.substr(err.rfind('\n') + 1);
}

// A unix datagram socket standing in for systemd's notify socket.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    bound_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) close(fd_);
  }
  bool bound() const { return bound_; }
  // The next message, waiting up to 30 s ("" if none came).
  std::string Receive() {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 30000) <= 0) return "";
    char buf[256];
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

class GrpcProxyTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(GrpcProxyTest, BadFlagsExitNonZeroWithEtcdsMessages) {
  const std::string listen = "--listen-addr=127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand({Keel(), "grpc-proxy", "start", "--bogus"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: unknown flag: --bogus\n", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("Usage: keel grpc-proxy start"), std::string::npos) << r.err;

  r = RunCommand({Keel(), "grpc-proxy", "start", "-x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: unknown shorthand flag: 'x' in -x\n", 0), 0u) << r.err;

  r = RunCommand({Keel(), "grpc-proxy", "start", "--max-send-bytes=abc"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: invalid argument \"abc\" for \"--max-send-bytes\" flag: "
                        "strconv.ParseInt: parsing \"abc\": invalid syntax\n",
                        0),
            0u)
      << r.err;
  r = RunCommand({Keel(), "grpc-proxy", "start", "--max-concurrent-streams=-1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: invalid argument \"-1\" for \"--max-concurrent-streams\" flag: "
                        "strconv.ParseUint: parsing \"-1\": invalid syntax\n",
                        0),
            0u)
      << r.err;

  r = RunCommand({Keel(), "grpc-proxy", "start", "--resolver-ttl=99999999999999999999"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("Error: invalid argument \"99999999999999999999\" for \"--resolver-ttl\" "
                        "flag: strconv.ParseInt: parsing \"99999999999999999999\": value out of "
                        "range\n",
                        0),
            0u)
      << r.err;
  // Go's base prefixes parse (0x10 = 16, so the prefix check is what fails).
  r = RunCommand(
      {Keel(), "grpc-proxy", "start", listen, "--resolver-prefix=p", "--resolver-ttl=-0x10"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid resolver-ttl -16\n");

  // etcd's checkArgs(), word for word.
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--resolver-prefix=p"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid resolver-ttl 0\n");
  r = RunCommand(
      {Keel(), "grpc-proxy", "start", listen, "--resolver-prefix=p", "--resolver-ttl=-3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid resolver-ttl -3\n");
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--resolver-ttl=5"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid resolver-prefix \"\"\n");
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--resolver-prefix=p", "--resolver-ttl=5",
                  "--advertise-client-url="});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid advertise-client-url \"\"\n");
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--endpoints=127.0.0.1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error parsing endpoint \"127.0.0.1\"\n");

  // --metrics-addr as etcd takes it; https:// needs the listener's certificate.
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--metrics-addr=https://127.0.0.1:9"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "cannot listen on TLS for 127.0.0.1:9: KeyFile and CertFile are not presented\n");
  for (const char* bad : {"127.0.0.1:9", "ftp://127.0.0.1:9", "unix://", "http://127.0.0.1"}) {
    r = RunCommand({Keel(), "grpc-proxy", "start", listen, std::string("--metrics-addr=") + bad});
    EXPECT_EQ(r.exit_code, 1) << bad;
    EXPECT_EQ(r.err, std::string("invalid value \"") + bad +
                         "\" for --metrics-addr: want http://host:port, https://host:port, "
                         "unix://path or unixs://path\n");
  }

  r = RunCommand({Keel(), "grpc-proxy", "start", "--listen-addr=foo"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "listen tcp: address foo: missing port in address\n");

  // Flags keel does not implement are refused, not silently ignored.
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--experimental-leasing-prefix=x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "--experimental-leasing-prefix is not supported by keel\n");
  // TLS flags that cannot work without TLS (etcd ignores them, or crashes).
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--client-crl-file=x.crl"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "--client-crl-file needs --trusted-ca-file: client certificates are asked for only "
            "with it\n");
  r = RunCommand({Keel(), "grpc-proxy", "start", listen,
                  "--listen-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "--listen-cipher-suites needs TLS on the listener (--cert-file and --key-file, or "
            "--auto-tls)\n");
  // etcd's words for a name Go does not know.
  r = RunCommand({Keel(), "grpc-proxy", "start", listen, "--auto-tls",
                  "--data-dir=" + dir_.File("ciphers.data"), "--listen-cipher-suites=FOO"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "unexpected TLS cipher suite \"FOO\"\n");

  // ETCD_* variables go through the same checks.
  r = RunCommand({Keel(), "grpc-proxy", "start", listen}, {{"ETCD_RESOLVER_TTL", "5"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "invalid resolver-prefix \"\"\n");

  for (std::vector<std::string> help : {std::vector<std::string>{Keel(), "grpc-proxy"},
                                        {Keel(), "grpc-proxy", "--help"},
                                        {Keel(), "grpc-proxy", "start", "--help"}}) {
    r = RunCommand(help);
    EXPECT_EQ(r.exit_code, 0) << help.back();
  }
  r = RunCommand({Keel(), "grpc-proxy", "start", "--help"});
  for (const char* flag :
       {"--listen-addr", "--endpoints", "--advertise-client-url", "--resolver-prefix",
        "--resolver-ttl", "--namespace", "--max-send-bytes", "--max-recv-bytes",
        "--max-concurrent-streams", "--cert-file", "--auto-tls", "--insecure-skip-tls-verify",
        "--enable-pprof", "--experimental-serializable-ordering", "--metrics-addr"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag << "\n" << r.out;
  }
  EXPECT_NE(r.out.find("1572864"), std::string::npos) << r.out;
}

TEST_F(GrpcProxyTest, ListenAddressInUseIsAnError) {
  GrpcProxyProcess first(dir_, {"--endpoints=127.0.0.1:" + std::to_string(FreePort())});
  ASSERT_TRUE(first.Ready()) << first.Log();
  CommandResult r = RunCommand({Keel(), "grpc-proxy", "start", "--listen-addr=" + first.addr(),
                                "--data-dir=" + dir_.File("second.data")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "listen tcp " + first.addr() + ": bind: address already in use\n");
}

// --metrics-addr=unix://NAME makes the socket file NAME in the working
// directory, as etcd does (unix://localhost:2381 is a file
// "localhost:2381"); it serves the HTTP paths, and is gone after a clean
// stop. A regular file of that name is not replaced: the start fails.
TEST_F(GrpcProxyTest, MetricsAddrOnUnixSocket) {
  const std::string name = "localhost:" + std::to_string(FreePort());
  const std::string socket_file = dir_.File(name);
  const int port = FreePort();
  const auto start_in_dir = [&](const std::string& log) {
    // sh changes directory, then becomes keel (the process group is killed at the end).
    return std::make_unique<Subprocess>(
        std::vector<std::string>{"sh", "-c",
                                 "cd \"$0\" && exec \"$1\" grpc-proxy start "
                                 "--listen-addr=127.0.0.1:\"$2\" --endpoints=127.0.0.1:1 "
                                 "--data-dir=proxy.data --metrics-addr=unix://\"$3\"",
                                 dir_.path(), Keel(), std::to_string(port), name},
        dir_.File(log));
  };
  std::unique_ptr<Subprocess> proxy = start_in_dir("unix.log");
  ASSERT_TRUE(proxy->WaitForLog("\"msg\":\"started gRPC proxy\"", seconds(30))) << proxy->Log();
  EXPECT_NE(proxy->Log().find("\"msg\":\"gRPC proxy server metrics URL serving\""),
            std::string::npos)
      << proxy->Log();
  CommandResult metrics =
      RunCommand({"curl", "-s", "--unix-socket", socket_file, "http://localhost/metrics"});
  EXPECT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_NE(metrics.out.find("process_open_fds "), std::string::npos) << metrics.out;
  // No etcd behind it: /health answers, and says so.
  CommandResult health = RunCommand({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                     "--unix-socket", socket_file, "http://localhost/health"});
  EXPECT_EQ(health.out, "503") << health.err;
  proxy->Signal(SIGTERM);
  EXPECT_EQ(proxy->Wait(seconds(30)), std::optional<int>(0)) << proxy->Log();
  EXPECT_NE(access(socket_file.c_str(), F_OK), 0) << "socket file left behind";

  { std::ofstream(socket_file) << "not a socket\n"; }
  std::unique_ptr<Subprocess> refused = start_in_dir("refused.log");
  EXPECT_EQ(refused->Wait(seconds(30)), std::optional<int>(1)) << refused->Log();
  EXPECT_NE(refused->Log().find("listen unix " + name + ": bind: address already in use"),
            std::string::npos)
      << refused->Log();
  std::ifstream kept(socket_file);
  std::string line;
  std::getline(kept, line);
  EXPECT_EQ(line, "not a socket");
}

// etcd's proxy starts without a reachable backend; /health says it is down,
// and a SIGTERM ends the process cleanly.
TEST_F(GrpcProxyTest, StartsWithoutBackendAndStopsOnSigterm) {
  NotifySocket notify(dir_.File("notify"));
  ASSERT_TRUE(notify.bound());
  GrpcProxyProcess proxy(dir_, {"--endpoints=127.0.0.1:" + std::to_string(FreePort())},
                         {{"NOTIFY_SOCKET", dir_.File("notify")}});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  EXPECT_EQ(notify.Receive(), "READY=1");
  // The line has etcd's shape: {"level":"info",...,"msg":"started gRPC proxy","address":...}.
  bool found = false;
  std::string log = proxy.Log();
  for (size_t pos = 0; pos < log.size();) {
    const size_t end = log.find('\n', pos);
    const std::string line = log.substr(pos, end - pos);
    pos = end == std::string::npos ? log.size() : end + 1;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("msg", "") == "started gRPC proxy") {
      found = true;
      EXPECT_EQ(j.value("level", ""), "info") << line;
      EXPECT_EQ(j.value("address", ""), proxy.addr()) << line;
      EXPECT_TRUE(j.contains("ts")) << line;
    }
  }
  EXPECT_TRUE(found) << log;

  std::optional<HttpResult> health = HttpCall(proxy.port(), "GET", "/health");
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 503) << health->body;
  EXPECT_NE(health->body.find("\"health\":\"false\""), std::string::npos) << health->body;
  // Neither the backend's /version nor its /metrics can be fetched.
  std::optional<HttpResult> version = HttpCall(proxy.port(), "GET", "/version");
  ASSERT_TRUE(version.has_value());
  EXPECT_EQ(version->status, 500);

  proxy.process().Signal(SIGTERM);
  EXPECT_EQ(notify.Receive(), "STOPPING=1");
  EXPECT_EQ(proxy.process().Wait(std::chrono::seconds(30)), std::optional<int>(0)) << proxy.Log();
}

class GrpcProxyEtcdTest : public GrpcProxyTest {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
  }
  EtcdCluster etcd_;
};

TEST_F(GrpcProxyEtcdTest, ServesKvHealthMetricsAndVersion) {
  const int metrics_port = FreePort();
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientUrl(0),
                                "--metrics-addr=http://127.0.0.1:" + std::to_string(metrics_port)});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();

  // A client that sent only the first byte of its request (it could still
  // become the HTTP/2 preface) holds back nobody, and is served once the
  // rest arrives.
  const int slow = ConnectTcp(proxy.port());
  ASSERT_GE(slow, 0);
  ASSERT_TRUE(SendAll(slow, "P"));

  ASSERT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"put", "foo", "bar"}).exit_code, 0) << proxy.Log();
  CommandResult get = EtcdCluster::Etcdctl(proxy.addr(), {"get", "foo"});
  EXPECT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "foo\nbar\n");
  // It really is in etcd.
  EXPECT_EQ(EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"get", "foo", "--print-value-only"}).out,
            "bar\n");

  // HTTP/1.1 on the gRPC port and on --metrics-addr alike.
  for (int port : {proxy.port(), metrics_port}) {
    std::optional<HttpResult> health = HttpCall(port, "GET", "/health");
    ASSERT_TRUE(health.has_value()) << port;
    EXPECT_EQ(health->status, 200);
    EXPECT_EQ(health->body, "{\"health\":\"true\",\"reason\":\"\"}");
    std::optional<HttpResult> post = HttpCall(port, "POST", "/health");
    ASSERT_TRUE(post.has_value());
    EXPECT_EQ(post->status, 405);

    std::optional<HttpResult> metrics = HttpCall(port, "GET", "/metrics");
    ASSERT_TRUE(metrics.has_value());
    EXPECT_EQ(metrics->status, 200);
    for (const char* want :
         {"grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service="
          "\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
          "etcd_server_health_success ", "process_open_fds "}) {
      EXPECT_NE(metrics->body.find(want), std::string::npos) << want << "\n" << metrics->body;
    }

    std::optional<HttpResult> backend = HttpCall(port, "GET", "/backend/metrics");
    ASSERT_TRUE(backend.has_value());
    EXPECT_EQ(backend->status, 200);
    EXPECT_NE(backend->body.find("etcd_server_has_leader 1"), std::string::npos);

    std::optional<HttpResult> version = HttpCall(port, "GET", "/version");
    std::optional<HttpResult> direct = HttpCall(etcd_.ClientPort(0), "GET", "/version");
    ASSERT_TRUE(version.has_value() && direct.has_value());
    EXPECT_EQ(version->status, 200);
    EXPECT_EQ(version->body, direct->body);
    nlohmann::json j = nlohmann::json::parse(version->body, nullptr, false);
    EXPECT_EQ(j.value("etcdserver", ""), "3.4.23") << version->body;

    std::optional<HttpResult> unknown = HttpCall(port, "GET", "/v3/kv/range");
    ASSERT_TRUE(unknown.has_value());
    EXPECT_EQ(unknown->status, 404);
  }

  ASSERT_TRUE(SendAll(slow, "OST /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string slow_answer = ReadToEof(slow, seconds(20));
  close(slow);
  EXPECT_EQ(slow_answer.rfind("HTTP/1.1 405 ", 0), 0u) << slow_answer;

  // The default advertise URL makes MemberList one synthetic entry.
  const std::string members = MemberList(proxy.addr());
  EXPECT_EQ(std::count(members.begin(), members.end(), '\n'), 1) << members;
  EXPECT_EQ(members.rfind("0, started, ", 0), 0u) << members;
  EXPECT_NE(members.find(", " + proxy.addr() + ", false"), std::string::npos) << members;

  // With etcd gone, /health turns 503.
  etcd_.Stop(0);
  EXPECT_TRUE(WaitFor(
      [&] {
        std::optional<HttpResult> h = HttpCall(metrics_port, "GET", "/health");
        return h.has_value() && h->status == 503;
      },
      seconds(30)))
      << proxy.Log();

  proxy.process().Signal(SIGTERM);
  EXPECT_EQ(proxy.process().Wait(seconds(30)), std::optional<int>(0)) << proxy.Log();
}

TEST_F(GrpcProxyEtcdTest, EmptyAdvertiseUrlPassesMemberListThrough) {
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0), "--advertise-client-url="});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  const std::string direct = MemberList(etcd_.ClientAddr(0));
  ASSERT_NE(direct, "");
  EXPECT_NE(direct.find("m0"), std::string::npos) << direct;
  EXPECT_EQ(MemberList(proxy.addr()), direct) << proxy.Log();
}

// A request just over --max-send-bytes gets etcd's own answer, as from etcd
// directly (etcdctl itself refuses to send more than 2 MiB, so the gRPC
// server's own limit is not reachable with it).
TEST_F(GrpcProxyEtcdTest, MaxSendBytesLikeEtcd) {
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0)});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  const std::string big = dir_.File("big");
  {
    std::ofstream out(big);
    out << std::string(1600 * 1000, 'a');
  }
  CommandResult via_proxy = PutFromFile(proxy.addr(), "big", big);
  CommandResult direct = PutFromFile(etcd_.ClientAddr(0), "big", big);
  EXPECT_NE(via_proxy.exit_code, 0);
  EXPECT_EQ(LastErrorLine(via_proxy), "Error: etcdserver: request is too large") << via_proxy.err;
  EXPECT_EQ(LastErrorLine(via_proxy), LastErrorLine(direct)) << direct.err;

  // A small put still works afterwards.
  EXPECT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"put", "small", "1"}).exit_code, 0);

  // python3-etcd3 sends anything: over max-send-bytes + 512 KiB the proxy's
  // own gRPC server refuses the request, as etcd's does.
  const std::string script =
      "import etcd3, sys\n"
      "c = etcd3.client(host='127.0.0.1', port=int(sys.argv[1]))\n"
      "try:\n"
      "    c.put('k', 'a' * 2200000)\n"
      "    print('ok')\n"
      "except Exception as e:\n"
      "    print(e.code().name, e.details())\n";
  CommandResult py = RunCommand({"/usr/bin/python3", "-c", script, std::to_string(proxy.port())});
  EXPECT_EQ(py.exit_code, 0) << py.err;
  EXPECT_EQ(py.out.rfind("RESOURCE_EXHAUSTED ", 0), 0u) << py.out;
  EXPECT_NE(py.out.find("2097152"), std::string::npos) << py.out;
}

// Lowered below etcd's own limits, --max-send-bytes limits what goes to etcd
// and --max-recv-bytes what comes back from it: a put over the first is
// refused unsent with etcd's error, a read of a value over the second fails
// with gRPC's, and everything under both works; etcd itself takes both.
TEST_F(GrpcProxyEtcdTest, LoweredMaxSendAndRecvBytesLimitBothDirections) {
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0), "--max-send-bytes=100000",
                                "--max-recv-bytes=200000"});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  auto file_of = [&](const std::string& name, size_t bytes) {
    const std::string path = dir_.File(name);
    std::ofstream(path) << std::string(bytes, 'a');
    return path;
  };
  const std::string small = file_of("90k", 90 * 1000);
  const std::string medium = file_of("150k", 150 * 1000);
  const std::string large = file_of("250k", 250 * 1000);

  CommandResult put_small = PutFromFile(proxy.addr(), "small", small);
  EXPECT_EQ(put_small.exit_code, 0) << put_small.err << proxy.Log();
  CommandResult put_medium = PutFromFile(proxy.addr(), "medium", medium);
  EXPECT_NE(put_medium.exit_code, 0);
  EXPECT_EQ(LastErrorLine(put_medium), "Error: etcdserver: request is too large") << put_medium.err;
  EXPECT_EQ(EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"get", "medium"}).out, "")
      << "nothing was written";

  // Written directly, then read back through the proxy.
  ASSERT_EQ(PutFromFile(etcd_.ClientAddr(0), "medium", medium).exit_code, 0);
  ASSERT_EQ(PutFromFile(etcd_.ClientAddr(0), "large", large).exit_code, 0);
  CommandResult get_medium =
      EtcdCluster::Etcdctl(proxy.addr(), {"get", "medium", "--print-value-only"});
  EXPECT_EQ(get_medium.exit_code, 0) << get_medium.err;
  EXPECT_EQ(get_medium.out.size(), 150 * 1000 + 1);
  CommandResult get_large =
      EtcdCluster::Etcdctl(proxy.addr(), {"get", "large", "--print-value-only"});
  EXPECT_NE(get_large.exit_code, 0);
  EXPECT_EQ(get_large.out, "");
  EXPECT_NE(get_large.err.find("larger than max"), std::string::npos) << get_large.err;
  // The proxy serves on.
  EXPECT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"get", "small", "--print-value-only"}).out,
            std::string(90 * 1000, 'a') + "\n");
}

// The settings (id -> value) of the SETTINGS frame a server sends first on a
// new HTTP/2 connection; nullopt if its first frame is not SETTINGS.
std::optional<std::map<uint16_t, uint32_t>> ServerSettings(int port) {
  const int fd = ConnectTcp(port);
  if (fd < 0) return std::nullopt;
  std::optional<std::map<uint16_t, uint32_t>> settings;
  const std::string empty_settings("\0\0\0\x04\0\0\0\0\0", 9);
  if (SendAll(fd, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings)) {
    const std::string head = ReadN(fd, 9);
    auto byte = [](const std::string& b, size_t i) { return static_cast<uint8_t>(b[i]); };
    if (head.size() == 9 && byte(head, 3) == 0x4) {
      const size_t length =
          (size_t{byte(head, 0)} << 16) | (size_t{byte(head, 1)} << 8) | byte(head, 2);
      const std::string payload = ReadN(fd, length);
      settings.emplace();
      for (size_t i = 0; i + 6 <= payload.size(); i += 6) {
        (*settings)[static_cast<uint16_t>((byte(payload, i) << 8) | byte(payload, i + 1))] =
            (uint32_t{byte(payload, i + 2)} << 24) | (uint32_t{byte(payload, i + 3)} << 16) |
            (uint32_t{byte(payload, i + 4)} << 8) | byte(payload, i + 5);
      }
    }
  }
  close(fd);
  return settings;
}

// --max-concurrent-streams is what the proxy's plain listener advertises to
// its clients; by default no limit (etcd's default is 2^32 - 1; left out, the
// setting is unlimited in HTTP/2). etcd's own proxy applies the flag only to
// its HTTP/1.1 side (spec 2.1). (Without the frame relay, with TLS to etcd,
// gRPC's server advertises it, capped at 2^31 - 1.)
TEST_F(GrpcProxyEtcdTest, MaxConcurrentStreamsIsAdvertisedToClients) {
  GrpcProxyProcess by_default(dir_, {"--endpoints=" + etcd_.ClientAddr(0)});
  GrpcProxyProcess limited(dir_,
                           {"--endpoints=" + etcd_.ClientAddr(0), "--max-concurrent-streams=7"});
  ASSERT_TRUE(by_default.Ready()) << by_default.Log();
  ASSERT_TRUE(limited.Ready()) << limited.Log();
  constexpr uint16_t kMaxConcurrentStreams = 0x3;
  const auto unlimited = ServerSettings(by_default.port());
  ASSERT_TRUE(unlimited.has_value());
  EXPECT_TRUE(unlimited->count(kMaxConcurrentStreams) == 0 ||
              unlimited->at(kMaxConcurrentStreams) == 4294967295u);
  const auto seven = ServerSettings(limited.port());
  ASSERT_TRUE(seven.has_value());
  ASSERT_EQ(seven->count(kMaxConcurrentStreams), 1u);
  EXPECT_EQ(seven->at(kMaxConcurrentStreams), 7u);
  // Clients keep working within the limit.
  EXPECT_EQ(EtcdCluster::Etcdctl(limited.addr(), {"put", "streams", "7"}).exit_code, 0);
}

TEST_F(GrpcProxyEtcdTest, NamespacePrefixesKeys) {
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0), "--namespace=ns1/"});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  ASSERT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"put", "k", "v"}).exit_code, 0) << proxy.Log();
  EXPECT_EQ(EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"get", "ns1/k", "--print-value-only"}).out,
            "v\n");
  EXPECT_EQ(EtcdCluster::Etcdctl(proxy.addr(), {"get", "k"}).out, "k\nv\n");
}

// With server TLS on, keel terminates TLS itself and serves both gRPC (over
// the frame relay, etcd being plain here) and HTTP/1.1 on the one port, as on
// a plaintext port; --metrics-addr serves HTTP as well. etcd's proxy sends
// every h2 connection to gRPC, so there curl needs --http1.1.
TEST_F(GrpcProxyEtcdTest, AutoTlsListenerServesGrpcAndHttp) {
  const int metrics_port = FreePort();
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0), "--auto-tls",
                                "--metrics-addr=http://127.0.0.1:" + std::to_string(metrics_port)});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  const std::vector<std::string> tls = {"--insecure-transport=false", "--insecure-skip-tls-verify"};
  std::vector<std::string> put = tls;
  put.insert(put.end(), {"put", "tls", "1"});
  CommandResult r = EtcdCluster::Etcdctl(proxy.addr(), put);
  EXPECT_EQ(r.exit_code, 0) << r.err << proxy.Log();
  std::vector<std::string> get = tls;
  get.insert(get.end(), {"get", "tls", "--print-value-only"});
  EXPECT_EQ(EtcdCluster::Etcdctl(proxy.addr(), get).out, "1\n");
  // Plaintext gRPC is refused on the TLS port.
  EXPECT_NE(EtcdCluster::Etcdctl(proxy.addr(), {"get", "tls"}, seconds(20)).exit_code, 0);

  // A value larger than what the TLS side buffers (1 MiB) before it waits
  // for the reader, both ways.
  const std::string big(1200 * 1000, 'b');
  const std::string value_file = dir_.File("big.value");
  std::ofstream(value_file) << big;
  const std::string etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=" + proxy.addr() +
                              " --insecure-transport=false --insecure-skip-tls-verify ";
  CommandResult big_put =
      RunCommand({"sh", "-c", etcdctl + "put big < " + value_file}, {}, seconds(30));
  EXPECT_EQ(big_put.exit_code, 0) << big_put.err << proxy.Log();
  CommandResult big_get =
      RunCommand({"sh", "-c", etcdctl + "get big --print-value-only"}, {}, seconds(30));
  EXPECT_EQ(big_get.exit_code, 0) << big_get.err;
  EXPECT_TRUE(big_get.out == big + "\n") << "got " << big_get.out.size() << " bytes";

  // HTTP on the TLS port: curl offers h2 and http/1.1 and gets HTTP/1.1.
  const std::string https = "https://" + proxy.addr();
  CommandResult health =
      RunCommand({"curl", "-sk", "-w", " %{http_code} %{http_version}", https + "/health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "{\"health\":\"true\",\"reason\":\"\"} 200 1.1");
  CommandResult metrics = RunCommand({"curl", "-sk", "--fail", https + "/metrics"});
  EXPECT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_NE(metrics.out.find("grpc_server_handled_total{"), std::string::npos) << metrics.out;
  // The TLS calls above were carried by the frame relay (speaking TLS
  // itself), not copied to the gRPC server.
  const std::optional<double> relayed =
      MetricValue(metrics.out, "keel_grpc_relay_streams_total{route=\"etcd\"}");
  ASSERT_TRUE(relayed.has_value()) << metrics.out;
  EXPECT_GT(*relayed, 0) << metrics.out;
  CommandResult version = RunCommand({"curl", "-sk", "--fail", https + "/version"});
  EXPECT_EQ(version.exit_code, 0) << version.err;
  EXPECT_NE(version.out.find("etcdserver"), std::string::npos) << version.out;
  // Plain HTTP on the TLS port gets no answer.
  CommandResult plain =
      RunCommand({"curl", "-s", "--max-time", "10", "http://" + proxy.addr() + "/health"});
  EXPECT_NE(plain.exit_code, 0) << plain.out;
  EXPECT_EQ(plain.out.find("health"), std::string::npos) << plain.out;

  std::optional<HttpResult> metrics_health = HttpCall(metrics_port, "GET", "/health");
  ASSERT_TRUE(metrics_health.has_value());
  EXPECT_EQ(metrics_health->status, 200) << metrics_health->body;
}

// SIGTERM ends open streams and the process exits 0.
TEST_F(GrpcProxyEtcdTest, SigtermWithOpenWatchExitsCleanly) {
  GrpcProxyProcess proxy(dir_, {"--endpoints=" + etcd_.ClientAddr(0)});
  ASSERT_TRUE(proxy.Ready()) << proxy.Log();
  Subprocess watch({"etcdctl", "--endpoints=" + proxy.addr(), "watch", "w"}, dir_.File("watch.log"),
                   {{"ETCDCTL_API", "3"}});
  EXPECT_TRUE(WaitFor(
      [&] {
        EtcdCluster::Etcdctl(proxy.addr(), {"put", "w", "seen"});
        return watch.WaitForLog("seen", std::chrono::milliseconds(500));
      },
      seconds(30)))
      << watch.Log() << proxy.Log();
  proxy.process().Signal(SIGTERM);
  EXPECT_EQ(proxy.process().Wait(seconds(30)), std::optional<int>(0)) << proxy.Log();
}

// Two proxies sharing a resolver prefix list each other; a killed one
// disappears once its lease runs out (spec 4, scenario 39).
TEST_F(GrpcProxyEtcdTest, RegisteredProxiesListEachOther) {
  const std::vector<std::string> flags = {"--endpoints=" + etcd_.ClientAddr(0),
                                          "--resolver-prefix=___grpc_proxy_endpoint",
                                          "--resolver-ttl=2"};
  GrpcProxyProcess a(dir_, flags);
  GrpcProxyProcess b(dir_, flags);
  ASSERT_TRUE(a.Ready()) << a.Log();
  ASSERT_TRUE(b.Ready()) << b.Log();
  auto lists = [](const std::string& members, const std::string& addr) {
    return members.find(", " + addr + ", false") != std::string::npos;
  };
  std::string members;
  EXPECT_TRUE(WaitFor(
      [&] {
        members = MemberList(a.addr());
        return lists(members, a.addr()) && lists(members, b.addr());
      },
      seconds(30)))
      << members << a.Log() << b.Log();
  // The registration key and value are etcd's.
  CommandResult reg = EtcdCluster::Etcdctl(
      etcd_.ClientAddr(0), {"get", "___grpc_proxy_endpoint/" + b.addr(), "--print-value-only"});
  nlohmann::json value = nlohmann::json::parse(reg.out, nullptr, false);
  ASSERT_TRUE(value.is_object()) << reg.out;
  EXPECT_EQ(value.value("Addr", ""), b.addr());
  EXPECT_EQ(value.value("Op", -1), 0);

  b.process().Kill();
  EXPECT_TRUE(WaitFor(
      [&] {
        members = MemberList(a.addr());
        return lists(members, a.addr()) && !lists(members, b.addr());
      },
      seconds(60)))
      << members << a.Log();
}

// A unary call the client gives up on is cancelled upstream too: a v3lock
// Lock waiting behind another holder must not take the lock later for a
// client that is gone (its waiter key would block everyone until its lease
// expires), and SIGTERM must not wait forever for such a call. Parameter:
// the proxy's --namespace ("" for none); under one the Lock is served by the
// frame relay itself against the chain (a local unary call), without one it
// goes straight to etcd.
class GrpcProxyLockTest : public GrpcProxyEtcdTest,
                          public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    GrpcProxyEtcdTest::SetUp();
    direct_ = grpc::CreateChannel(etcd_.ClientAddr(0), grpc::InsecureChannelCredentials());
    std::vector<std::string> flags = {"--endpoints=" + etcd_.ClientAddr(0)};
    if (!GetParam().empty()) flags.push_back("--namespace=" + GetParam());
    proxy_ = std::make_unique<GrpcProxyProcess>(dir_, flags);
    ASSERT_TRUE(proxy_->Ready()) << proxy_->Log();
    via_ = grpc::CreateChannel(proxy_->addr(), grpc::InsecureChannelCredentials());
    holder_lease_ = Grant(direct_);
    waiter_lease_ = Grant(via_);
    v3lockpb::LockRequest req;
    req.set_name(GetParam() + "L");  // the name the proxy's "L" becomes
    req.set_lease(holder_lease_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    ASSERT_TRUE(v3lockpb::Lock::NewStub(direct_)->Lock(&ctx, req, &held_).ok());
  }

  int64_t Grant(const std::shared_ptr<grpc::Channel>& channel) {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(60);
    etcdserverpb::LeaseGrantResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    EXPECT_TRUE(etcdserverpb::Lease::NewStub(channel)->LeaseGrant(&ctx, req, &resp).ok());
    return resp.id();
  }

  // Keys under the lock's prefix, read directly from etcd (-1 on error).
  int64_t LockKeys() {
    etcdserverpb::RangeRequest req;
    req.set_key(GetParam() + "L/");
    req.set_range_end(GetParam() + "L0");
    req.set_count_only(true);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
    if (!etcdserverpb::KV::NewStub(direct_)->Range(&ctx, req, &resp).ok()) return -1;
    return resp.count();
  }

  // Starts a Lock of "L" through the proxy, without a deadline, and waits
  // until etcd shows its waiter key.
  void StartWaiter() {
    waiter_req_.set_name("L");
    waiter_req_.set_lease(waiter_lease_);
    waiter_stub_ = v3lockpb::Lock::NewStub(via_);
    waiter_stub_->async()->Lock(&waiter_ctx_, &waiter_req_, &waiter_resp_,
                                [this](grpc::Status status) {
                                  absl::MutexLock lock(&mu_);
                                  waiter_status_ = std::move(status);
                                });
    ASSERT_TRUE(WaitFor([&] { return LockKeys() == 2; }, seconds(30)));
  }

  bool WaiterDone() {
    absl::MutexLock lock(&mu_);
    return waiter_status_.has_value();
  }

  std::shared_ptr<grpc::Channel> direct_;
  std::shared_ptr<grpc::Channel> via_;
  std::unique_ptr<GrpcProxyProcess> proxy_;
  int64_t holder_lease_ = 0;
  int64_t waiter_lease_ = 0;
  v3lockpb::LockResponse held_;
  grpc::ClientContext waiter_ctx_;
  v3lockpb::LockRequest waiter_req_;
  v3lockpb::LockResponse waiter_resp_;
  std::unique_ptr<v3lockpb::Lock::Stub> waiter_stub_;
  absl::Mutex mu_;
  std::optional<grpc::Status> waiter_status_;
};

TEST_P(GrpcProxyLockTest, CancelledLockIsCancelledUpstream) {
  StartWaiter();
  waiter_ctx_.TryCancel();
  ASSERT_TRUE(WaitFor([&] { return WaiterDone(); }, seconds(30)));
  // etcd's lock service removes the waiter key once the proxy's call to it
  // is cancelled; the holder's key stays.
  EXPECT_TRUE(WaitFor([&] { return LockKeys() == 1; }, seconds(30))) << proxy_->Log();
  if (!GetParam().empty()) {
    // Served by the relay itself against the chain (namespace layer).
    EXPECT_EQ(ProxyMetric(*proxy_, "keel_grpc_relay_streams_total{route=\"local\"}").value_or(0),
              1);
  }
  // Released, the lock goes to nobody: the cancelled client never gets it.
  v3lockpb::UnlockRequest unlock;
  unlock.set_key(held_.key());
  v3lockpb::UnlockResponse unlocked;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  ASSERT_TRUE(v3lockpb::Lock::NewStub(direct_)->Unlock(&ctx, unlock, &unlocked).ok());
  EXPECT_TRUE(WaitFor([&] { return LockKeys() == 0; }, seconds(30)));
}

// The client's deadline (which the proxy also forwards upstream) ends a waiting
// Lock, and no waiter key is left behind.
TEST_P(GrpcProxyLockTest, DeadlineEndsAWaitingLockAndLeavesNoWaiter) {
  waiter_ctx_.set_deadline(std::chrono::system_clock::now() + seconds(2));
  StartWaiter();
  ASSERT_TRUE(WaitFor([&] { return WaiterDone(); }, seconds(30)));
  {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(waiter_status_->error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << waiter_status_->error_message();
  }
  EXPECT_TRUE(WaitFor([&] { return LockKeys() == 1; }, seconds(30))) << proxy_->Log();
}

TEST_P(GrpcProxyLockTest, SigtermWithWaitingLockExits) {
  StartWaiter();
  proxy_->process().Signal(SIGTERM);
  EXPECT_EQ(proxy_->process().Wait(seconds(60)), std::optional<int>(0)) << proxy_->Log();
  ASSERT_TRUE(WaitFor([&] { return WaiterDone(); }, seconds(30)));
}

INSTANTIATE_TEST_SUITE_P(Namespaces, GrpcProxyLockTest, ::testing::Values("", "ns/"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.empty() ? std::string("none") : std::string("ns");
                         });

}  // namespace
}  // namespace keel::testutil
