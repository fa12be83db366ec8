#pragma once

#include <signal.h>

namespace keel::cmd {

// What every long-running role does before it starts serving: raises
// RLIMIT_NOFILE to the hard limit (one descriptor per client plus one per
// upstream; Go, and so etcd, does the same at start-up), ignores SIGPIPE (a
// peer that went away is an error return, not a process kill) and blocks
// SIGTERM and SIGINT in this thread and every thread started after it, so
// only WaitForStopSignal takes them. Returns the blocked set.
// REQUIRES: called from main's thread before any other thread starts.
sigset_t PrepareToServe();

// Once serving: tells systemd READY=1 (etcd does; Type=notify units wait for
// it), waits for SIGTERM or SIGINT, tells systemd STOPPING=1 and logs
// `message` on `logger` with the signal's name. Returns the signal.
int WaitForStopSignal(const sigset_t& stop_signals, const char* logger, const char* message);

}  // namespace keel::cmd
