#include "common/status.h"

#include <cerrno>
#include <string>

#include "gtest/gtest.h"

namespace keel::common {
namespace {

TEST(ErrnoStatus, MapsCodes) {
  EXPECT_EQ(ErrnoStatus(ECONNREFUSED, "dial").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus(ETIMEDOUT, "dial").code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ErrnoStatus(EACCES, "open").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EADDRINUSE, "bind").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoStatus(ENOENT, "open").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EIO, "write").code(), absl::StatusCode::kInternal);
}

TEST(ErrnoStatus, MessageIsWhatColonStrerror) {
  EXPECT_EQ(ErrnoStatus(ECONNREFUSED, "connect 127.0.0.1:2379").message(),
            "connect 127.0.0.1:2379: Connection refused");
  EXPECT_EQ(ErrnoStatus(ENOENT, "open /x").message(), "open /x: No such file or directory");
}

TEST(ToAbsl, KeepsBytes) {
  std::string s("a\0b", 3);
  absl::string_view v = ToAbsl(std::string_view(s));
  EXPECT_EQ(v.size(), 3u);
  EXPECT_EQ(v.data(), s.data());
}

}  // namespace
}  // namespace keel::common
