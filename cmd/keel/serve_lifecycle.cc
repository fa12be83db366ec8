#include "cmd/keel/serve_lifecycle.h"

#include <pthread.h>
#include <sys/resource.h>

#include "common/logging.h"
#include "common/systemd.h"

namespace keel::cmd {

sigset_t PrepareToServe() {
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return stop_signals;
}

int WaitForStopSignal(const sigset_t& stop_signals, const char* logger, const char* message) {
  if (absl::Status s = common::NotifySystemd("READY=1"); !s.ok()) {
    common::LogEvent(*common::Logger(logger), spdlog::level::warn,
                     "failed to notify systemd for readiness", {{"error", s.ToString()}});
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (void)common::NotifySystemd("STOPPING=1");  // best effort, as sd_notify callers do
  common::LogEvent(*common::Logger(logger), spdlog::level::info, message,
                   {{"signal", sig == SIGTERM ? "terminated" : "interrupt"}});
  return sig;
}

}  // namespace keel::cmd
