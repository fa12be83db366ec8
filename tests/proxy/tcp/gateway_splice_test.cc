// The gateway's bulk path (splice(2) through a per-direction pipe once a
// direction streams) against test-local TCP servers: every byte arrives in
// order both ways, a slow reader back-pressures the sender, half-close after
// bulk, a connection falls back to small messages after bulk, and a client
// gone mid-bulk ends only its own connection.

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "proxy/tcp/gateway.h"
#include "tests/integration/gateway_helpers.h"
#include "tests/testutil/process.h"

namespace keel::proxy::tcp {
namespace {

using testutil::ConnectTcp;
using testutil::EchoHandler;
using testutil::ReadN;
using testutil::ReadToEof;
using testutil::SendAll;
using testutil::TcpServer;
using testutil::WaitFor;
using testutil::WaitUntilStalled;

constexpr size_t kBulk = 64 << 20;

std::unique_ptr<Gateway> StartGateway(std::vector<std::string> endpoints) {
  GatewayOptions options;
  options.endpoints.listen = common::HostPort{"127.0.0.1", 0};
  options.endpoints.static_endpoints = std::move(endpoints);
  options.loops = 2;
  auto gateway = std::make_unique<Gateway>(std::move(options));
  absl::Status s = gateway->Start();
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(gateway) : nullptr;
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += sizeof(uint64_t)) {
    const uint64_t word = rng();
    std::memcpy(s.data() + i, &word, std::min(sizeof(word), n - i));
  }
  return s;
}

// Index of the first differing byte, or -1 if `a` == `b` (shorter counts).
int64_t FirstDifference(const std::string& a, const std::string& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

TEST(GatewaySplice, BulkBothWaysAtOnceKeepsEveryByte) {
  const std::string up_payload = RandomBytes(kBulk, 1);
  const std::string down_payload = RandomBytes(kBulk, 2);
  std::string upstream_got;
  std::atomic<bool> upstream_done{false};
  TcpServer upstream([&](int fd) {
    std::thread writer([&] {
      SendAll(fd, down_payload);
      shutdown(fd, SHUT_WR);
    });
    upstream_got = ReadToEof(fd, std::chrono::seconds(30));
    writer.join();
    upstream_done = true;
  });
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  std::thread writer([&] {
    SendAll(fd, up_payload);
    shutdown(fd, SHUT_WR);
  });
  const std::string client_got = ReadToEof(fd, std::chrono::seconds(30));
  writer.join();
  close(fd);
  EXPECT_EQ(gw->Drain(), 0u);  // both directions ended: the connection is gone
  EXPECT_EQ(client_got.size(), kBulk);
  EXPECT_EQ(FirstDifference(client_got, down_payload), -1);
  ASSERT_TRUE(WaitFor([&] { return upstream_done.load(); }, std::chrono::seconds(30)));
  EXPECT_EQ(upstream_got.size(), kBulk);
  EXPECT_EQ(FirstDifference(upstream_got, up_payload), -1);
}

TEST(GatewaySplice, SlowReaderBackpressuresBulkThenHalfCloseStillWorks) {
  const std::string payload = RandomBytes(kBulk, 3);
  std::atomic<size_t> sent{0};
  std::atomic<bool> got_reply{false};
  TcpServer upstream([&](int fd) {
    size_t off = 0;
    while (off < payload.size()) {
      const size_t chunk = std::min<size_t>(256 << 10, payload.size() - off);
      ssize_t n = send(fd, payload.data() + off, chunk, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
      sent = off;
    }
    shutdown(fd, SHUT_WR);
    got_reply = ReadToEof(fd, std::chrono::seconds(30)) == "reply after the bulk";
  });
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  // Read nothing until the upstream's sends stall: the gateway must stop
  // taking bytes it cannot deliver.
  EXPECT_TRUE(WaitUntilStalled(sent));
  EXPECT_LT(sent.load(), kBulk);
  // Then a slow reader: small reads, so the gateway's sink keeps filling up.
  std::string got;
  char buf[4096];
  while (got.size() < kBulk) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 30000) <= 0) break;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got.size(), kBulk);
  EXPECT_EQ(FirstDifference(got, payload), -1);
  // The upstream's EOF follows the bulk; the other direction stays open.
  EXPECT_EQ(ReadToEof(fd), "");
  ASSERT_TRUE(SendAll(fd, "reply after the bulk"));
  shutdown(fd, SHUT_WR);
  EXPECT_TRUE(WaitFor([&] { return got_reply.load(); }, std::chrono::seconds(30)));
  close(fd);
}

TEST(GatewaySplice, SmallMessagesAfterBulkOnTheSameConnection) {
  TcpServer upstream(EchoHandler);
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  for (int burst = 0; burst < 3; ++burst) {
    const std::string bulk = RandomBytes(8 << 20, 10 + burst);
    std::thread writer([&] { SendAll(fd, bulk); });
    const std::string echoed = ReadN(fd, bulk.size(), std::chrono::seconds(30));
    writer.join();
    ASSERT_EQ(echoed.size(), bulk.size()) << "burst " << burst;
    EXPECT_EQ(FirstDifference(echoed, bulk), -1) << "burst " << burst;
    for (int i = 0; i < 100; ++i) {
      const std::string msg = "message " + std::to_string(burst) + "/" + std::to_string(i);
      ASSERT_TRUE(SendAll(fd, msg));
      ASSERT_EQ(ReadN(fd, msg.size()), msg);
    }
  }
  shutdown(fd, SHUT_WR);
  EXPECT_EQ(ReadToEof(fd), "");
  close(fd);
}

TEST(GatewaySplice, ClientGoneMidBulkEndsTheConnectionAndNothingElse) {
  // A client that resets the connection while the gateway splices to it: the
  // splice error ends that connection (closing the upstream side too), and
  // the gateway goes on serving. (This process does not ignore SIGPIPE.)
  std::atomic<bool> upstream_saw_end{false};
  TcpServer upstream([&](int fd) {
    const std::string chunk = RandomBytes(1 << 20, 4);
    while (send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) > 0) {
    }
    upstream_saw_end = true;
  });
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  for (int i = 0; i < 3; ++i) {
    int fd = ConnectTcp(gw->listen_port());
    ASSERT_GE(fd, 0);
    EXPECT_EQ(ReadN(fd, 8 << 20, std::chrono::seconds(30)).size(), size_t{8} << 20);
    close(fd);  // unread bytes: the gateway's next splice hits a reset peer
    // The gateway closed the upstream side in turn.
    EXPECT_TRUE(WaitFor([&] { return upstream_saw_end.exchange(false); }, std::chrono::seconds(30)))
        << "connection " << i;
  }
  EXPECT_EQ(gw->Drain(), 0u);
}

}  // namespace
}  // namespace keel::proxy::tcp
