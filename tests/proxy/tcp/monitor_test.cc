#include "proxy/tcp/monitor.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "gtest/gtest.h"
#include "tests/testutil/process.h"

namespace keel::proxy::tcp {
namespace {

// A DNS server that answers the first lookup of member.test (start-up) at
// once and every later one only when the test releases it.
struct SlowDns {
  absl::Notification blocked;  // a re-resolution is waiting
  absl::Notification release;
  std::atomic<int> calls{0};
};

TEST(Monitor, KeepsHandlingDialReportsWhileANameResolvesSlowly) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create("monitor");
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto dns = std::make_shared<SlowDns>();
  MonitorOptions options;
  options.initial_backoff = absl::Milliseconds(1);  // re-probe (and re-resolve) at once
  options.resolve = [dns](const common::HostPort& hp) {
    if (hp.host == "member.test" && dns->calls++ > 0) {
      if (!dns->blocked.HasBeenNotified()) dns->blocked.Notify();
      dns->release.WaitForNotification();
    }
    return ResolveHostPort({"127.0.0.1", hp.port});
  };
  // Nothing listens on these ports: only dial reports matter here.
  Endpoint named, literal;
  named.addr = {"member.test", testutil::FreePort()};
  literal.addr = {"127.0.0.1", testutil::FreePort()};
  absl::Mutex mu;
  std::shared_ptr<const Routes> published;
  common::MetricsRegistry metrics;
  auto monitor = std::make_unique<Monitor>(
      **loop, metrics, common::Logger("monitor_test"), options,
      std::vector<Endpoint>{named, literal}, [&](std::shared_ptr<const Routes> routes) {
        absl::MutexLock lock(&mu);
        published = std::move(routes);
      });
  ASSERT_EQ(monitor->InitialRoutes()->targets.size(), 2u);
  (*loop)->Start();
  monitor->Start();

  // The named endpoint goes down; its re-probe re-resolves the name, which hangs.
  monitor->OnDialFailure(named, absl::UnavailableError("connection refused"));
  ASSERT_TRUE(dns->blocked.WaitForNotificationWithTimeout(absl::Seconds(30)));

  // The monitor loop still takes the other endpoint's failure and publishes.
  monitor->OnDialFailure(literal, absl::UnavailableError("connection refused"));
  EXPECT_TRUE(testutil::WaitFor(
      [&] {
        absl::MutexLock lock(&mu);
        if (published == nullptr) return false;
        const std::vector<Endpoint>& endpoints = published->set->endpoints;
        for (size_t i = 0; i < endpoints.size(); ++i) {
          if (endpoints[i] == literal) return !published->set->active[i];
        }
        return false;
      },
      std::chrono::seconds(30)));
  EXPECT_FALSE(monitor->AnyActive());

  // Stop returns with the lookup still hanging (otherwise this test hangs).
  monitor->Stop();
  (*loop)->Stop();
  monitor.reset();
  dns->release.Notify();
}

}  // namespace
}  // namespace keel::proxy::tcp
