#include "common/status.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace keel::common {

absl::Status ErrnoStatus(int err, std::string_view what) {
  // strerror_r's GNU form returns the message pointer (maybe not `buf`).
  char buf[256];
  const char* text = strerror_r(err, buf, sizeof(buf));
  std::string message = absl::StrCat(ToAbsl(what), ": ", text);
  switch (err) {
    case ECONNREFUSED:
      return absl::UnavailableError(message);
    case ETIMEDOUT:
      return absl::DeadlineExceededError(message);
    case EACCES:
      return absl::PermissionDeniedError(message);
    case EADDRINUSE:
      return absl::AlreadyExistsError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace keel::common
