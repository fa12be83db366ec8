#include "namespace/key_prefix.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace keel::ns {
namespace {

using std::string_literals::operator""s;

TEST(KeyPrefixTest, PrefixEndIncrementsTheLastByte) {
  EXPECT_EQ(KeyPrefix::PrefixEnd("ns/"), "ns0");
  EXPECT_EQ(KeyPrefix::PrefixEnd("a"), "b");
  EXPECT_EQ(KeyPrefix::PrefixEnd("a\x00"s), "a\x01"s);
  EXPECT_EQ(KeyPrefix::PrefixEnd("a\xfe"), "a\xff");
}

TEST(KeyPrefixTest, PrefixEndCutsOverflowedBytes) {
  // Scenario 41: etcd's proxy computes "b\x00", which includes the key "b".
  EXPECT_EQ(KeyPrefix::PrefixEnd("a\xff"), "b");
  EXPECT_EQ(KeyPrefix::PrefixEnd("a\xff\xff"), "b");
  const std::string a_ff = "a\xff";
  EXPECT_EQ(KeyPrefix::PrefixEnd(a_ff + "b\xff"), a_ff + "c");
  EXPECT_EQ(KeyPrefix::PrefixEnd("\x01\xff"), "\x02");
}

TEST(KeyPrefixTest, PrefixEndOfAllFfOrEmptyIsUnbounded) {
  EXPECT_EQ(KeyPrefix::PrefixEnd("\xff"), "\x00"s);
  EXPECT_EQ(KeyPrefix::PrefixEnd("\xff\xff\xff"), "\x00"s);
  EXPECT_EQ(KeyPrefix::PrefixEnd(""), "\x00"s);
}

TEST(KeyPrefixTest, KeyIsPrefixed) {
  KeyPrefix p("ns/");
  EXPECT_EQ(p.prefix(), "ns/");
  EXPECT_EQ(p.end(), "ns0");
  EXPECT_EQ(p.Key("k"), "ns/k");
  EXPECT_EQ(p.Key(""), "ns/");
  EXPECT_EQ(p.Key("\x00"s), "ns/\x00"s);
  EXPECT_EQ(p.Key("\xff"), "ns/\xff");
}

TEST(KeyPrefixTest, RangeEndRules) {
  KeyPrefix p("ns/");
  EXPECT_EQ(p.RangeEnd(""), "");                       // single key
  EXPECT_EQ(p.RangeEnd("\x00"s), "ns0");               // every key >= key
  EXPECT_EQ(p.RangeEnd("c"), "ns/c");                  // [key, c)
  EXPECT_EQ(p.RangeEnd("\x00\x00"s), "ns/\x00\x00"s);  // only the single byte is special
  EXPECT_EQ(p.RangeEnd("\x01"), "ns/\x01");
  EXPECT_EQ(p.RangeEnd("\xff"), "ns/\xff");
}

TEST(KeyPrefixTest, RangeEndZeroAtTheTopOfTheKeySpace) {
  KeyPrefix all_ff("\xff\xff");
  EXPECT_EQ(all_ff.end(), "\x00"s);
  EXPECT_EQ(all_ff.RangeEnd("\x00"s), "\x00"s);
  KeyPrefix tail_ff("a\xff");
  EXPECT_EQ(tail_ff.RangeEnd("\x00"s), "b");
  EXPECT_EQ(tail_ff.RangeEnd("z"), "a\xffz");
}

TEST(KeyPrefixTest, StripOnlyKeysInsideThePrefix) {
  KeyPrefix p("ns/");
  EXPECT_EQ(p.Strip("ns/k"), "k");
  EXPECT_EQ(p.Strip("ns/"), "");
  EXPECT_EQ(p.Strip("ns/ns/x"), "ns/x");
  EXPECT_EQ(p.Strip("ns"), std::nullopt);
  EXPECT_EQ(p.Strip("nt/k"), std::nullopt);
  EXPECT_EQ(p.Strip("k"), std::nullopt);
  EXPECT_EQ(p.Strip(""), std::nullopt);
  EXPECT_TRUE(p.Contains("ns/a"));
  EXPECT_FALSE(p.Contains("n"));
}

TEST(KeyPrefixTest, StripHandlesBinaryPrefixes) {
  KeyPrefix p("a\xff");
  EXPECT_EQ(p.Strip(p.prefix() + "k"), "k");
  EXPECT_EQ(p.Strip("b"), std::nullopt);
  KeyPrefix z("\x00"s);
  EXPECT_EQ(z.Strip("\x00k"s), "k");
  EXPECT_EQ(z.Strip("k"), std::nullopt);
  EXPECT_EQ(z.end(), "\x01");
}

TEST(KeyPrefixTest, FilterDropsForeignKeysAndKeepsOrder) {
  KeyPrefix p("ns/");
  std::vector<std::string> keys = {"ns/b", "other/x", "ns/a", "ns", "ns/"};
  EXPECT_EQ(p.Filter(keys), (std::vector<std::string>{"b", "a", ""}));
  EXPECT_TRUE(p.Filter({}).empty());
  EXPECT_TRUE(p.Filter({"x", "y"}).empty());
}

}  // namespace
}  // namespace keel::ns
