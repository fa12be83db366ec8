#pragma once

// Small text helpers for tests that check logs and other output.

#include <cstddef>
#include <string_view>

namespace keel::testutil {

// Counts non-overlapping occurrences of `needle` in `hay` (e.g. how many
// times a log line was written).
inline size_t CountOf(std::string_view hay, std::string_view needle) {
  size_t n = 0;
  for (size_t pos = hay.find(needle); pos != std::string_view::npos;
       pos = hay.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

}  // namespace keel::testutil
