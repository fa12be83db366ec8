// The gateway in process (proxy::tcp::Gateway) against test-local TCP
// servers: relay correctness across loops, half-close, flow control, dial
// timeout failover and drain.

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
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

using testutil::BlackHole;
using testutil::ConnectTcp;
using testutil::EchoHandler;
using testutil::ReadN;
using testutil::ReadToEof;
using testutil::SendAll;
using testutil::TcpServer;
using testutil::WaitFor;
using testutil::WaitUntilStalled;

std::unique_ptr<Gateway> StartGateway(std::vector<std::string> endpoints, int loops = 2,
                                      absl::Duration dial_timeout = absl::Seconds(1),
                                      absl::Duration drain_timeout = absl::Seconds(10)) {
  GatewayOptions options;
  options.endpoints.listen = common::HostPort{"127.0.0.1", 0};
  options.endpoints.static_endpoints = std::move(endpoints);
  options.loops = loops;
  options.dial_timeout = dial_timeout;
  options.drain_timeout = drain_timeout;
  auto gateway = std::make_unique<Gateway>(std::move(options));
  absl::Status s = gateway->Start();
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(gateway) : nullptr;
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(GatewayRelay, ManyConcurrentConnectionsAcrossLoops) {
  TcpServer upstream(EchoHandler);
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()}, /*loops=*/3);
  ASSERT_NE(gw, nullptr);
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 24; ++i) {
    clients.emplace_back([&, i] {
      const std::string payload = RandomBytes(300 << 10, i);
      int fd = ConnectTcp(gw->listen_port());
      if (fd < 0) return;
      std::thread writer([&] {
        SendAll(fd, payload);
        shutdown(fd, SHUT_WR);
      });
      std::string echoed = ReadToEof(fd);
      writer.join();
      close(fd);
      if (echoed == payload) ++ok;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 24);
  EXPECT_EQ(gw->Drain(), 0u);
}

TEST(GatewayRelay, UpstreamHalfCloseLetsTheClientKeepSending) {
  std::atomic<bool> got_all{false};
  TcpServer upstream([&](int fd) {
    SendAll(fd, "banner");
    shutdown(fd, SHUT_WR);
    got_all = ReadToEof(fd) == "client data after EOF";
  });
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ReadToEof(fd), "banner");  // EOF arrives after the banner
  ASSERT_TRUE(SendAll(fd, "client data after EOF"));
  shutdown(fd, SHUT_WR);
  EXPECT_TRUE(WaitFor([&] { return got_all.load(); }));
  close(fd);
}

TEST(GatewayRelay, SlowClientBackpressuresTheUpstream) {
  constexpr size_t kTotal = 64 << 20;
  std::atomic<size_t> sent{0};
  TcpServer upstream([&](int fd) {
    const std::string chunk(64 << 10, 'z');
    while (sent < kTotal) {
      ssize_t n = send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  });
  std::unique_ptr<Gateway> gw = StartGateway({upstream.addr()});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  // The client reads nothing: once the gateway's buffer passes the high
  // watermark it stops reading the upstream, whose sends then block. Without
  // flow control the gateway would swallow all 64 MiB.
  EXPECT_TRUE(WaitUntilStalled(sent));
  EXPECT_LT(sent.load(), kTotal);
  EXPECT_EQ(ReadN(fd, kTotal, std::chrono::seconds(30)).size(), kTotal);
  close(fd);
}

TEST(GatewayRelay, BlackHoledEndpointTimesOutAndTheNextIsUsed) {
  BlackHole hole;
  TcpServer upstream(EchoHandler);
  std::unique_ptr<Gateway> gw = StartGateway({hole.addr(), upstream.addr()}, /*loops=*/1,
                                             /*dial_timeout=*/absl::Milliseconds(200));
  ASSERT_NE(gw, nullptr);
  for (int i = 0; i < 3; ++i) {
    int fd = ConnectTcp(gw->listen_port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "ping"));
    EXPECT_EQ(ReadN(fd, 4), "ping") << "connection " << i;
    close(fd);
  }
  EXPECT_NE(gw->metrics().RenderText().find("keel_gateway_dial_failures_total{endpoint=\"" +
                                            hole.addr() + "\"} 1"),
            std::string::npos)
      << gw->metrics().RenderText();
}

TEST(GatewayRelay, NoReachableEndpointClosesTheClient) {
  const int dead = testutil::FreePort();
  std::unique_ptr<Gateway> gw = StartGateway({"127.0.0.1:" + std::to_string(dead)});
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  SendAll(fd, "hello");
  EXPECT_EQ(ReadToEof(fd), "");
  close(fd);
}

TEST(GatewayRelay, DownEndpointIsReprobedAndReactivated) {
  const int port = testutil::FreePort();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  std::unique_ptr<Gateway> gw = StartGateway({addr});
  ASSERT_NE(gw, nullptr);
  const std::string up = "keel_gateway_endpoint_up{endpoint=\"" + addr + "\"} ";
  auto metrics_have = [&](const std::string& line) {
    return gw->metrics().RenderText().find(line) != std::string::npos;
  };
  EXPECT_TRUE(metrics_have(up + "1"));
  int fd = ConnectTcp(gw->listen_port());  // refused upstream: closed at once
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ReadToEof(fd), "");
  close(fd);
  EXPECT_TRUE(WaitFor([&] { return metrics_have(up + "0"); })) << gw->metrics().RenderText();

  // The re-probe (backoff from 100 ms) finds it back without any client.
  TcpServer upstream(EchoHandler, port);
  EXPECT_TRUE(WaitFor([&] { return metrics_have(up + "1"); }, std::chrono::seconds(30)))
      << gw->metrics().RenderText();
  fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "back"));
  EXPECT_EQ(ReadN(fd, 4), "back");
  close(fd);
}

TEST(GatewayRelay, DrainClosesWhatOutlivesTheTimeout) {
  TcpServer upstream(EchoHandler);
  std::unique_ptr<Gateway> gw =
      StartGateway({upstream.addr()}, /*loops=*/2, absl::Seconds(1), absl::Milliseconds(100));
  ASSERT_NE(gw, nullptr);
  int fd = ConnectTcp(gw->listen_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "x"));
  ASSERT_EQ(ReadN(fd, 1), "x");
  EXPECT_EQ(gw->Drain(), 1u);
  EXPECT_EQ(ReadToEof(fd), "");
  close(fd);
  EXPECT_FALSE(testutil::CanConnect("127.0.0.1", gw->listen_port()));
}

}  // namespace
}  // namespace keel::proxy::tcp
