#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace keel::common {

// An absl::Status for a failed system call: code from errno (ECONNREFUSED →
// Unavailable, ETIMEDOUT → DeadlineExceeded, EACCES → PermissionDenied,
// EADDRINUSE → AlreadyExists, ENOENT → NotFound, else Internal) and message
// "<what>: <strerror(err)>".
absl::Status ErrnoStatus(int err, std::string_view what);

}  // namespace keel::common
