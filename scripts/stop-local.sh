#!/usr/bin/env bash
# Stops what scripts/start-local.sh started (the proxies first, then etcd).
set -uo pipefail
dir="${KEEL_LOCAL_DIR:-$HOME/.local/share/keel-local}"
for name in grpc-proxy gateway etcd; do
  pidfile="$dir/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
