# Shared helpers of bench/gateway.sh and bench/compare.sh. Source it; it
# defines a temp dir ($WORK), a process list killed on exit, free loopback
# ports, readiness polling and /proc CPU/RSS sampling.

PY=/usr/bin/python3
CLK_TCK=$(getconf CLK_TCK)
PIDS=()

bench_init() {
  WORK=$(mktemp -d /tmp/keel-bench.XXXXXX)
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local pid deadline=$((SECONDS + 5))
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    while ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  PIDS=()
  [[ -n "${WATCHDOG:-}" ]] && kill "$WATCHDOG" 2>/dev/null
  [[ -n "${WORK:-}" && -d "$WORK" && -z "${KEEP_WORK:-}" ]] && rm -rf "$WORK"
  return 0
}

# Kills the whole script after $1 seconds (a hard bound on the run time).
bench_watchdog() {
  local self=$$ limit=$1
  (
    sleep "$limit" &
    local sp=$!
    trap 'kill $sp 2>/dev/null; exit 0' TERM
    wait "$sp"
    echo "bench: time limit of $limit s reached, stopping" >&2
    kill -TERM "$self"
  ) &
  WATCHDOG=$!
}

# Prints N distinct free TCP ports on 127.0.0.1.
free_ports() {
  "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# start NAME CMD...: runs CMD in the background, logs to $WORK/NAME.log,
# records its pid in PIDS and in the variable PID_<NAME>.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_${name//-/_}" '%s' "$pid"
}

# stop NAME: kills a process started with start.
stop() {
  local var="PID_${1//-/_}"
  local pid=${!var}
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

pid_of() { local var="PID_${1//-/_}"; echo "${!var}"; }

# wait_port PORT [SECONDS]: polls until 127.0.0.1:PORT accepts connections.
wait_port() {
  local deadline=$((SECONDS + ${2:-20}))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on 127.0.0.1:$1 after ${2:-20}s" >&2
  return 1
}

# cpu_ticks PID: utime+stime of a process (all threads), in clock ticks.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# rss_kb PID: resident set size in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# start_etcd NAME CLIENT_PORT PEER_PORT [METRICS_PORT] [INITIAL_CLUSTER] [extra flags...]
start_etcd() {
  local name=$1 cport=$2 pport=$3 mport=${4:-} cluster=${5:-}
  shift 5 2>/dev/null || shift $#
  [[ -z "$cluster" ]] && cluster="$name=http://127.0.0.1:$pport"
  local metrics=()
  [[ -n "$mport" ]] && metrics=(--listen-metrics-urls "http://127.0.0.1:$mport")
  start "$name" etcd --name "$name" --data-dir "$WORK/$name.etcd" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$cluster" --initial-cluster-state new "${metrics[@]}" "$@"
}

# wait_etcd ENDPOINTS [SECONDS]: until a write succeeds through ENDPOINTS.
wait_etcd() {
  local deadline=$((SECONDS + ${2:-30}))
  while ((SECONDS < deadline)); do
    if ETCDCTL_API=3 timeout 5 etcdctl --endpoints "$1" --command-timeout=2s put keel-bench-ready 1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench: etcd at $1 not writable after ${2:-30}s" >&2
  return 1
}

# find_keel_bench DIR...: the first executable keel-bench among DIRs, else
# any build*/bin/keel-bench of the source tree.
find_keel_bench() {
  local d
  if [[ -n "${KEEL_BENCH:-}" && -x "$KEEL_BENCH" ]]; then echo "$KEEL_BENCH"; return 0; fi
  for d in "$@" "$SRC_DIR"/build*/bin; do
    if [[ -x "$d/keel-bench" ]]; then echo "$d/keel-bench"; return 0; fi
  done
  return 1
}
