#pragma once

#include <string>
#include <string_view>

namespace keel::common {

// Quotes `s` as Go's strconv.Quote / fmt's %q do, so messages that etcd
// prints with %q come out byte-identical: double quotes; '"', '\\' and
// control characters escaped (\n, \t, ... or \xNN); valid UTF-8 kept; each
// invalid UTF-8 byte as \xNN. Thread-safe (pure).
std::string GoQuote(std::string_view s);

}  // namespace keel::common
