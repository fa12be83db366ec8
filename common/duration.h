#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace keel::common {

// Parses Go's time.ParseDuration syntax: "1m0s", "500ms", "1.5h", "-2us",
// "0". A bare number other than 0 is an error, as in Go and etcd:
// InvalidArgument `time: missing unit in duration "123"`. Other messages
// follow Go's (`time: invalid duration "x"`, `time: unknown unit "d" in
// duration "1d"`).
absl::StatusOr<absl::Duration> ParseGoDuration(std::string_view text);

// Formats as Go's Duration.String(): "1m0s", "500ms", "1h0m0s", "0s".
std::string FormatGoDuration(absl::Duration d);

}  // namespace keel::common
