#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace keel::common {

// An absl::Status for a failed system call: code from errno (ECONNREFUSED →
// Unavailable, ETIMEDOUT → DeadlineExceeded, EACCES → PermissionDenied,
// EADDRINUSE → AlreadyExists, ENOENT → NotFound, else Internal) and message
// "<what>: <strerror(err)>". Thread-safe.
absl::Status ErrnoStatus(int err, std::string_view what);

// Debian's Abseil is built with its own absl::string_view (not an alias of
// std::string_view), so a std::string_view does not convert implicitly into
// absl::StrCat, absl::InvalidArgumentError, ...: wrap it with this.
inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace keel::common
