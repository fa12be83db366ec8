#include "proxy/tcp/event_loop.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace keel::proxy::tcp {
namespace {

TEST(EventLoop, PostedTasksRunOnTheLoopThreadInOrder) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create("test");
  ASSERT_TRUE(loop.ok()) << loop.status();
  EventLoop& l = **loop;
  l.Start();
  std::vector<int> seen;  // touched only on the loop thread
  std::atomic<bool> on_loop{true};
  constexpr int kPerThread = 1000;
  std::vector<std::thread> posters;
  for (int t = 0; t < 4; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        l.Post([&, t, i] {
          if (!l.IsLoopThread()) on_loop = false;
          seen.push_back(t * kPerThread + i);
        });
      }
    });
  }
  for (auto& p : posters) p.join();
  absl::Notification done;
  l.Post([&] { done.Notify(); });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(on_loop.load());
  EXPECT_FALSE(l.IsLoopThread());
  ASSERT_EQ(seen.size(), 4u * kPerThread);
  // Each poster's tasks keep their order.
  std::vector<int> last(4, -1);
  for (int v : seen) {
    EXPECT_GT(v % kPerThread, last[v / kPerThread]);
    last[v / kPerThread] = v % kPerThread;
  }
  l.Stop();
}

TEST(EventLoop, TasksPostedAfterStopDoNotRun) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create("test");
  ASSERT_TRUE(loop.ok()) << loop.status();
  (*loop)->Start();
  std::atomic<int> ran{0};
  (*loop)->Post([&] { ++ran; });
  (*loop)->Stop();  // runs what was posted before it
  EXPECT_EQ(ran.load(), 1);
  auto owned = std::make_shared<int>(7);
  (*loop)->Post([&, owned] { ++ran; });
  loop->reset();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(owned.use_count(), 1);  // the dropped task released what it held
}

}  // namespace
}  // namespace keel::proxy::tcp
