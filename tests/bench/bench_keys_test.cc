#include <set>

#include "bench/keys.h"
#include "gtest/gtest.h"

namespace keel::bench {
namespace {

TEST(BenchKeys, VarintMatchesGoPutVarint) {
  std::string out;
  AppendVarint(0, &out);
  EXPECT_EQ(out, std::string(1, '\0'));
  out.clear();
  AppendVarint(1, &out);  // zig-zag: 1 -> 2
  EXPECT_EQ(out, "\x02");
  out.clear();
  AppendVarint(-1, &out);  // zig-zag: -1 -> 1
  EXPECT_EQ(out, "\x01");
  out.clear();
  AppendVarint(64, &out);  // 128 -> 0x80 0x01
  EXPECT_EQ(out, std::string("\x80\x01", 2));
}

TEST(BenchKeys, KeysHaveTheRequestedSize) {
  KeyGenerator gen(/*key_size=*/8, /*key_space_size=*/100, /*sequential=*/false, /*seed=*/1);
  for (uint64_t i = 0; i < 50; ++i) EXPECT_EQ(gen.Next(i).size(), 8u);
  KeyGenerator tiny(1, 1000, true, 1);
  EXPECT_EQ(tiny.Next(999).size(), 1u);
}

TEST(BenchKeys, SequentialKeysWrapAroundTheKeySpace) {
  KeyGenerator gen(8, 3, /*sequential=*/true, 1);
  EXPECT_EQ(gen.Next(0), gen.KeyAt(0));
  EXPECT_EQ(gen.Next(1), gen.KeyAt(1));
  EXPECT_EQ(gen.Next(3), gen.KeyAt(0));
  EXPECT_NE(gen.KeyAt(0), gen.KeyAt(1));
}

TEST(BenchKeys, RandomKeysStayInTheKeySpaceAndAreSeeded) {
  KeyGenerator a(8, 10, false, 42);
  KeyGenerator b(8, 10, false, 42);
  std::set<std::string> space;
  for (uint64_t i = 0; i < 10; ++i) space.insert(a.KeyAt(i));
  std::set<std::string> seen;
  for (uint64_t i = 0; i < 500; ++i) {
    const std::string k = a.Next(i);
    EXPECT_EQ(k, b.Next(i));
    EXPECT_TRUE(space.count(k)) << i;
    seen.insert(k);
  }
  EXPECT_EQ(seen.size(), 10u);  // 500 draws over 10 keys hit them all
}

TEST(BenchKeys, KeySpaceOfOneIsOneKey) {
  KeyGenerator gen(8, 1, false, 7);
  EXPECT_EQ(gen.Next(0), gen.Next(1));
}

TEST(BenchKeys, MakeValue) {
  EXPECT_EQ(MakeValue(4), "xxxx");
  EXPECT_EQ(MakeValue(6, "ab"), "abxxxx");
  EXPECT_EQ(MakeValue(2, "abcd"), "ab");
}

}  // namespace
}  // namespace keel::bench
