#include "proxy/tcp/host_resolver.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/testutil/process.h"

namespace keel::proxy::tcp {
namespace {

constexpr absl::Duration kPatience = absl::Seconds(30);  // a loaded 2-core box

std::unique_ptr<EventLoop> StartedLoop() {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create("test");
  if (!loop.ok()) return nullptr;
  (*loop)->Start();
  return *std::move(loop);
}

// Runs everything posted to `loop` so far.
void Flush(EventLoop& loop) {
  absl::Notification flushed;
  loop.Post([&] { flushed.Notify(); });
  ASSERT_TRUE(flushed.WaitForNotificationWithTimeout(kPatience));
}

TEST(HostResolver, DeliversAnswersOnTheLoopInRequestOrder) {
  std::unique_ptr<EventLoop> loop = StartedLoop();
  ASSERT_NE(loop, nullptr);
  HostResolver resolver(*loop, [](const common::HostPort& hp) {
    return hp.host == "bad.test" ? absl::StatusOr<std::vector<SockAddr>>(absl::NotFoundError("no"))
                                 : ResolveHostPort({"127.0.0.1", hp.port});
  });
  absl::Notification done;
  bool on_loop = false;
  HostResolver::Results got;
  resolver.Resolve({{"a.test", 2379}, {"bad.test", 2379}, {"b.test", 2380}},
                   [&](HostResolver::Results results) {
                     on_loop = loop->IsLoopThread();
                     got = std::move(results);
                     done.Notify();
                   });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kPatience));
  EXPECT_TRUE(on_loop);
  ASSERT_EQ(got.size(), 3u);
  ASSERT_TRUE(got[0].ok()) << got[0].status();
  EXPECT_EQ(got[0]->front().ToString(), "127.0.0.1:2379");
  EXPECT_EQ(got[1].status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(got[2].ok()) << got[2].status();
  EXPECT_EQ(got[2]->front().ToString(), "127.0.0.1:2380");
  resolver.Stop();
  loop->Stop();
}

// A DNS server that answers only when the test releases it.
struct Gate {
  absl::Notification entered;
  absl::Notification release;
};

TEST(HostResolver, LoopRunsWhileALookupBlocksAndStopDoesNotWaitForIt) {
  std::unique_ptr<EventLoop> loop = StartedLoop();
  ASSERT_NE(loop, nullptr);
  auto gate = std::make_shared<Gate>();
  std::weak_ptr<Gate> gate_alive = gate;
  std::atomic<int> delivered{0};
  {
    HostResolver resolver(*loop, [gate](const common::HostPort& hp) {
      if (!gate->entered.HasBeenNotified()) gate->entered.Notify();
      gate->release.WaitForNotification();
      return ResolveHostPort({"127.0.0.1", hp.port});
    });
    resolver.Resolve({{"slow.test", 2379}}, [&](HostResolver::Results) { ++delivered; });
    resolver.Resolve({{"queued.test", 2379}}, [&](HostResolver::Results) { ++delivered; });
    ASSERT_TRUE(gate->entered.WaitForNotificationWithTimeout(kPatience));

    // The lookup is stuck, yet the loop serves other work.
    Flush(*loop);

    // Stop returns with the lookup still blocked (were it to wait, this test
    // would hang: the gate opens only below).
    resolver.Stop();
  }
  gate->release.Notify();
  gate.reset();
  // The worker finishes its lookup, drops the answer and exits, which frees
  // the resolve function and with it the gate.
  ASSERT_TRUE(testutil::WaitFor([&] { return gate_alive.expired(); }, std::chrono::seconds(30)));
  Flush(*loop);
  EXPECT_EQ(delivered.load(), 0);  // neither the stopped lookup nor the queued one answered
  loop->Stop();
}

}  // namespace
}  // namespace keel::proxy::tcp
