#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace keel::common {

// Sends `state` (e.g. "READY=1", "STOPPING=1") to the service manager over
// $NOTIFY_SOCKET, as sd_notify(3) does and as etcd does once it serves, so a
// `Type=notify` unit knows when keel is ready. OK and a no-op when
// NOTIFY_SOCKET is unset; ErrnoStatus(...) if the send fails.
// Thread-safe.
absl::Status NotifySystemd(std::string_view state);

}  // namespace keel::common
