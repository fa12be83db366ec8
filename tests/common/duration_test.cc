#include "common/duration.h"

#include <string>

#include "gtest/gtest.h"

namespace keel::common {
namespace {

absl::Duration MustParse(const std::string& text) {
  absl::StatusOr<absl::Duration> d = ParseGoDuration(text);
  EXPECT_TRUE(d.ok()) << text << ": " << d.status();
  return d.ok() ? *d : absl::InfiniteDuration();
}

std::string ParseError(const std::string& text) {
  absl::StatusOr<absl::Duration> d = ParseGoDuration(text);
  EXPECT_FALSE(d.ok()) << text << " parsed as " << *d;
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(d.status().message());
}

TEST(ParseGoDuration, SimpleUnits) {
  EXPECT_EQ(MustParse("0"), absl::ZeroDuration());
  EXPECT_EQ(MustParse("+0"), absl::ZeroDuration());
  EXPECT_EQ(MustParse("-0"), absl::ZeroDuration());
  EXPECT_EQ(MustParse("5s"), absl::Seconds(5));
  EXPECT_EQ(MustParse("30s"), absl::Seconds(30));
  EXPECT_EQ(MustParse("1478s"), absl::Seconds(1478));
  EXPECT_EQ(MustParse("-5s"), absl::Seconds(-5));
  EXPECT_EQ(MustParse("+5s"), absl::Seconds(5));
  EXPECT_EQ(MustParse("-0s"), absl::ZeroDuration());
  EXPECT_EQ(MustParse("10ns"), absl::Nanoseconds(10));
  EXPECT_EQ(MustParse("11us"), absl::Microseconds(11));
  EXPECT_EQ(MustParse("12\xC2\xB5s"), absl::Microseconds(12));  // U+00B5 micro sign
  EXPECT_EQ(MustParse("13\xCE\xBCs"), absl::Microseconds(13));  // U+03BC Greek mu
  EXPECT_EQ(MustParse("14ms"), absl::Milliseconds(14));
  EXPECT_EQ(MustParse("15m"), absl::Minutes(15));
  EXPECT_EQ(MustParse("16h"), absl::Hours(16));
  EXPECT_EQ(MustParse("1m0s"), absl::Minutes(1));
}

TEST(ParseGoDuration, FractionsAndComposites) {
  EXPECT_EQ(MustParse("5.0s"), absl::Seconds(5));
  EXPECT_EQ(MustParse("5.6s"), absl::Milliseconds(5600));
  EXPECT_EQ(MustParse("5.s"), absl::Seconds(5));
  EXPECT_EQ(MustParse(".5s"), absl::Milliseconds(500));
  EXPECT_EQ(MustParse("1.0s"), absl::Seconds(1));
  EXPECT_EQ(MustParse("1.00s"), absl::Seconds(1));
  EXPECT_EQ(MustParse("1.004s"), absl::Milliseconds(1004));
  EXPECT_EQ(MustParse("100.00100s"), absl::Milliseconds(100001));
  EXPECT_EQ(MustParse("1.5h"), absl::Minutes(90));
  EXPECT_EQ(MustParse("3h30m"), absl::Hours(3) + absl::Minutes(30));
  EXPECT_EQ(MustParse("10.5s4m"), absl::Minutes(4) + absl::Milliseconds(10500));
  EXPECT_EQ(MustParse("-2m3.4s"), -(absl::Minutes(2) + absl::Milliseconds(3400)));
  EXPECT_EQ(MustParse("1h2m3s4ms5us6ns"), absl::Hours(1) + absl::Minutes(2) + absl::Seconds(3) +
                                              absl::Milliseconds(4) + absl::Microseconds(5) +
                                              absl::Nanoseconds(6));
  EXPECT_EQ(MustParse("1h2m3.5s"), absl::Hours(1) + absl::Minutes(2) + absl::Milliseconds(3500));
  EXPECT_EQ(MustParse("39h9m14.425s"),
            absl::Hours(39) + absl::Minutes(9) + absl::Milliseconds(14425));
  // Large values and the int64 limits, as Go's tests.
  EXPECT_EQ(MustParse("52763797000ns"), absl::Nanoseconds(52763797000));
  EXPECT_EQ(MustParse("9007199254740993ns"), absl::Nanoseconds(9007199254740993));
  EXPECT_EQ(MustParse("0.100000000000000000000h"), absl::Minutes(6));
  EXPECT_EQ(MustParse("0.830103483285477580700h"),
            absl::Minutes(49) + absl::Seconds(48) + absl::Nanoseconds(372539827));
  EXPECT_EQ(MustParse("9223372036854775807ns"), absl::Nanoseconds(INT64_MAX));
  EXPECT_EQ(MustParse("9223372036854775.807us"), absl::Nanoseconds(INT64_MAX));
  EXPECT_EQ(MustParse("9223372036s854ms775us807ns"), absl::Nanoseconds(INT64_MAX));
  EXPECT_EQ(MustParse("-9223372036854775808ns"), absl::Nanoseconds(INT64_MIN));
  EXPECT_EQ(MustParse("-9223372036854775.808us"), absl::Nanoseconds(INT64_MIN));
  EXPECT_EQ(MustParse("-2562047h47m16.854775808s"), absl::Nanoseconds(INT64_MIN));
}

TEST(ParseGoDuration, ErrorsUseGoText) {
  EXPECT_EQ(ParseError("123"), "time: missing unit in duration \"123\"");
  EXPECT_EQ(ParseError("-1"), "time: missing unit in duration \"-1\"");
  EXPECT_EQ(ParseError("1h2"), "time: missing unit in duration \"1h2\"");
  EXPECT_EQ(ParseError("x"), "time: invalid duration \"x\"");
  EXPECT_EQ(ParseError(""), "time: invalid duration \"\"");
  EXPECT_EQ(ParseError("-"), "time: invalid duration \"-\"");
  EXPECT_EQ(ParseError("s"), "time: invalid duration \"s\"");
  EXPECT_EQ(ParseError("."), "time: invalid duration \".\"");
  EXPECT_EQ(ParseError("-.s"), "time: invalid duration \"-.s\"");
  EXPECT_EQ(ParseError(".s"), "time: invalid duration \".s\"");
  EXPECT_EQ(ParseError("+.s"), "time: invalid duration \"+.s\"");
  EXPECT_EQ(ParseError("1s "), "time: unknown unit \"s \" in duration \"1s \"");
  EXPECT_EQ(ParseError(" 1s"), "time: invalid duration \" 1s\"");
  EXPECT_EQ(ParseError("1d"), "time: unknown unit \"d\" in duration \"1d\"");
  EXPECT_EQ(ParseError("3000000h"), "time: invalid duration \"3000000h\"");
  EXPECT_EQ(ParseError("9223372036854775808ns"),
            "time: invalid duration \"9223372036854775808ns\"");
  EXPECT_EQ(ParseError("9223372036854775.808us"),
            "time: invalid duration \"9223372036854775.808us\"");
  EXPECT_EQ(ParseError("-9223372036854775809ns"),
            "time: invalid duration \"-9223372036854775809ns\"");
  // Go's time package escapes bytes outside printable ASCII as \xNN.
  EXPECT_EQ(ParseError("\"foo\""), "time: invalid duration \"\\\"foo\\\"\"");
  EXPECT_EQ(ParseError("3\xC2\xB5"),
            "time: unknown unit \"\\xc2\\xb5\" in duration \"3\\xc2\\xb5\"");
}

TEST(FormatGoDuration, MatchesGoString) {
  EXPECT_EQ(FormatGoDuration(absl::ZeroDuration()), "0s");
  EXPECT_EQ(FormatGoDuration(absl::Nanoseconds(1)), "1ns");
  EXPECT_EQ(FormatGoDuration(absl::Nanoseconds(1100)), "1.1\xC2\xB5s");
  EXPECT_EQ(FormatGoDuration(absl::Microseconds(2)), "2\xC2\xB5s");
  EXPECT_EQ(FormatGoDuration(absl::Microseconds(2200)), "2.2ms");
  EXPECT_EQ(FormatGoDuration(absl::Milliseconds(500)), "500ms");
  EXPECT_EQ(FormatGoDuration(absl::Milliseconds(1500)), "1.5s");
  EXPECT_EQ(FormatGoDuration(absl::Milliseconds(3300)), "3.3s");
  EXPECT_EQ(FormatGoDuration(absl::Seconds(5)), "5s");
  EXPECT_EQ(FormatGoDuration(absl::Minutes(1)), "1m0s");
  EXPECT_EQ(FormatGoDuration(absl::Minutes(4) + absl::Seconds(5)), "4m5s");
  EXPECT_EQ(FormatGoDuration(absl::Minutes(4) + absl::Milliseconds(5001)), "4m5.001s");
  EXPECT_EQ(FormatGoDuration(absl::Hours(1)), "1h0m0s");
  EXPECT_EQ(FormatGoDuration(absl::Hours(5) + absl::Minutes(6) + absl::Milliseconds(7001)),
            "5h6m7.001s");
  EXPECT_EQ(FormatGoDuration(absl::Minutes(8) + absl::Nanoseconds(1)), "8m0.000000001s");
  EXPECT_EQ(FormatGoDuration(absl::Minutes(-1)), "-1m0s");
  EXPECT_EQ(FormatGoDuration(absl::Nanoseconds(-1)), "-1ns");
  EXPECT_EQ(FormatGoDuration(absl::Nanoseconds(INT64_MAX)), "2562047h47m16.854775807s");
  EXPECT_EQ(FormatGoDuration(absl::Nanoseconds(INT64_MIN)), "-2562047h47m16.854775808s");
}

TEST(FormatGoDuration, RoundTripsThroughParse) {
  for (absl::Duration d : {absl::Milliseconds(1), absl::Seconds(90), absl::Hours(25),
                           absl::Nanoseconds(123456789), -absl::Minutes(3)}) {
    EXPECT_EQ(MustParse(FormatGoDuration(d)), d) << FormatGoDuration(d);
  }
}

}  // namespace
}  // namespace keel::common
