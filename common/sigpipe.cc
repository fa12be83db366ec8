#include "common/sigpipe.h"

#include <pthread.h>
#include <signal.h>

namespace keel::common {

void BlockSigpipeInThisThread() {
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
}

}  // namespace keel::common
