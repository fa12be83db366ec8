#include "common/systemd.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/testutil/process.h"

namespace keel::common {
namespace {

// A datagram socket standing in for the service manager's notify socket.
class NotifyListener {
 public:
  explicit NotifyListener(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    bound_ = bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~NotifyListener() { close(fd_); }
  bool bound() const { return bound_; }
  std::string Receive() {
    char buf[256];
    const ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
};

TEST(NotifySystemd, SendsStateToNotifySocket) {
  testutil::TempDir dir;
  NotifyListener listener(dir.File("notify"));
  ASSERT_TRUE(listener.bound());
  setenv("NOTIFY_SOCKET", dir.File("notify").c_str(), 1);
  EXPECT_TRUE(NotifySystemd("READY=1").ok());
  unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(listener.Receive(), "READY=1");
}

TEST(NotifySystemd, NoSocketConfiguredIsANoOp) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifySystemd("READY=1").ok());
}

TEST(NotifySystemd, MissingSocketIsAnError) {
  testutil::TempDir dir;
  setenv("NOTIFY_SOCKET", dir.File("nobody-listens").c_str(), 1);
  EXPECT_FALSE(NotifySystemd("READY=1").ok());
  unsetenv("NOTIFY_SOCKET");
}

}  // namespace
}  // namespace keel::common
