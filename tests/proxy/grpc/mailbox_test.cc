// The relay loops' Mailbox (proxy/grpc/mailbox.h): a burst of posts from
// another thread wakes the reader once, the reader's own posts wake nobody,
// events are taken in order, the newest can be taken out of turn only when
// asked for, and a closed mailbox refuses posts.

#include "proxy/grpc/mailbox.h"

#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace keel::proxy::grpcproxy {
namespace {

TEST(MailboxTest, ABurstFromAnotherThreadWakesTheReaderOnce) {
  std::atomic<int> wakes{0};
  Mailbox<int> mailbox([&wakes] { ++wakes; });
  mailbox.SetReaderThread();
  std::thread poster([&] {
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(mailbox.Post(i));
  });
  poster.join();
  EXPECT_EQ(wakes.load(), 1);
  std::vector<int> taken;
  ASSERT_TRUE(mailbox.Take(taken));
  EXPECT_EQ(taken, (std::vector<int>{0, 1, 2}));
  EXPECT_FALSE(mailbox.Take(taken));
  EXPECT_TRUE(taken.empty());
  // Emptied, the next burst wakes it again.
  std::thread again([&] { mailbox.Post(3); });
  again.join();
  EXPECT_EQ(wakes.load(), 2);
}

TEST(MailboxTest, TheReadersOwnPostsWakeNobody) {
  std::atomic<int> wakes{0};
  Mailbox<int> mailbox([&wakes] { ++wakes; });
  mailbox.SetReaderThread();
  mailbox.Post(1);
  mailbox.Post(2);
  EXPECT_EQ(wakes.load(), 0);
  EXPECT_FALSE(mailbox.Empty());
}

TEST(MailboxTest, TheNewestIsTakenOutOfTurnOnlyWhenItMatches) {
  Mailbox<int> mailbox([] {});
  mailbox.SetReaderThread();
  for (int i : {1, 2, 3}) mailbox.Post(i);
  EXPECT_EQ(mailbox.TakeNewestIf([](int e) { return e == 2; }), std::nullopt);
  EXPECT_EQ(mailbox.TakeNewestIf([](int e) { return e == 3; }), std::optional<int>(3));
  std::vector<int> taken;
  ASSERT_TRUE(mailbox.Take(taken));
  EXPECT_EQ(taken, (std::vector<int>{1, 2}));
  EXPECT_EQ(mailbox.TakeNewestIf([](int) { return true; }), std::nullopt);
}

TEST(MailboxTest, AClosedMailboxRefusesPostsAndKeepsWhatCameBefore) {
  std::atomic<int> wakes{0};
  Mailbox<int> mailbox([&wakes] { ++wakes; });
  mailbox.Post(1);  // no reader thread set: this one wakes
  mailbox.Close();
  EXPECT_FALSE(mailbox.Post(2));
  EXPECT_EQ(wakes.load(), 1);
  std::vector<int> taken;
  ASSERT_TRUE(mailbox.Take(taken));
  EXPECT_EQ(taken, (std::vector<int>{1}));
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
