// `keel grpc-proxy start` TLS termination and origination against a TLS-only
// real etcd 3.4 with client certificate auth, driven by real etcdctl
// (proxy.md sections 2.1 and 2.12, scenarios 45 and 46).

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;

// A `keel grpc-proxy start` on a free port with the given extra flags.
class ProxyProcess {
 public:
  ProxyProcess(const TempDir& dir, const std::string& name, std::vector<std::string> flags)
      : port_(FreePort()) {
    std::vector<std::string> argv = {BinDir() + "/keel", "grpc-proxy", "start",
                                     "--listen-addr=" + addr(),
                                     "--data-dir=" + dir.File(name + ".proxy")};
    for (auto& f : flags) argv.push_back(std::move(f));
    process_ = std::make_unique<Subprocess>(argv, dir.File(name + ".log"));
  }

  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  std::string Log() const { return process_->Log(); }
  Subprocess& process() { return *process_; }

  // Waits until the listener accepts TCP connections.
  bool Listening() {
    return WaitFor([&] { return !process_->Running() || CanConnect("127.0.0.1", port_); },
                   seconds(60)) &&
           process_->Running();
  }

 private:
  int port_;
  std::unique_ptr<Subprocess> process_;
};

// etcdctl through `endpoint` with extra (TLS) flags, retried until it succeeds:
// the proxy dials etcd lazily, and the box is slow.
CommandResult EtcdctlEventually(const std::string& endpoint, const std::vector<std::string>& tls,
                                const std::vector<std::string>& args) {
  std::vector<std::string> all = tls;
  all.insert(all.end(), args.begin(), args.end());
  CommandResult result;
  WaitFor(
      [&] {
        result = EtcdCluster::Etcdctl(endpoint, all);
        return result.exit_code == 0;
      },
      seconds(60));
  return result;
}

// One TLS-only etcd member with --client-cert-auth, shared by every test.
class GrpcProxyTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new TestPki();
    ASSERT_TRUE(pki_->ok()) << pki_->error();
    CertSpec no_cn;
    etcd_server_ = pki_->Issue("etcd-server", no_cn);
    proxy_server_ = pki_->Issue("proxy-server", no_cn);
    proxy_client_ = pki_->Issue("proxy-client", no_cn);
    CertSpec with_cn;
    with_cn.common_name = "root";
    proxy_client_cn_ = pki_->Issue("proxy-client-cn", with_cn);
    proxy_server_cn_ = pki_->Issue("proxy-server-cn", with_cn);
    user_client_ = pki_->Issue("user-client", no_cn);
    ASSERT_TRUE(pki_->ok()) << pki_->error();

    EtcdCluster::Options options;
    options.client_scheme = "https";
    options.extra_flags = {"--cert-file=" + etcd_server_.cert, "--key-file=" + etcd_server_.key,
                           "--client-cert-auth", "--trusted-ca-file=" + pki_->ca_file()};
    cluster_ = new EtcdCluster(options);
    // EtcdCluster probes with plain `etcdctl`; etcdctl reads its TLS flags
    // from ETCDCTL_* while the cluster starts. They are removed right after so
    // that every etcdctl below states its own TLS flags.
    setenv("ETCDCTL_CACERT", pki_->ca_file().c_str(), 1);
    setenv("ETCDCTL_CERT", user_client_.cert.c_str(), 1);
    setenv("ETCDCTL_KEY", user_client_.key.c_str(), 1);
    std::string error;
    const bool started = cluster_->Start(&error);
    unsetenv("ETCDCTL_CACERT");
    unsetenv("ETCDCTL_CERT");
    unsetenv("ETCDCTL_KEY");
    ASSERT_TRUE(started) << error;
    ready_ = true;
  }

  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete pki_;
    pki_ = nullptr;
  }

  void SetUp() override { ASSERT_TRUE(ready_) << "TLS etcd did not start (see above)"; }

  // Flags for the proxy's side towards etcd: mTLS with a CN-less client cert.
  static std::vector<std::string> UpstreamFlags() {
    return {"--endpoints=" + cluster_->ClientUrls(), "--cert=" + proxy_client_.cert,
            "--key=" + proxy_client_.key, "--cacert=" + pki_->ca_file()};
  }
  static std::vector<std::string> Plus(std::vector<std::string> a,
                                       const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  static std::string Https(const ProxyProcess& proxy) { return "https://" + proxy.addr(); }

  // put then get of `key` through the proxy with etcdctl's `tls` flags.
  static void ExpectPutGet(const std::string& endpoint, const std::vector<std::string>& tls,
                           const std::string& key, const ProxyProcess& proxy) {
    CommandResult put = EtcdctlEventually(endpoint, tls, {"put", key, "v-" + key});
    ASSERT_EQ(put.exit_code, 0) << put.err << "\nproxy log:\n" << proxy.Log();
    EXPECT_NE(put.out.find("OK"), std::string::npos) << put.out;
    CommandResult get = EtcdCluster::Etcdctl(endpoint, Plus(tls, {"get", key}));
    ASSERT_EQ(get.exit_code, 0) << get.err;
    EXPECT_EQ(get.out, key + "\nv-" + key + "\n");
    // The write really reached the TLS-only etcd.
    CommandResult direct = EtcdCluster::Etcdctl(
        cluster_->ClientUrl(0), {"--cacert=" + pki_->ca_file(), "--cert=" + user_client_.cert,
                                 "--key=" + user_client_.key, "get", key, "--print-value-only"});
    ASSERT_EQ(direct.exit_code, 0) << direct.err;
    EXPECT_EQ(direct.out, "v-" + key + "\n");
  }

  static bool ready_;
  static TestPki* pki_;
  static EtcdCluster* cluster_;
  static CertKeyFiles etcd_server_, proxy_server_, proxy_server_cn_, proxy_client_,
      proxy_client_cn_, user_client_;
  TempDir dir_;
};

bool GrpcProxyTlsTest::ready_ = false;
TestPki* GrpcProxyTlsTest::pki_ = nullptr;
EtcdCluster* GrpcProxyTlsTest::cluster_ = nullptr;
CertKeyFiles GrpcProxyTlsTest::etcd_server_, GrpcProxyTlsTest::proxy_server_,
    GrpcProxyTlsTest::proxy_server_cn_, GrpcProxyTlsTest::proxy_client_,
    GrpcProxyTlsTest::proxy_client_cn_, GrpcProxyTlsTest::user_client_;

// The doc's "TLS termination": plaintext on loopback, mTLS to etcd. The
// frame relay carries the calls to etcd over TLS of its own (it did not,
// once: TLS to etcd meant the slower gRPC client for every call).
TEST_F(GrpcProxyTlsTest, PlainClientsThroughTlsUpstream) {
  ProxyProcess proxy(dir_, "plain", UpstreamFlags());
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(proxy.addr(), {}, "plain", proxy);
  CommandResult metrics = RunCommand({"curl", "-s", "http://" + proxy.addr() + "/metrics"});
  const std::optional<double> to_etcd =
      MetricValue(metrics.out, "keel_grpc_relay_streams_total{route=\"etcd\"}");
  ASSERT_TRUE(to_etcd.has_value()) << metrics.out;
  EXPECT_GE(*to_etcd, 2) << proxy.Log();  // the put and the get
  // Counted when routed: that the calls were not sent again through the
  // chain shows the relay's own TLS carried them.
  EXPECT_EQ(MetricValue(metrics.out, "keel_grpc_relay_replays_total"), 0) << metrics.out;
  for (const char* trouble :
       {"frame relay: TLS handshake with etcd failed", "frame relay: etcd refused",
        "frame relay: cannot reach etcd", "did not choose HTTP/2"}) {
    EXPECT_EQ(proxy.Log().find(trouble), std::string::npos) << trouble << "\n" << proxy.Log();
  }
}

// etcd requires a client certificate and the proxy has none: under TLS 1.3
// etcd says so only after the client's side of the handshake is done. The
// relay counts that as a connection that never came up (a warning, the
// calls through the chain for a while), not as a lost one: a lost one is
// not waited for, so every call would dial and shake hands again.
TEST_F(GrpcProxyTlsTest, EtcdRefusingTheProxysCertificateIsLogged) {
  ProxyProcess proxy(dir_, "no-client-cert",
                     {"--endpoints=" + cluster_->ClientUrls(), "--cacert=" + pki_->ca_file()});
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  CommandResult put =
      EtcdCluster::Etcdctl(proxy.addr(), {"--command-timeout=3s", "put", "no-client-cert", "v"});
  EXPECT_NE(put.exit_code, 0) << put.out;
  EXPECT_TRUE(WaitFor([&] {
    return proxy.Log().find("frame relay: etcd refused the TLS connection") != std::string::npos;
  })) << proxy.Log();
  EXPECT_NE(proxy.Log().find("frame relay: cannot reach etcd, relaying through the chain"),
            std::string::npos)
      << proxy.Log();
}

// The relay checks etcd's certificate as gRPC's client does: signed by
// --cacert and naming the endpoint's host. Against another CA nothing
// reaches etcd, through the relay or the chain's gRPC client.
TEST_F(GrpcProxyTlsTest, UntrustedEtcdCertificateIsRefused) {
  TestPki other;
  ASSERT_TRUE(other.ok()) << other.error();
  std::vector<std::string> flags = UpstreamFlags();
  flags.back() = "--cacert=" + other.ca_file();
  ProxyProcess proxy(dir_, "untrusted", flags);
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  CommandResult put =
      EtcdCluster::Etcdctl(proxy.addr(), {"--command-timeout=3s", "put", "untrusted", "v"});
  EXPECT_NE(put.exit_code, 0) << put.out;
  EXPECT_TRUE(WaitFor([&] {
    return proxy.Log().find("TLS handshake with etcd failed") != std::string::npos;
  })) << proxy.Log();
  EXPECT_NE(proxy.Log().find("certificate verify failed"), std::string::npos) << proxy.Log();
  CommandResult direct =
      EtcdCluster::Etcdctl(cluster_->ClientUrl(0),
                           {"--cacert=" + pki_->ca_file(), "--cert=" + user_client_.cert,
                            "--key=" + user_client_.key, "get", "untrusted", "--print-value-only"});
  EXPECT_EQ(direct.out, "");
}

// --cacert alone makes the proxy dial etcd over TLS, also for an endpoint
// without https:// (as etcd's proxy does). The frame relay speaks plain
// HTTP/2 to etcd, so it must stay out of the way; it once did not.
TEST_F(GrpcProxyTlsTest, EndpointWithoutSchemeIsDialedWithTls) {
  std::vector<std::string> flags = UpstreamFlags();
  flags[0] = "--endpoints=" + cluster_->ClientAddr(0);
  ProxyProcess proxy(dir_, "schemeless", flags);
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(proxy.addr(), {}, "schemeless", proxy);
}

TEST_F(GrpcProxyTlsTest, TlsClients) {
  // unixs://: --metrics-addr on a unix socket, with the listener's TLS.
  const std::string metrics_socket = dir_.File("metrics.sock");
  ProxyProcess proxy(
      dir_, "tls",
      Plus(UpstreamFlags(), {"--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key,
                             "--metrics-addr=unixs://" + metrics_socket}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(Https(proxy), {"--cacert=" + pki_->ca_file()}, "tls", proxy);
  // Without TLS the client gets nowhere.
  CommandResult plain = EtcdCluster::Etcdctl(proxy.addr(), {"get", "tls"});
  EXPECT_NE(plain.exit_code, 0) << plain.out;

  // The certificate names 127.0.0.1: curl is told to connect to that name.
  CommandResult health = RunCommand({"curl", "-s", "--fail", "--cacert", pki_->ca_file(),
                                     "--unix-socket", metrics_socket, "https://127.0.0.1/health"});
  EXPECT_EQ(health.out, "{\"health\":\"true\",\"reason\":\"\"}") << health.err << proxy.Log();
  CommandResult cleartext =
      RunCommand({"curl", "-s", "--unix-socket", metrics_socket, "http://127.0.0.1/health"});
  EXPECT_EQ(cleartext.out.find("health"), std::string::npos) << cleartext.out;
}

// keel follows etcd 3.5 (#11970): only the upstream client certificate must be
// CN-less; the listener's own certificate may have a CN (etcd 3.4 refused it).
TEST_F(GrpcProxyTlsTest, ListenerCertificateMayHaveCommonName) {
  ProxyProcess proxy(dir_, "listener-cn",
                     Plus(UpstreamFlags(), {"--cert-file=" + proxy_server_cn_.cert,
                                            "--key-file=" + proxy_server_cn_.key}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(Https(proxy), {"--cacert=" + pki_->ca_file()}, "listener-cn", proxy);
}

// Scenario 45: with --trusted-ca-file, client certificates are required, on
// the main port and on an https:// --metrics-addr alike (etcd's proxy uses
// the same TLS settings for both).
TEST_F(GrpcProxyTlsTest, MutualTlsClients) {
  const int metrics_port = FreePort();
  const std::string metrics_url = "https://127.0.0.1:" + std::to_string(metrics_port);
  ProxyProcess proxy(
      dir_, "mtls",
      Plus(UpstreamFlags(),
           {"--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key,
            "--trusted-ca-file=" + pki_->ca_file(), "--metrics-addr=" + metrics_url}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(
      Https(proxy),
      {"--cacert=" + pki_->ca_file(), "--cert=" + user_client_.cert, "--key=" + user_client_.key},
      "mtls", proxy);
  CommandResult no_cert =
      EtcdCluster::Etcdctl(Https(proxy), {"--cacert=" + pki_->ca_file(), "get", "mtls"});
  EXPECT_NE(no_cert.exit_code, 0) << no_cert.out;
  EXPECT_EQ(no_cert.out.find("v-mtls"), std::string::npos) << no_cert.out;

  // /metrics and /health over HTTP/1.1 on the same mTLS port, for a client
  // with a certificate only.
  const std::vector<std::string> curl = {"curl", "-s", "--cacert", pki_->ca_file(), "--fail"};
  CommandResult metrics = RunCommand(Plus(
      curl, {"--cert", user_client_.cert, "--key", user_client_.key, Https(proxy) + "/metrics"}));
  EXPECT_EQ(metrics.exit_code, 0) << metrics.err << proxy.Log();
  EXPECT_NE(metrics.out.find("grpc_server_handled_total{"), std::string::npos) << metrics.out;
  CommandResult health = RunCommand(Plus(
      curl, {"--cert", user_client_.cert, "--key", user_client_.key, Https(proxy) + "/health"}));
  EXPECT_EQ(health.out, "{\"health\":\"true\",\"reason\":\"\"}") << health.err;
  CommandResult refused = RunCommand(Plus(curl, {Https(proxy) + "/metrics"}));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_EQ(refused.out, "");

  CommandResult extra = RunCommand(Plus(
      curl, {"--cert", user_client_.cert, "--key", user_client_.key, metrics_url + "/metrics"}));
  EXPECT_EQ(extra.exit_code, 0) << extra.err << proxy.Log();
  EXPECT_NE(extra.out.find("grpc_server_handled_total{"), std::string::npos) << extra.out;
  CommandResult extra_refused = RunCommand(Plus(curl, {metrics_url + "/metrics"}));
  EXPECT_NE(extra_refused.exit_code, 0);
  EXPECT_EQ(extra_refused.out, "");
  CommandResult extra_plain = RunCommand(
      {"curl", "-s", "--fail", "http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics"});
  EXPECT_NE(extra_plain.exit_code, 0);
  EXPECT_EQ(extra_plain.out, "");
}

TEST_F(GrpcProxyTlsTest, AutoTls) {
  ProxyProcess proxy(dir_, "auto", Plus(UpstreamFlags(), {"--auto-tls"}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(Https(proxy), {"--insecure-skip-tls-verify", "--insecure-transport=false"}, "auto",
               proxy);
  // The self-signed certificate is not trusted by the CA.
  CommandResult verifying =
      EtcdCluster::Etcdctl(Https(proxy), {"--cacert=" + pki_->ca_file(), "get", "auto"});
  EXPECT_NE(verifying.exit_code, 0) << verifying.out;
}

// Scenario 46: an upstream client certificate with a CN would make etcd treat
// every proxied client as that user, so the proxy refuses to start.
TEST_F(GrpcProxyTlsTest, UpstreamCertWithCommonNameRefusesToStart) {
  ProxyProcess proxy(dir_, "cn",
                     {"--endpoints=" + cluster_->ClientUrls(), "--cert=" + proxy_client_cn_.cert,
                      "--key=" + proxy_client_cn_.key, "--cacert=" + pki_->ca_file()});
  std::optional<int> code = proxy.process().Wait(seconds(60));
  ASSERT_TRUE(code.has_value()) << "still running:\n" << proxy.Log();
  EXPECT_EQ(*code, 1) << proxy.Log();
  EXPECT_NE(proxy.Log().find("cert has non empty Common Name (root)"), std::string::npos)
      << proxy.Log();
}

// etcd's clients ping on their own schedule, also while idle (etcdctl asks
// for every 2 s). With TLS to etcd the listener's h2 connections reach keel's
// gRPC server (decrypted by keel's TLS terminator), which must take
// that as etcd does: a default gRPC server counts every ping within 5 minutes
// of the last as a strike and closes the connection (GOAWAY too_many_pings)
// at the third. Five pings in a row over TLS (h2 by ALPN), each once the last
// was acked, get five acks.
TEST_F(GrpcProxyTlsTest, ClientPingsNeverCloseTheConnection) {
  ProxyProcess proxy(dir_, "pings",
                     Plus(UpstreamFlags(), {"--cert-file=" + proxy_server_.cert,
                                            "--key-file=" + proxy_server_.key}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  const std::string script = R"(
import socket, ssl, struct, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20),
                    server_hostname="127.0.0.1")
def frame(kind, flags, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + b"\0\0\0\0" + payload
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, b""))
buf, acks = b"", 0
s.sendall(frame(6, 0, struct.pack(">Q", 0)))
while acks < 5:  # one ping at a time, each sent once the last is acked
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        data = s.recv(65536)
        if not data:
            sys.exit("closed after %d acks" % acks)
        buf += data
    n, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
    payload, buf = buf[9:9 + n], buf[9 + n:]
    if kind == 7:
        sys.exit("GOAWAY after %d acks: %r" % (acks, payload[8:]))
    if kind == 6 and flags & 1:
        acks += 1
        if acks < 5:
            s.sendall(frame(6, 0, struct.pack(">Q", acks)))
print("acks", acks, s.selected_alpn_protocol())
)";
  CommandResult r =
      RunCommand({"/usr/bin/python3", "-c", script, std::to_string(proxy.port()), pki_->ca_file()});
  EXPECT_EQ(r.exit_code, 0) << r.err << proxy.Log();
  EXPECT_EQ(r.out, "acks 5 h2\n") << r.err;
}

// --client-crl-file: a client certificate the list names is refused in the
// handshake, on gRPC and HTTP alike; others get through. A new list written
// over the file takes effect without a restart (etcd reads the file at
// every connection), here in DER.
TEST_F(GrpcProxyTlsTest, RevokedClientCertificatesAreRefused) {
  const CertKeyFiles alice = pki_->Issue("crl-alice");
  const CertKeyFiles bob = pki_->Issue("crl-bob");
  const std::string alice_revoked = pki_->WriteCrl("revokes-alice", {alice});
  const std::string bob_revoked = pki_->WriteCrl("revokes-bob", {bob}, /*der=*/true);
  ASSERT_TRUE(pki_->ok()) << pki_->error();
  const std::string crl = dir_.File("clients.crl");
  std::filesystem::copy_file(alice_revoked, crl);
  ProxyProcess proxy(
      dir_, "crl",
      Plus(UpstreamFlags(), {"--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key,
                             "--trusted-ca-file=" + pki_->ca_file(), "--client-crl-file=" + crl}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  const auto tls_as = [](const CertKeyFiles& who) {
    return std::vector<std::string>{"--cacert=" + pki_->ca_file(), "--cert=" + who.cert,
                                    "--key=" + who.key};
  };
  const auto health_as = [&](const CertKeyFiles& who) {
    return RunCommand({"curl", "-s", "--fail", "--cacert", pki_->ca_file(), "--cert", who.cert,
                       "--key", who.key, Https(proxy) + "/health"});
  };
  ExpectPutGet(Https(proxy), tls_as(bob), "crl", proxy);
  CommandResult refused =
      EtcdCluster::Etcdctl(Https(proxy), Plus(tls_as(alice), {"--dial-timeout=3s", "get", "crl"}));
  EXPECT_NE(refused.exit_code, 0) << refused.out;
  EXPECT_EQ(refused.out.find("v-crl"), std::string::npos) << refused.out;
  EXPECT_NE(health_as(alice).exit_code, 0);
  EXPECT_EQ(health_as(bob).exit_code, 0) << proxy.Log();

  // The new list replaces the file (as an operator's rename would), while
  // bob holds a TLS session he would resume: a resumed session skips the
  // certificate check, so none is offered.
  const std::string resume = R"(
import os, shutil, socket, ssl, sys
port, ca, cert, key, new_list, crl = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
def health(session=None):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=10),
                        server_hostname="127.0.0.1", session=session)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(4096)
    session = s.session
    s.close()
    return data, session
data, session = health()
assert data.startswith(b"HTTP/1.1 200"), data
shutil.copy(new_list, crl + ".new")
os.rename(crl + ".new", crl)
try:
    data, _ = health(session)
    print("served" if data else "refused")
except (ssl.SSLError, OSError):
    print("refused")
)";
  CommandResult resumed =
      RunCommand({"/usr/bin/python3", "-c", resume, std::to_string(proxy.port()), pki_->ca_file(),
                  bob.cert, bob.key, bob_revoked, crl});
  EXPECT_EQ(resumed.out, "refused\n") << resumed.err << proxy.Log();
  EXPECT_NE(health_as(bob).exit_code, 0);
  EXPECT_EQ(health_as(alice).exit_code, 0) << proxy.Log();
  CommandResult get = EtcdctlEventually(Https(proxy), tls_as(alice), {"get", "crl"});
  EXPECT_EQ(get.out, "crl\nv-crl\n") << get.err;
  // A certificate neither list names always got through.
  EXPECT_EQ(health_as(user_client_).exit_code, 0);

  // A list that cannot be read refuses every client certificate.
  std::filesystem::remove(crl);
  EXPECT_NE(health_as(alice).exit_code, 0);
  EXPECT_NE(health_as(user_client_).exit_code, 0);
  EXPECT_NE(proxy.Log().find("client certificate revocation list unreadable"), std::string::npos)
      << proxy.Log();
}

// A list that is not a CRL stops the start, naming the flag and the file.
TEST_F(GrpcProxyTlsTest, BadClientCrlFileIsAnError) {
  CommandResult r = RunCommand(
      {BinDir() + "/keel", "grpc-proxy", "start",
       "--listen-addr=127.0.0.1:" + std::to_string(FreePort()),
       "--data-dir=" + dir_.File("bad-crl.proxy"), "--endpoints=" + cluster_->ClientUrls(),
       "--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key,
       "--trusted-ca-file=" + pki_->ca_file(), "--client-crl-file=" + pki_->ca_file()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "--client-crl-file \"" + pki_->ca_file() +
                       "\": no certificate revocation list found (PEM or DER)\n");
}

// --listen-cipher-suites (Go's names) limits TLS 1.2; TLS 1.3's suites are
// not configurable, as in Go, so etcdctl (TLS 1.3) is unaffected.
TEST_F(GrpcProxyTlsTest, ListenCipherSuitesLimitTls12) {
  ProxyProcess proxy(
      dir_, "ciphers",
      Plus(UpstreamFlags(), {"--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key,
                             "--listen-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_"
                             "GCM_SHA384,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"}));
  ASSERT_TRUE(proxy.Listening()) << proxy.Log();
  ExpectPutGet(Https(proxy), {"--cacert=" + pki_->ca_file()}, "ciphers", proxy);
  const auto health_with = [&](const std::string& cipher) {
    return RunCommand({"curl", "-s", "--fail", "--cacert", pki_->ca_file(), "--tls-max", "1.2",
                       "--ciphers", cipher, Https(proxy) + "/health"});
  };
  EXPECT_EQ(health_with("ECDHE-ECDSA-AES256-GCM-SHA384").exit_code, 0) << proxy.Log();
  EXPECT_EQ(health_with("ECDHE-ECDSA-CHACHA20-POLY1305").exit_code, 0) << proxy.Log();
  EXPECT_NE(health_with("ECDHE-ECDSA-AES128-GCM-SHA256").exit_code, 0);
}

// --debug lowers the log level to debug: a failed handshake is logged only
// with it.
TEST_F(GrpcProxyTlsTest, DebugLogsFailedHandshakes) {
  const std::vector<std::string> tls = Plus(
      UpstreamFlags(), {"--cert-file=" + proxy_server_.cert, "--key-file=" + proxy_server_.key});
  ProxyProcess quiet(dir_, "quiet", tls);
  ProxyProcess debug(dir_, "debug", Plus(tls, {"--debug"}));
  ASSERT_TRUE(quiet.Listening()) << quiet.Log();
  ASSERT_TRUE(debug.Listening()) << debug.Log();
  for (ProxyProcess* proxy : {&quiet, &debug}) {
    // Plain HTTP to the TLS port: no handshake.
    CommandResult plain = RunCommand({"curl", "-s", "http://" + proxy->addr() + "/health"});
    EXPECT_EQ(plain.out.find("health"), std::string::npos) << plain.out;
  }
  EXPECT_TRUE(WaitFor([&] {
    return debug.Log().find("\"msg\":\"TLS handshake failed\"") != std::string::npos;
  })) << debug.Log();
  EXPECT_NE(debug.Log().find("\"level\":\"debug\""), std::string::npos) << debug.Log();
  // The same failure, logged (had it been at this level) before the quiet
  // proxy closed curl's connection, so before curl returned.
  EXPECT_EQ(quiet.Log().find("TLS handshake failed"), std::string::npos) << quiet.Log();
  EXPECT_EQ(quiet.Log().find("\"level\":\"debug\""), std::string::npos) << quiet.Log();
}

}  // namespace
}  // namespace keel::testutil
