#include "common/tcp_listen.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace keel::common {

absl::StatusOr<int> ListenTcp(const HostPort& listen) {
  const std::string address = listen.ToString();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* result = nullptr;
  const std::string port = std::to_string(listen.port);
  const int gai = getaddrinfo(listen.host.empty() ? nullptr : listen.host.c_str(), port.c_str(),
                              &hints, &result);
  if (gai != 0) {
    return absl::UnavailableError(
        absl::StrCat("listen tcp ", address, ": lookup ", listen.host, ": ", gai_strerror(gai)));
  }
  std::vector<addrinfo*> candidates;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) candidates.push_back(ai);
  const int preferred = listen.host.empty() ? AF_INET6 : AF_INET;
  std::stable_sort(candidates.begin(), candidates.end(), [preferred](addrinfo* a, addrinfo* b) {
    return a->ai_family == preferred && b->ai_family != preferred;
  });
  absl::Status error = absl::UnavailableError(absl::StrCat("listen tcp ", address, ": no address"));
  int fd = -1;
  for (addrinfo* ai : candidates) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = absl::UnavailableError(
          absl::StrCat("listen tcp ", address, ": socket: ", ErrnoText(errno)));
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const char* step = nullptr;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      step = "bind";
    } else if (::listen(fd, SOMAXCONN) != 0) {
      step = "listen";
    }
    if (step == nullptr) break;
    error = absl::UnavailableError(
        absl::StrCat("listen tcp ", address, ": ", step, ": ", ErrnoText(errno)));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(result);
  if (fd < 0) return error;
  return fd;
}

absl::StatusOr<int> ListenUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::UnavailableError(absl::StrCat("listen unix ", path, ": bind: invalid argument"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  // Only a socket is replaced: a regular file of that name is not ours.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("listen unix ", path, ": socket: ", ErrnoText(errno)));
  }
  const char* step = nullptr;
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    step = "bind";
  } else if (::listen(fd, SOMAXCONN) != 0) {
    step = "listen";
    unlink(path.c_str());  // bound: the file is ours
  }
  if (step != nullptr) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("listen unix ", path, ": ", step, ": ", ErrnoText(err)));
  }
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) return 0;
  if (bound.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (bound.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return 0;
}

std::string ErrnoText(int err) {
  char buf[256];
  std::string text = strerror_r(err, buf, sizeof(buf));
  if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z') {
    text[0] = static_cast<char>(text[0] - 'A' + 'a');
  }
  return text;
}

}  // namespace keel::common
