#include "common/duration.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace keel::common {
namespace {

constexpr uint64_t kOverflow = uint64_t{1} << 63;  // |min int64|

// Quotes as Go's time package does in its error messages: double quotes,
// '"' and '\' backslash-escaped, every byte outside printable ASCII as \xNN.
std::string GoQuote(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c >= 0x80 || c < ' ') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    } else {
      if (c == '"' || c == '\\') out += '\\';
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

absl::Status Invalid(std::string_view orig) {
  return absl::InvalidArgumentError(absl::StrCat("time: invalid duration ", GoQuote(orig)));
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Consumes leading [0-9]*; false on overflow past 1<<63 (Go's errLeadingInt).
bool LeadingInt(std::string_view& s, uint64_t& x) {
  size_t i = 0;
  x = 0;
  for (; i < s.size() && IsDigit(s[i]); ++i) {
    if (x > kOverflow / 10) return false;
    x = x * 10 + static_cast<uint64_t>(s[i] - '0');
    if (x > kOverflow) return false;
  }
  s.remove_prefix(i);
  return true;
}

// Consumes leading [0-9]* after a '.', keeping as many digits as fit.
void LeadingFraction(std::string_view& s, uint64_t& x, double& scale) {
  size_t i = 0;
  x = 0;
  scale = 1;
  bool overflow = false;
  for (; i < s.size() && IsDigit(s[i]); ++i) {
    if (overflow) continue;
    if (x > (kOverflow - 1) / 10) {
      overflow = true;
      continue;
    }
    uint64_t y = x * 10 + static_cast<uint64_t>(s[i] - '0');
    if (y > kOverflow) {
      overflow = true;
      continue;
    }
    x = y;
    scale *= 10;
  }
  s.remove_prefix(i);
}

bool UnitNanos(std::string_view u, uint64_t& unit) {
  if (u == "ns") {
    unit = 1;
  } else if (u == "us" || u == "\xC2\xB5s" || u == "\xCE\xBCs") {  // µ U+00B5, μ U+03BC
    unit = 1000;
  } else if (u == "ms") {
    unit = 1000 * 1000;
  } else if (u == "s") {
    unit = 1000 * 1000 * 1000;
  } else if (u == "m") {
    unit = uint64_t{60} * 1000 * 1000 * 1000;
  } else if (u == "h") {
    unit = uint64_t{3600} * 1000 * 1000 * 1000;
  } else {
    return false;
  }
  return true;
}

// Writes v/10^prec's fraction (".123", trailing zeros dropped, nothing if 0)
// in front of `out` and returns v/10^prec, as Go's fmtFrac.
uint64_t PrependFrac(std::string& out, uint64_t v, int prec) {
  std::string frac;
  bool print = false;
  for (int i = 0; i < prec; ++i) {
    int digit = static_cast<int>(v % 10);
    print = print || digit != 0;
    if (print) frac.insert(frac.begin(), static_cast<char>('0' + digit));
    v /= 10;
  }
  if (print) out.insert(0, "." + frac);
  return v;
}

void PrependInt(std::string& out, uint64_t v) { out.insert(0, std::to_string(v)); }

}  // namespace

absl::StatusOr<absl::Duration> ParseGoDuration(std::string_view text) {
  // Mirrors Go's time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+
  const std::string_view orig = text;
  std::string_view s = text;
  uint64_t d = 0;
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return absl::ZeroDuration();
  if (s.empty()) return Invalid(orig);
  while (!s.empty()) {
    if (!(s[0] == '.' || IsDigit(s[0]))) return Invalid(orig);
    const size_t before_int = s.size();
    uint64_t v = 0;
    if (!LeadingInt(s, v)) return Invalid(orig);
    const bool pre = before_int != s.size();
    uint64_t f = 0;
    double scale = 1;
    bool post = false;
    if (!s.empty() && s[0] == '.') {
      s.remove_prefix(1);
      const size_t before_frac = s.size();
      LeadingFraction(s, f, scale);
      post = before_frac != s.size();
    }
    if (!pre && !post) return Invalid(orig);
    size_t i = 0;
    while (i < s.size() && s[i] != '.' && !IsDigit(s[i])) ++i;
    if (i == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("time: missing unit in duration ", GoQuote(orig)));
    }
    const std::string_view u = s.substr(0, i);
    s.remove_prefix(i);
    uint64_t unit = 0;
    if (!UnitNanos(u, unit)) {
      return absl::InvalidArgumentError(
          absl::StrCat("time: unknown unit ", GoQuote(u), " in duration ", GoQuote(orig)));
    }
    if (v > kOverflow / unit) return Invalid(orig);
    v *= unit;
    if (f > 0) {
      // As Go: float64 keeps nanosecond accuracy for fractions of an hour.
      v += static_cast<uint64_t>(static_cast<double>(f) * (static_cast<double>(unit) / scale));
      if (v > kOverflow) return Invalid(orig);
    }
    d += v;
    if (d > kOverflow) return Invalid(orig);
  }
  if (neg) {
    // d <= 1<<63, so -d fits in int64 (d == 1<<63 is the minimum).
    return absl::Nanoseconds(static_cast<int64_t>(~d + 1));
  }
  if (d > kOverflow - 1) return Invalid(orig);
  return absl::Nanoseconds(static_cast<int64_t>(d));
}

std::string FormatGoDuration(absl::Duration d) {
  // Go durations are int64 nanoseconds; larger absl values saturate.
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  const bool neg = ns < 0;
  uint64_t u = static_cast<uint64_t>(ns);
  if (neg) u = ~u + 1;
  std::string out;
  if (u < 1000000000) {
    // Below one second Go switches to smaller units, like "1.2ms".
    int prec = 0;
    if (u == 0) return "0s";
    if (u < 1000) {
      out = "ns";
      prec = 0;
    } else if (u < 1000000) {
      out = "\xC2\xB5s";  // U+00B5 'µ', as Go prints it
      prec = 3;
    } else {
      out = "ms";
      prec = 6;
    }
    u = PrependFrac(out, u, prec);
    PrependInt(out, u);
  } else {
    out = "s";
    u = PrependFrac(out, u, 9);
    PrependInt(out, u % 60);
    u /= 60;
    if (u > 0) {
      out.insert(out.begin(), 'm');
      PrependInt(out, u % 60);
      u /= 60;
      if (u > 0) {
        out.insert(out.begin(), 'h');
        PrependInt(out, u);
      }
    }
  }
  if (neg) out.insert(out.begin(), '-');
  return out;
}

}  // namespace keel::common
