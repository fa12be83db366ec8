#pragma once

namespace keel::common {

// Blocks SIGPIPE in the calling thread: a write(2) to a peer that went away
// (OpenSSL's, splice(2)'s, which take no MSG_NOSIGNAL) then fails with EPIPE
// instead of killing the process with a thread-directed signal.
void BlockSigpipeInThisThread();

}  // namespace keel::common
