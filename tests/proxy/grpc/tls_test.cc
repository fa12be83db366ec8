#include "proxy/grpc/tls.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "common/tcp_listen.h"
#include "grpcpp/server_posix.h"
#include "gtest/gtest.h"
#include "tests/proxy/grpc/terminated_listener.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::keel::testutil::CertKeyFiles;
using ::keel::testutil::CertSpec;
using ::keel::testutil::TestPki;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

// Listener options with explicit files (the designated-initializer form trips
// GCC 12's -Wmissing-field-initializers).
ServerTlsOptions Listener(const std::string& cert, const std::string& key,
                          const std::string& trusted_ca = "") {
  ServerTlsOptions options;
  options.cert_file = cert;
  options.key_file = key;
  options.trusted_ca_file = trusted_ca;
  return options;
}

ServerTlsOptions AutoTls(const std::string& data_dir, const std::string& listen_host) {
  ServerTlsOptions options;
  options.auto_tls = true;
  options.data_dir = data_dir;
  options.listen_host = listen_host;
  return options;
}

ClientTlsOptions Upstream(const std::string& cert, const std::string& key,
                          const std::string& cacert = "", bool insecure_skip_verify = false) {
  ClientTlsOptions options;
  options.cert = cert;
  options.key = key;
  options.cacert = cacert;
  options.insecure_skip_verify = insecure_skip_verify;
  return options;
}

ClientTlsOptions TrustCa(const std::string& cacert) { return Upstream("", "", cacert); }

ClientTlsOptions SkipVerify() { return Upstream("", "", "", true); }

CertSpec WithCn(const std::string& common_name) {
  CertSpec spec;
  spec.common_name = common_name;
  return spec;
}

// Asserts InvalidArgument whose message contains every `needle`.
void ExpectInvalid(const absl::Status& status, std::initializer_list<std::string> needles) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  for (const std::string& needle : needles) {
    EXPECT_NE(status.message().find(needle), std::string::npos)
        << "message \"" << status.message() << "\" lacks \"" << needle << "\"";
  }
}

// A KV service answering Range with a fixed revision, so a test can tell a
// call that crossed the TLS connection from a transport failure.
class FixedKv final : public etcdserverpb::KV::CallbackService {
 public:
  grpc::ServerUnaryReactor* Range(grpc::CallbackServerContext* context,
                                  const etcdserverpb::RangeRequest*,
                                  etcdserverpb::RangeResponse* response) override {
    response->mutable_header()->set_revision(42);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// An in-process gRPC server (FixedKv) behind a TerminatedListener.
class TestServer {
 public:
  explicit TestServer(std::shared_ptr<SSL_CTX> context) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&kv_);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr) return;
    listener_ =
        std::make_unique<TerminatedListener>(std::move(context), [this](int fd, bool http2) {
          if (http2) {
            grpc::AddInsecureChannelFromFd(server_.get(), fd);
          } else {
            close(fd);
          }
        });
  }
  ~TestServer() {
    listener_.reset();
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  bool started() const { return listener_ != nullptr && listener_->started(); }
  std::string Address() const { return "127.0.0.1:" + std::to_string(listener_->port()); }

 private:
  FixedKv kv_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<TerminatedListener> listener_;
};

std::chrono::system_clock::time_point Deadline(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

// Makes one Range call over a fresh channel; returns its status, and checks the
// answer came from FixedKv when OK.
grpc::Status CallRange(const std::string& address,
                       std::shared_ptr<grpc::ChannelCredentials> creds) {
  auto channel = grpc::CreateChannel(address, std::move(creds));
  auto stub = etcdserverpb::KV::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(Deadline(20));
  etcdserverpb::RangeRequest request;
  request.set_key("k");
  etcdserverpb::RangeResponse response;
  grpc::Status status = stub->Range(&context, request, &response);
  if (status.ok()) {
    EXPECT_EQ(response.header().revision(), 42);
  }
  return status;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    server_ = pki_.Issue("server", WithCn("keel-server"));
    client_ = pki_.Issue("client");  // no CN, as an upstream client cert must be
    client_cn_ = pki_.Issue("client-cn", WithCn("root"));
    ASSERT_TRUE(pki_.ok()) << pki_.error();
  }

  TestPki pki_;
  CertKeyFiles server_;
  CertKeyFiles client_;
  CertKeyFiles client_cn_;
};

TEST(TlsEnabledTest, FollowsTheFlags) {
  EXPECT_FALSE(ServerTlsEnabled(ServerTlsOptions()));
  EXPECT_TRUE(ServerTlsEnabled(Listener("c", "")));
  EXPECT_TRUE(ServerTlsEnabled(Listener("", "", "ca")));
  EXPECT_TRUE(ServerTlsEnabled(AutoTls("", "")));
  EXPECT_FALSE(ClientTlsEnabled(ClientTlsOptions()));
  EXPECT_TRUE(ClientTlsEnabled(TrustCa("ca")));
  EXPECT_TRUE(ClientTlsEnabled(SkipVerify()));
  ClientTlsOptions https_endpoints;
  https_endpoints.tls_endpoints = true;
  EXPECT_TRUE(ClientTlsEnabled(https_endpoints));
}

TEST_F(TlsTest, PlaintextWithoutTlsFlags) {
  // No TLS flag: no TLS context either.
  EXPECT_EQ(MakeServerSslContext(ServerTlsOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto channel_creds = MakeChannelCredentials(ClientTlsOptions());
  ASSERT_TRUE(channel_creds.ok()) << channel_creds.status();
  TestServer server(nullptr);
  ASSERT_TRUE(server.started());
  EXPECT_TRUE(CallRange(server.Address(), *channel_creds).ok());
}

TEST_F(TlsTest, ServerTlsWithValidFiles) {
  auto server_context = MakeServerSslContext(Listener(server_.cert, server_.key));
  ASSERT_TRUE(server_context.ok()) << server_context.status();
  TestServer server(*server_context);
  ASSERT_TRUE(server.started());

  auto tls = MakeChannelCredentials(TrustCa(pki_.ca_file()));
  ASSERT_TRUE(tls.ok()) << tls.status();
  auto channel = grpc::CreateChannel(server.Address(), *tls);
  EXPECT_TRUE(channel->WaitForConnected(Deadline(20)));
  grpc::Status status = CallRange(server.Address(), *tls);
  EXPECT_TRUE(status.ok()) << status.error_message();

  // A plaintext client cannot talk to the TLS listener.
  EXPECT_FALSE(CallRange(server.Address(), grpc::InsecureChannelCredentials()).ok());
}

TEST_F(TlsTest, ClientRejectsServerFromAnotherCa) {
  CertKeyFiles rogue = pki_.IssueSelfSigned("rogue");
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  auto server_context = MakeServerSslContext(Listener(rogue.cert, rogue.key));
  ASSERT_TRUE(server_context.ok()) << server_context.status();
  TestServer server(*server_context);
  ASSERT_TRUE(server.started());

  auto verifying = MakeChannelCredentials(TrustCa(pki_.ca_file()));
  ASSERT_TRUE(verifying.ok()) << verifying.status();
  EXPECT_EQ(CallRange(server.Address(), *verifying).error_code(), grpc::StatusCode::UNAVAILABLE);

  // --insecure-skip-tls-verify connects anyway, with or without a client cert.
  auto skip = MakeChannelCredentials(SkipVerify());
  ASSERT_TRUE(skip.ok()) << skip.status();
  grpc::Status status = CallRange(server.Address(), *skip);
  EXPECT_TRUE(status.ok()) << status.error_message();
  auto skip_with_cert = MakeChannelCredentials(Upstream(client_.cert, client_.key, "", true));
  ASSERT_TRUE(skip_with_cert.ok()) << skip_with_cert.status();
  status = CallRange(server.Address(), *skip_with_cert);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// One TLS handshake with MakeClientSslContext's context, as the frame
// relay makes it to etcd, naming `host`; the error text when it fails, ""
// when it succeeded with ALPN h2.
std::string UpstreamHandshake(int port, SSL_CTX* context, const std::string& host) {
  const int fd = ::keel::testutil::ConnectTcp(port);
  if (fd < 0) return "connect failed";
  SSL* ssl = SSL_new(context);
  std::string error;
  if (!ConfigureUpstreamSsl(ssl, host)) {
    error = "host refused";
  } else {
    SSL_set_fd(ssl, fd);
    // Under TLS 1.3 a server refuses a client certificate after the
    // client's handshake is done: the HTTP/2 server's SETTINGS prove it was not.
    static constexpr char kPrefaceAndSettings[] =
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    char answer[64];
    const timeval timeout{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    if (SSL_connect(ssl) != 1) {
      error = TakeOpenSslError("handshake failed");
    } else if (SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
               std::string(reinterpret_cast<const char*>(alpn), alpn_len) != "h2") {
      error = "no h2";
    } else if (SSL_write(ssl, kPrefaceAndSettings, sizeof(kPrefaceAndSettings) - 1) <= 0 ||
               SSL_read(ssl, answer, sizeof(answer)) <= 0) {
      error = TakeOpenSslError("refused after the handshake");
    }
  }
  SSL_free(ssl);
  close(fd);
  return error;
}

// The frame relay's TLS to etcd checks what gRPC's client checks: the CA
// (or nothing, with --insecure-skip-tls-verify) and that the certificate
// names the endpoint's host; it presents --cert to an mTLS etcd.
TEST_F(TlsTest, UpstreamSslContextChecksTheCaAndTheHost) {
  auto mtls = MakeServerSslContext(Listener(server_.cert, server_.key, pki_.ca_file()));
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  TestServer server(*mtls);
  ASSERT_TRUE(server.started());
  const int port = std::stoi(server.Address().substr(server.Address().rfind(':') + 1));

  auto with_cert = MakeClientSslContext(Upstream(client_.cert, client_.key, pki_.ca_file()));
  ASSERT_TRUE(with_cert.ok()) << with_cert.status();
  // The certificate's names: IP 127.0.0.1 and DNS localhost (CertSpec).
  EXPECT_EQ(UpstreamHandshake(port, with_cert->get(), "127.0.0.1"), "");
  EXPECT_EQ(UpstreamHandshake(port, with_cert->get(), "localhost"), "");
  EXPECT_NE(UpstreamHandshake(port, with_cert->get(), "127.0.0.2"), "");
  EXPECT_NE(UpstreamHandshake(port, with_cert->get(), "etcd.example.com"), "");

  // Without a client certificate the mTLS server refuses the connection.
  auto without_cert = MakeClientSslContext(TrustCa(pki_.ca_file()));
  ASSERT_TRUE(without_cert.ok()) << without_cert.status();
  EXPECT_NE(UpstreamHandshake(port, without_cert->get(), "127.0.0.1"), "");

  TestPki other;
  ASSERT_TRUE(other.ok()) << other.error();
  auto other_ca = MakeClientSslContext(Upstream(client_.cert, client_.key, other.ca_file()));
  ASSERT_TRUE(other_ca.ok()) << other_ca.status();
  EXPECT_NE(UpstreamHandshake(port, other_ca->get(), "127.0.0.1").find("certificate verify failed"),
            std::string::npos);
  auto skip = MakeClientSslContext(Upstream(client_.cert, client_.key, "", true));
  ASSERT_TRUE(skip.ok()) << skip.status();
  EXPECT_EQ(UpstreamHandshake(port, skip->get(), "etcd.example.com"), "");

  // The same file checks as MakeChannelCredentials.
  EXPECT_EQ(MakeClientSslContext(Upstream(client_cn_.cert, client_cn_.key, pki_.ca_file()))
                .status()
                .message(),
            "cert has non empty Common Name (root)");
  EXPECT_EQ(MakeClientSslContext(Upstream(client_.cert, "", pki_.ca_file())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificate) {
  auto server_context = MakeServerSslContext(Listener(server_.cert, server_.key, pki_.ca_file()));
  ASSERT_TRUE(server_context.ok()) << server_context.status();
  TestServer server(*server_context);
  ASSERT_TRUE(server.started());

  auto no_cert = MakeChannelCredentials(TrustCa(pki_.ca_file()));
  ASSERT_TRUE(no_cert.ok()) << no_cert.status();
  EXPECT_EQ(CallRange(server.Address(), *no_cert).error_code(), grpc::StatusCode::UNAVAILABLE);

  // A certificate from another issuer is not enough either.
  CertKeyFiles rogue = pki_.IssueSelfSigned("rogue-client");
  ASSERT_TRUE(pki_.ok()) << pki_.error();
  auto rogue_creds = MakeChannelCredentials(Upstream(rogue.cert, rogue.key, pki_.ca_file()));
  ASSERT_TRUE(rogue_creds.ok()) << rogue_creds.status();
  EXPECT_EQ(CallRange(server.Address(), *rogue_creds).error_code(), grpc::StatusCode::UNAVAILABLE);

  auto with_cert = MakeChannelCredentials(Upstream(client_.cert, client_.key, pki_.ca_file()));
  ASSERT_TRUE(with_cert.ok()) << with_cert.status();
  auto channel = grpc::CreateChannel(server.Address(), *with_cert);
  EXPECT_TRUE(channel->WaitForConnected(Deadline(20)));
  grpc::Status status = CallRange(server.Address(), *with_cert);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(TlsTest, MissingFilesAreNamed) {
  const std::string missing = pki_.dir().File("nope.pem");
  ExpectInvalid(MakeServerSslContext(Listener(missing, server_.key)).status(),
                {"--cert-file", missing, "No such file"});
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, missing)).status(),
                {"--key-file", missing});
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, server_.key, missing)).status(),
                {"--trusted-ca-file", missing});
  ExpectInvalid(MakeChannelCredentials(Upstream(missing, client_.key)).status(),
                {"--cert", missing});
  ExpectInvalid(MakeChannelCredentials(TrustCa(missing)).status(), {"--cacert", missing});
}

TEST_F(TlsTest, GarbagePemIsRefused) {
  const std::string garbage = pki_.dir().File("garbage.pem");
  WriteAll(garbage, "this is not a certificate\n");
  const std::string broken = pki_.dir().File("broken.pem");
  WriteAll(broken, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n");
  ExpectInvalid(MakeServerSslContext(Listener(garbage, server_.key)).status(),
                {"--cert-file", garbage, "no PEM certificate"});
  ExpectInvalid(MakeServerSslContext(Listener(broken, server_.key)).status(),
                {"--cert-file", broken});
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, garbage)).status(),
                {"--key-file", garbage, "no PEM private key"});
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, server_.key, garbage)).status(),
                {"--trusted-ca-file", garbage});
  // An encrypted key is refused instead of prompting for a passphrase.
  const std::string encrypted = pki_.dir().File("encrypted-key.pem");
  testutil::CommandResult enc = testutil::RunCommand(
      {"openssl", "pkey", "-in", server_.key, "-aes256", "-passout", "pass:x", "-out", encrypted});
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, encrypted)).status(),
                {"--key-file", encrypted, "no PEM private key"});
  // A key file is not a certificate.
  ExpectInvalid(MakeChannelCredentials(TrustCa(server_.key)).status(),
                {"--cacert", "no PEM certificate"});
}

TEST_F(TlsTest, KeyThatDoesNotMatchTheCertIsRefused) {
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, client_.key)).status(),
                {"does not match", server_.cert, client_.key});
  ExpectInvalid(MakeChannelCredentials(Upstream(client_.cert, server_.key)).status(),
                {"does not match", client_.cert, server_.key});
}

TEST_F(TlsTest, HalfAPairIsRefused) {
  ExpectInvalid(MakeServerSslContext(Listener(server_.cert, "")).status(),
                {"KeyFile and CertFile must both be present"});
  ExpectInvalid(MakeServerSslContext(Listener("", "", pki_.ca_file())).status(),
                {"KeyFile and CertFile must both be present"});
  ExpectInvalid(MakeChannelCredentials(Upstream("", client_.key)).status(),
                {"KeyFile and CertFile must both be present"});
}

TEST_F(TlsTest, UpstreamCertWithCommonNameIsRefused) {
  absl::Status refused = MakeChannelCredentials(Upstream(client_cn_.cert, client_cn_.key)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.message(), "cert has non empty Common Name (root)");
  // Also with --insecure-skip-tls-verify: the CN would still reach etcd.
  EXPECT_EQ(MakeChannelCredentials(Upstream(client_cn_.cert, client_cn_.key, "", true))
                .status()
                .message(),
            "cert has non empty Common Name (root)");
  EXPECT_TRUE(MakeChannelCredentials(Upstream(client_.cert, client_.key)).ok());
  // The listener certificate may have a CN (etcd 3.4 wrongly refused it, #11970).
  EXPECT_TRUE(MakeServerSslContext(Listener(server_.cert, server_.key)).ok());
}

TEST(AutoTlsTest, WritesFilesOnceAndReusesThem) {
  testutil::TempDir dir;
  const std::string data_dir = dir.File("default.proxy");
  ServerTlsOptions options = AutoTls(data_dir, "127.0.0.1");
  auto creds = MakeServerSslContext(options);
  ASSERT_TRUE(creds.ok()) << creds.status();

  const std::string cert = data_dir + "/fixtures/proxy/cert.pem";
  const std::string key = data_dir + "/fixtures/proxy/key.pem";
  ASSERT_TRUE(std::filesystem::exists(cert));
  ASSERT_TRUE(std::filesystem::exists(key));
  for (const std::string& path : {cert, key}) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600) << path;
  }
  testutil::CommandResult text =
      testutil::RunCommand({"openssl", "x509", "-in", cert, "-noout", "-text"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("IP Address:127.0.0.1"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("prime256v1"), std::string::npos) << text.out;

  // A restart reuses the same files.
  const std::string cert_pem = ReadAll(cert);
  const std::string key_pem = ReadAll(key);
  ASSERT_TRUE(MakeServerSslContext(options).ok());
  EXPECT_EQ(ReadAll(cert), cert_pem);
  EXPECT_EQ(ReadAll(key), key_pem);

  // It serves TLS that a skip-verify client accepts and a verifying one refuses.
  TestServer server(*creds);
  ASSERT_TRUE(server.started());
  auto skip = MakeChannelCredentials(SkipVerify());
  ASSERT_TRUE(skip.ok()) << skip.status();
  grpc::Status status = CallRange(server.Address(), *skip);
  EXPECT_TRUE(status.ok()) << status.error_message();
  TestPki other_pki;
  ASSERT_TRUE(other_pki.ok()) << other_pki.error();
  auto verifying = MakeChannelCredentials(TrustCa(other_pki.ca_file()));
  ASSERT_TRUE(verifying.ok()) << verifying.status();
  EXPECT_EQ(CallRange(server.Address(), *verifying).error_code(), grpc::StatusCode::UNAVAILABLE);
  // ...but one trusting the generated certificate itself connects.
  auto pinned = MakeChannelCredentials(TrustCa(cert));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  status = CallRange(server.Address(), *pinned);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(AutoTlsTest, DnsHostNameAndCorruptedFiles) {
  testutil::TempDir dir;
  ServerTlsOptions options = AutoTls(dir.path(), "localhost");
  ASSERT_TRUE(MakeServerSslContext(options).ok());
  const std::string cert = dir.File("fixtures/proxy/cert.pem");
  testutil::CommandResult text =
      testutil::RunCommand({"openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("DNS:localhost"), std::string::npos) << text.out;

  // Damaged files are reported, not silently replaced.
  WriteAll(cert, "garbage");
  ExpectInvalid(MakeServerSslContext(options).status(), {cert});
}

TEST(AutoTlsTest, NeedsADataDir) {
  ExpectInvalid(MakeServerSslContext(AutoTls("", "127.0.0.1")).status(), {"--data-dir"});
}

TEST(AutoTlsTest, ExplicitFilesWin) {
  TestPki pki;
  ASSERT_TRUE(pki.ok()) << pki.error();
  CertKeyFiles server = pki.Issue("server");
  ASSERT_TRUE(pki.ok()) << pki.error();
  testutil::TempDir dir;
  ServerTlsOptions options = AutoTls(dir.path(), "127.0.0.1");
  options.cert_file = server.cert;
  options.key_file = server.key;
  auto creds = MakeServerSslContext(options);
  ASSERT_TRUE(creds.ok()) << creds.status();
  EXPECT_FALSE(std::filesystem::exists(dir.File("fixtures")));
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
