#include "proxy/grpc/tls_terminator.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "proxy/grpc/tls.h"
#include "tests/proxy/grpc/terminated_listener.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/process.h"
#include "tests/testutil/socket_io.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::keel::testutil::CertKeyFiles;
using ::keel::testutil::TestPki;

// What a client of the TLS port sees, from Python's ssl module.
struct TlsClientResult {
  std::string alpn;     // the protocol ALPN chose, or "none"
  size_t received = 0;  // bytes the server sent until it closed
  std::string head;     // the first 15 of them
  std::string resumed;  // with resume: "resumed" or "full" for the second connection
};

struct TlsClientOptions {
  std::string offer;  // ALPN offer, comma-separated ("" for none)
  std::string cert, key;
  bool half_close = false;  // shut the write side after the request
  bool resume = false;      // connect again, resuming the first session
};

// (Designated initializers trip GCC 12's -Wmissing-field-initializers.)
TlsClientOptions Offering(const std::string& offer) {
  TlsClientOptions options;
  options.offer = offer;
  return options;
}

// Connects with Python's ssl module (trusting `ca_file`), sends `request`,
// reads until the server closes.
std::optional<TlsClientResult> TlsClient(int port, const std::string& ca_file,
                                         const std::string& request,
                                         const TlsClientOptions& options) {
  const std::string script = R"(
import socket, ssl, sys
port, ca, offer, request, cert, key, half, resume = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
if offer:
    ctx.set_alpn_protocols(offer.split(","))
if cert:
    ctx.load_cert_chain(cert, key)
def half_closed():
    # SSLSocket.shutdown drops TLS: drive an SSLObject over the raw socket,
    # whose write side is shut (a TCP half-close) after the request.
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    def pump():
        data = outgoing.read()
        if data:
            raw.sendall(data)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
            incoming.write(raw.recv(1 << 16))
    obj.write(request.encode())
    pump()
    raw.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        try:
            data = obj.read(1 << 16)
            if not data:  # close_notify
                break
            got += data
        except ssl.SSLWantReadError:
            data = raw.recv(1 << 16)
            if not data:
                break
            incoming.write(data)
        except ssl.SSLZeroReturnError:
            break
    return obj, got
def once(session=None):
    if half == "1":
        return half_closed()
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=20),
                        server_hostname="127.0.0.1", session=session)
    s.sendall(request.encode())
    got = b""
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        got += data
    return s, got
s, got = once()
line = [s.selected_alpn_protocol() or "none", str(len(got)), got[:15].decode()]
if resume == "1":
    s2, _ = once(s.session)
    line.append("resumed" if s2.session_reused else "full")
print(" ".join(line))
)";
  testutil::CommandResult r = testutil::RunCommand(
      {"/usr/bin/python3", "-c", script, std::to_string(port), ca_file, options.offer, request,
       options.cert, options.key, options.half_close ? "1" : "0", options.resume ? "1" : "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::istringstream out(r.out);
  TlsClientResult result;
  if (!(out >> result.alpn >> result.received >> result.head)) return std::nullopt;
  out >> result.resumed;
  return result;
}

// A TerminatedListener that keeps each dispatched connection (with its kind)
// for the test to serve.
class TerminatorServer {
 public:
  explicit TerminatorServer(std::shared_ptr<SSL_CTX> context,
                            absl::Duration first_bytes_timeout = absl::Seconds(10))
      : listener_(std::make_unique<TerminatedListener>(
            std::move(context),
            [this](int plain, bool http2) {
              std::lock_guard<std::mutex> lock(mu_);
              dispatched_.push_back({plain, http2});
              cv_.notify_all();
            },
            first_bytes_timeout)) {}
  ~TerminatorServer() {
    listener_.reset();  // no dispatch runs past here
    for (auto& [fd, http2] : dispatched_) close(fd);
  }
  int port() const { return listener_->port(); }
  const TlsTerminator& terminator() const { return *listener_->terminator(); }

  // The next dispatched connection (made blocking), or -1 after 20 s.
  int Next(bool* http2) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(20),
                      [&] { return taken_ < dispatched_.size(); })) {
      return -1;
    }
    auto [fd, kind] = dispatched_[taken_++];
    *http2 = kind;
    fcntl(fd, F_SETFL, 0);
    return fd;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<int, bool>> dispatched_;  // guarded by mu_
  size_t taken_ = 0;                              // guarded by mu_
  std::unique_ptr<TerminatedListener> listener_;
};

// What the server side of one dispatched connection saw.
struct Served {
  bool http2 = false;
  std::string request;
  bool saw_end = false;  // the client's end (a half-close) arrived
};

// Serves `connections` dispatched connections in turn: reads `request_bytes`
// (or, with `until_end`, until the client's end), sends `reply` and closes
// its end (a shutdown: the fd stays owned by the server).
std::thread AnswerNext(TerminatorServer& server, std::vector<Served>* served, size_t request_bytes,
                       std::string reply, bool until_end = false, int connections = 1) {
  return std::thread(
      [&server, served, request_bytes, reply = std::move(reply), until_end, connections] {
        for (int i = 0; i < connections; ++i) {
          Served one;
          const int fd = server.Next(&one.http2);
          if (fd < 0) return;
          char buf[4096];
          while (until_end || one.request.size() < request_bytes) {
            const ssize_t n = read(fd, buf, sizeof(buf));
            if (n == 0) one.saw_end = true;
            if (n <= 0) break;
            one.request.append(buf, static_cast<size_t>(n));
          }
          for (size_t off = 0; off < reply.size();) {
            const ssize_t n = send(fd, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
            if (n <= 0) break;
            off += static_cast<size_t>(n);
          }
          shutdown(fd, SHUT_RDWR);
          served->push_back(std::move(one));
        }
      });
}

class TlsTerminatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << pki_.error();
    server_ = pki_.Issue("server");
    client_ = pki_.Issue("client");
    ASSERT_TRUE(pki_.ok()) << pki_.error();
  }
  std::shared_ptr<SSL_CTX> Context(const std::string& trusted_ca = "") {
    ServerTlsOptions options;
    options.cert_file = server_.cert;
    options.key_file = server_.key;
    options.trusted_ca_file = trusted_ca;
    auto context = MakeServerSslContext(options);
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : nullptr;
  }
  // One exchange: a Python client sends `request` while `server` answers its
  // next `connections` connections with `reply` (after the request, or with
  // `until_end` after the client's end).
  std::optional<TlsClientResult> Exchange(TerminatorServer& server, std::vector<Served>* served,
                                          const std::string& request, const std::string& reply,
                                          const TlsClientOptions& options, bool until_end = false,
                                          int connections = 1) {
    std::thread answer = AnswerNext(server, served, request.size(), reply, until_end, connections);
    std::optional<TlsClientResult> result =
        TlsClient(server.port(), pki_.ca_file(), request, options);
    answer.join();
    return result;
  }

  TestPki pki_;
  CertKeyFiles server_, client_;
};

TEST_F(TlsTerminatorTest, DispatchesByTheDecryptedBytesAndDeliversAllBeforeClosing) {
  TerminatorServer server(Context());
  ASSERT_NE(server.port(), 0);

  // An HTTP/1.1 client (curl's offer gets http/1.1); a 3 MB answer, more than
  // the terminator buffers, arrives whole even though the server closes
  // right after writing it.
  const std::string get = "GET /metrics HTTP/1.1\r\n\r\n";
  const std::string big = "HTTP/1.1 200 OK\r\n" + std::string(3'000'000, 'm');
  std::vector<Served> served;
  std::optional<TlsClientResult> http =
      Exchange(server, &served, get, big, Offering("h2,http/1.1"));
  ASSERT_TRUE(http.has_value());
  EXPECT_EQ(http->alpn, "http/1.1");
  EXPECT_EQ(http->received, big.size());
  EXPECT_EQ(http->head, "HTTP/1.1");
  ASSERT_EQ(served.size(), 1u);
  EXPECT_FALSE(served[0].http2);
  EXPECT_EQ(served[0].request, get);

  // A gRPC client offers only h2 and gets it; the preface marks it HTTP/2.
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  std::optional<TlsClientResult> grpc =
      Exchange(server, &served, preface, "h2-reply", Offering("h2"));
  ASSERT_TRUE(grpc.has_value());
  EXPECT_EQ(grpc->alpn, "h2");
  EXPECT_EQ(grpc->head, "h2-reply");
  ASSERT_EQ(served.size(), 2u);
  EXPECT_TRUE(served[1].http2);
  EXPECT_EQ(served[1].request, preface);

  // gRPC core's offer; and no ALPN at all.
  grpc = Exchange(server, &served, preface, "core", Offering("grpc-exp,h2"));
  ASSERT_TRUE(grpc.has_value());
  EXPECT_EQ(grpc->alpn, "h2");
  http = Exchange(server, &served, get, "none", TlsClientOptions());
  ASSERT_TRUE(http.has_value());
  EXPECT_EQ(http->alpn, "none");
  EXPECT_EQ(http->head, "none");
  ASSERT_EQ(served.size(), 4u);
  EXPECT_FALSE(served[3].http2);
}

// A client that half-closes after its request (HTTP/1.0 scripts, socat)
// still gets the answer: the server side sees the end of the request as a
// half-close, as it would over plain TCP.
TEST_F(TlsTerminatorTest, AHalfClosedClientStillGetsTheAnswer) {
  TerminatorServer server(Context());
  const std::string get = "GET /health HTTP/1.0\r\n\r\n";
  std::vector<Served> served;
  TlsClientOptions half_close;
  half_close.half_close = true;
  std::optional<TlsClientResult> http =
      Exchange(server, &served, get, "HTTP/1.0 200 OK\r\n\r\nok", half_close, /*until_end=*/true);
  ASSERT_EQ(served.size(), 1u);
  EXPECT_TRUE(served[0].saw_end);
  EXPECT_EQ(served[0].request, get);
  ASSERT_TRUE(http.has_value());
  EXPECT_EQ(http->head, "HTTP/1.0");
  EXPECT_EQ(http->received, 21u);
}

// With client certificates required, a client resuming its session (a TLS
// 1.3 ticket) is served, and resumes rather than doing a full handshake.
TEST_F(TlsTerminatorTest, MutualTlsClientsCanResumeTheirSession) {
  TerminatorServer server(Context(pki_.ca_file()));
  const std::string get = "GET / HTTP/1.1\r\n\r\n";
  std::vector<Served> served;
  TlsClientOptions options;
  options.cert = client_.cert;
  options.key = client_.key;
  options.resume = true;
  std::optional<TlsClientResult> result =
      Exchange(server, &served, get, "hello-again", options, /*until_end=*/false, 2);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->head, "hello-again");
  EXPECT_EQ(result->resumed, "resumed");
  EXPECT_EQ(served.size(), 2u);
}

// A connection that never finishes its handshake is closed at the deadline
// and no longer counts as waiting.
TEST_F(TlsTerminatorTest, AClientSilentPastTheDeadlineIsClosed) {
  TerminatorServer server(Context(), absl::Seconds(2));
  const int fd = testutil::ConnectTcp(server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(testutil::WaitFor([&] { return server.terminator().Waiting() == 1; },
                                std::chrono::seconds(20)));
  // Nothing sent: the terminator closes it (EOF here), whatever the wait.
  char byte;
  timeval tv{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_EQ(read(fd, &byte, 1), 0);
  close(fd);
  EXPECT_TRUE(testutil::WaitFor([&] { return server.terminator().Waiting() == 0; },
                                std::chrono::seconds(20)));
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
