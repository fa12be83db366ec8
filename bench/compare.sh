#!/usr/bin/env bash
# keel vs etcd, role by role, on this machine: a real etcd (1 member and 3
# members), `etcd gateway`, `etcd grpc-proxy`, `keel gateway` and (when the
# keel binary has it) `keel grpc-proxy`, each under the same keel-bench loads,
# with CPU and RSS of every process sampled, plus the machine's limits
# (loopback bandwidth, fdatasync rate).
#
#   bench/compare.sh [--quick] [--out FILE] [KEEL_BIN_DIR]
#
# KEEL_BIN_DIR (or $KEEL_BIN_DIR) holds `keel`; default <checkout>/build/bin.
# Writes bench/results/compare-<date>.md (see bench/README.md).
set -uo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$SRC_DIR/bench/lib.sh"

QUICK=0
OUT=
BIN_DIR=${KEEL_BIN_DIR:-$SRC_DIR/build/bin}
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) BIN_DIR=$1 ;;
  esac
  shift
done

if ((QUICK)); then
  T=2; LIMIT=300; SIZES=(1000); FSYNCS=300; PUTS=30; LEASE_T=4
else
  T=5; LIMIT=1200; SIZES=(1000 10000); FSYNCS=2000; PUTS=60; LEASE_T=10
fi
KEEL="$BIN_DIR/keel"
[[ -x "$KEEL" ]] || { echo "compare.sh: no keel binary at $KEEL (pass its directory)" >&2; exit 2; }
BENCH=$(find_keel_bench "$BIN_DIR") || { echo "compare.sh: keel-bench not found (build it or set KEEL_BENCH)" >&2; exit 2; }

bench_init
bench_watchdog "$LIMIT"
mkdir -p "$SRC_DIR/bench/results"
OUT=${OUT:-$SRC_DIR/bench/results/compare-$(date -u +%Y-%m-%d-%H%M).md}
RES="$WORK/results.jsonl"
NOTES="$WORK/notes.txt"
: >"$RES"; : >"$NOTES"
note() { echo "$*" | tee -a "$NOTES" >&2; }

jrec() {  # jrec KEY=VALUE... -> one JSON line (numbers stay numbers)
  "$PY" -c '
import json, sys
d = {}
for a in sys.argv[1:]:
    k, v = a.split("=", 1)
    try: d[k] = float(v)
    except ValueError: d[k] = v
print(json.dumps(d))' "$@" >>"$RES"
}

# ---- machine limits -------------------------------------------------------
echo "== machine limits"
read -r P_IP < <(free_ports 1)
start iperf iperf3 -s -B 127.0.0.1 -p "$P_IP"
wait_port "$P_IP" || exit 1
BW=$(timeout 30 iperf3 -c 127.0.0.1 -p "$P_IP" -t "$T" -J 2>/dev/null |
     jq -r '.end.sum_received.bits_per_second / 1e9' 2>/dev/null)
stop iperf
DD=$(LC_ALL=C dd if=/dev/zero of="$WORK/fsync.dat" bs=512 count="$FSYNCS" oflag=dsync 2>&1 |
     awk '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") print $(i-1)}')
FSYNC_US=$("$PY" -c "import sys; print(round(float('$DD') * 1e6 / $FSYNCS, 1))" 2>/dev/null || echo "")
jrec kind=limits loopback_gbit="${BW:-0}" fsync_us="${FSYNC_US:-0}" fsync_per_s="$("$PY" -c "print(round($FSYNCS / float('$DD')))" 2>/dev/null || echo 0)"
echo "   loopback ${BW:-?} Gbit/s, O_DSYNC 512 B write ${FSYNC_US:-?} us"

# ---- processes --------------------------------------------------------------
read -r C1 PE1 C3A C3B C3C P3A P3B P3C P_EGW P_EPX P_KGW P_KPX < <(free_ports 12)
VALUE=$(printf 'v%.0s' $(seq 1 256))

restart_member1() {
  [[ -n "${PID_m1:-}" ]] && stop m1
  start_etcd m1 "$C1" "$PE1" "" ""
  wait_etcd "127.0.0.1:$C1" || exit 1
}

KEEL_PROXY=0
KEEL_PROXY_WHY=""
if out=$("$KEEL" grpc-proxy start --help 2>&1) && grep -q -- "--endpoints" <<<"$out"; then
  KEEL_PROXY=1
else
  KEEL_PROXY_WHY="\`keel grpc-proxy start --help\` does not describe a grpc-proxy in $KEEL (no such subcommand yet)"
  note "keel grpc-proxy: not measured: $KEEL_PROXY_WHY"
fi

# sampler NAME PID...: records peak RSS (kB) of each pid every 100 ms into
# $WORK/rss.NAME until stop_sampler.
start_sampler() {
  local name=$1; shift
  (
    declare -A peak
    while :; do
      for p in "$@"; do
        r=$(rss_kb "$p" 2>/dev/null || echo 0)
        [[ -n "$r" ]] && (( r > ${peak[$p]:-0} )) && peak[$p]=$r
      done
      for p in "$@"; do echo "$p ${peak[$p]:-0}"; done >"$WORK/rss.$name.tmp"
      mv "$WORK/rss.$name.tmp" "$WORK/rss.$name"
      sleep 0.1
    done
  ) &
  SAMPLER=$!
}
stop_sampler() { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
peak_rss() { awk -v p="$2" '$1 == p {print $2}' "$WORK/rss.$1" 2>/dev/null; }

# run_load TARGET LOAD SERVER_PID RELAY_PID METRICS_URL -- keel-bench args...
run_load() {
  local target=$1 load=$2 spid=$3 rpid=$4 murl=$5; shift 6
  local s0 r0 s1 r1 out metrics=()
  [[ -n "$murl" ]] && case $load in watch*|lease*) metrics=(--metrics-url "$murl") ;; esac
  s0=$(cpu_ticks "$spid"); r0=""; [[ -n "$rpid" ]] && r0=$(cpu_ticks "$rpid")
  start_sampler "$load" "$spid" ${rpid:+"$rpid"}
  local args=("$@")
  if ((${#metrics[@]})); then args+=("${metrics[@]}"); fi
  out=$(timeout 300 "$BENCH" --json --no-progress "${args[@]}" 2>"$WORK/bench.err")
  local rc=$?
  stop_sampler
  s1=$(cpu_ticks "$spid"); r1=""; [[ -n "$rpid" ]] && r1=$(cpu_ticks "$rpid")
  if ((rc != 0)) || ! jq -e . >/dev/null 2>&1 <<<"$out"; then
    note "$target / $load: keel-bench failed (exit $rc): $(head -c 300 "$WORK/bench.err")"
    return 0
  fi
  local srss rrss=""
  srss=$(peak_rss "$load" "$spid"); [[ -n "$rpid" ]] && rrss=$(peak_rss "$load" "$rpid")
  printf '%s' "$out" >"$WORK/report.json"
  "$PY" - "$target" "$load" "$CLK_TCK" "$s0" "$s1" "${r0:-}" "${r1:-}" "${srss:-}" "${rrss:-}" \
    "$WORK/report.json" >>"$RES" <<'PYEOF'
import json, sys
target, load, clk, s0, s1, r0, r1, srss, rrss, report = sys.argv[1:]
j = json.load(open(report))
clk = float(clk)
rec = {"kind": "load", "target": target, "load": load, "report": j,
       "server_cpu_s": (float(s1) - float(s0)) / clk,
       "relay_cpu_s": None if not r0 else (float(r1) - float(r0)) / clk,
       "server_rss_kb": float(srss) if srss else None,
       "relay_rss_kb": float(rrss) if rrss else None}
print(json.dumps(rec))
PYEOF
  printf '   %-12s %-16s done\n' "$target" "$load"
}

# run_target TARGET ENDPOINTS SERVER_PID RELAY_PID METRICS_URL [extra keel-bench flags]
run_target() {
  local target=$1 ep=$2 spid=$3 rpid=$4 murl=$5; shift 5
  local g=(--endpoints "$ep" "$@")
  echo "== $target"
  ETCDCTL_API=3 etcdctl --endpoints "${ep%%,*}" put bench-range-key "$VALUE" >/dev/null 2>&1
  run_load "$target" range-l-c64 "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 1 --clients 64 \
    --duration "${T}s" range bench-range-key --consistency l
  run_load "$target" range-s-c64 "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 1 --clients 64 \
    --duration "${T}s" range bench-range-key --consistency s
  run_load "$target" put-c1 "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 1 --clients 1 \
    --duration "${T}s" --key-size 8 --val-size 256 --key-space-size 100000 put
  run_load "$target" put-c64 "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 1 --clients 64 \
    --duration "${T}s" --key-size 8 --val-size 256 --key-space-size 100000 put
  run_load "$target" txn-mixed-c64 "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 1 --clients 64 \
    --duration "${T}s" --key-size 8 --val-size 256 --key-space-size 100000 txn-mixed --rw-ratio 4
  local n
  for n in "${SIZES[@]}"; do
    run_load "$target" "watch-$n" "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 10 \
      watch-latency --streams "$n" --watch-per-stream 1 --put-total "$PUTS" --event-timeout 10s
    run_load "$target" "lease-$n" "$spid" "$rpid" "$murl" -- "${g[@]}" --conns 10 --clients 64 \
      --duration "${LEASE_T}s" lease-keepalive --leases "$n" --streams "$n" --ttl 6 --interval 2s
  done
}

START=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# etcd, 1 member (direct).
restart_member1
run_target etcd-1 "127.0.0.1:$C1" "$PID_m1" "" "http://127.0.0.1:$C1/metrics"

# Relays in front of a freshly restarted member each time (etcd 3.4's read
# cost grows after write bursts until restart).
relay_run() {  # relay_run TARGET PORT CMD...
  local target=$1 port=$2; shift 2
  restart_member1
  start relay "$@"
  if wait_port "$port" 20; then
    run_target "$target" "127.0.0.1:$port" "$PID_m1" "$PID_relay" "http://127.0.0.1:$C1/metrics"
  else
    note "$target: did not listen on $port: $(tail -c 300 "$WORK/relay.log")"
  fi
  stop relay
}
relay_run etcd-gateway "$P_EGW" etcd gateway start --listen-addr "127.0.0.1:$P_EGW" \
  --endpoints "127.0.0.1:$C1"
relay_run keel-gateway "$P_KGW" "$KEEL" gateway start --listen-addr "127.0.0.1:$P_KGW" \
  --endpoints "127.0.0.1:$C1" --log-level error
relay_run etcd-grpc-proxy "$P_EPX" etcd grpc-proxy start --listen-addr "127.0.0.1:$P_EPX" \
  --endpoints "127.0.0.1:$C1"
if ((KEEL_PROXY)); then
  relay_run keel-grpc-proxy "$P_KPX" "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KPX" \
    --endpoints "127.0.0.1:$C1"
fi
stop m1

# etcd, 3 members; the load goes to the leader.
CL="m3a=http://127.0.0.1:$P3A,m3b=http://127.0.0.1:$P3B,m3c=http://127.0.0.1:$P3C"
start_etcd m3a "$C3A" "$P3A" "" "$CL"
start_etcd m3b "$C3B" "$P3B" "" "$CL"
start_etcd m3c "$C3C" "$P3C" "" "$CL"
if wait_etcd "127.0.0.1:$C3A,127.0.0.1:$C3B,127.0.0.1:$C3C" 60; then
  LEADER_PID=$PID_m3a
  for m in m3a m3b m3c; do
    var=C${m#m}; var=${var^^}; port=${!var}
    if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" endpoint status -w json 2>/dev/null |
       jq -e '.[0].Status.leader == .[0].Status.header.member_id' >/dev/null; then
      LEADER_PID=$(pid_of "$m"); LEADER_PORT=$port
    fi
  done
  run_target etcd-3 "127.0.0.1:$C3A,127.0.0.1:$C3B,127.0.0.1:$C3C" "$LEADER_PID" "" \
    "http://127.0.0.1:${LEADER_PORT:-$C3A}/metrics" --target-leader
else
  note "etcd-3: cluster did not become writable"
fi
ELAPSED=$((SECONDS - START))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

"$PY" - "$RES" "$NOTES" "$OUT" "$ELAPSED" "$QUICK" "$T" "$KEEL_PROXY_WHY" "$KEEL" "$BENCH" \
  "$LOAD_BEFORE" "$LOAD_AFTER" <<'PYEOF'
import json, sys, datetime, os
res, notes, out, elapsed, quick, t, proxy_why, keel, bench, load0, load1 = sys.argv[1:]
rows = [json.loads(l) for l in open(res) if l.strip()]
limits = next((r for r in rows if r["kind"] == "limits"), {})
loads = [r for r in rows if r["kind"] == "load"]
targets = ["etcd-1", "etcd-3", "etcd-gateway", "keel-gateway", "etcd-grpc-proxy", "keel-grpc-proxy"]
def get(target, load):
    for r in loads:
        if r["target"] == target and r["load"] == load: return r
    return None
load_names = []
for r in loads:
    if r["load"] not in load_names: load_names.append(r["load"])
def f(v, fmt="{:,.0f}"):
    return "—" if v is None else fmt.format(v)
def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b
def fr(v): return "—" if v is None else "{:.2f}×".format(v)

def kv(r):
    if r is None: return None, None, None
    j = r["report"]
    return j.get("rps"), (j.get("percentiles") or {}).get("p50"), j.get("requests")

L = ["# keel vs etcd, role by role", ""]
L.append("Run {} UTC on {} ({} cores){}; {} s per KV load; total {} s. Every process on the same machine; "
         "one run each, so compare ratios, not absolutes across runs.".format(
    datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), os.uname().nodename, os.cpu_count(),
    " (--quick)" if quick == "1" else "", t, elapsed))
L.append("")
L.append("Binaries: keel `{}`, keel-bench `{}`. Load average before / after: {} / {}.".format(
    keel, bench, load0, load1))
L.append("")
L.append("Machine limits: loopback TCP {} Gbit/s (iperf3, 1 stream); O_DSYNC 512 B write {} µs ({} /s) in the temp dir.".format(
    f(limits.get("loopback_gbit"), "{:.1f}"), f(limits.get("fsync_us"), "{:.1f}"), f(limits.get("fsync_per_s"))))
L.append("")
present = [t for t in targets if any(r["target"] == t for r in loads)]
L.append("## KV throughput (req/s, p50 ms)")
L.append("")
L.append("| load | " + " | ".join(present) + " | keel-gw ÷ etcd-gw | keel-proxy ÷ etcd-proxy | etcd-gw ÷ direct | keel-gw ÷ direct |")
L.append("|---|" + "---|" * (len(present) + 4))
for load in load_names:
    if load.startswith(("watch", "lease")): continue
    cells = []
    for t in present:
        rps, p50, _ = kv(get(t, load))
        cells.append("—" if rps is None else "{:,.0f} ({:.2f})".format(rps, (p50 or 0) * 1e3))
    v = {t: kv(get(t, load))[0] for t in targets}
    L.append("| {} | {} | {} | {} | {} | {} |".format(load, " | ".join(cells),
        fr(ratio(v["keel-gateway"], v["etcd-gateway"])), fr(ratio(v["keel-grpc-proxy"], v["etcd-grpc-proxy"])),
        fr(ratio(v["etcd-gateway"], v["etcd-1"])), fr(ratio(v["keel-gateway"], v["etcd-1"]))))
L.append("")
L.append("## Watch fan-out (one key; put → seen by the last watcher) and lease keepalives")
L.append("")
L.append("| load | target | p50 ms | p99 ms | runs | errors | server watchers / streams | server RSS MB | relay RSS MB |")
L.append("|---|---|---|---|---|---|---|---|---|")
for load in load_names:
    if not load.startswith(("watch", "lease")): continue
    for t in present:
        r = get(t, load)
        if r is None: continue
        j = r["report"]
        s = j.get("fanout") if load.startswith("watch") else j
        srv = j.get("server", {})
        if load.startswith("watch"):
            counts = "{} / {}".format(f(srv.get("watchers")), f(srv.get("watch_streams")))
        else:
            counts = "— / {} keepalive".format(f(srv.get("keepalive_streams")))
        L.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(load, t,
            f((s.get("percentiles") or {}).get("p50", 0) * 1e3, "{:.2f}"),
            f((s.get("percentiles") or {}).get("p99", 0) * 1e3, "{:.2f}"),
            f(s.get("requests")), f(s.get("error_count")), counts,
            f(None if r["server_rss_kb"] is None else r["server_rss_kb"] / 1024, "{:.0f}"),
            f(None if r["relay_rss_kb"] is None else r["relay_rss_kb"] / 1024, "{:.0f}")))
L.append("")
L.append("## CPU per operation (µs; utime+stime from /proc/<pid>/stat over the load)")
L.append("")
L.append("| load | target | server µs/op | relay µs/op | keel ÷ etcd (relay, same role) |")
L.append("|---|---|---|---|---|")
def ops(r):
    j = r["report"]
    if r["load"].startswith("watch"): return (j.get("put") or {}).get("requests")
    return j.get("requests")
for load in load_names:
    for t in present:
        r = get(t, load)
        if r is None or not ops(r): continue
        n = ops(r)
        relay = None if r["relay_cpu_s"] is None else r["relay_cpu_s"] * 1e6 / n
        peer = {"keel-gateway": "etcd-gateway", "keel-grpc-proxy": "etcd-grpc-proxy"}.get(t)
        rr = None
        if peer and get(peer, load) and relay is not None:
            p = get(peer, load)
            if p["relay_cpu_s"] is not None and ops(p):
                rr = ratio(relay, p["relay_cpu_s"] * 1e6 / ops(p))
        L.append("| {} | {} | {} | {} | {} |".format(load, t, f(r["server_cpu_s"] * 1e6 / n, "{:.1f}"),
                 f(relay, "{:.1f}"), fr(rr)))
L.append("")
L.append("Watch loads: ops = puts (each fanned out to every watcher). Lease loads: ops = keepalive replies.")
L.append("")
extra = [l.strip() for l in open(notes) if l.strip()]
if proxy_why and not any("keel grpc-proxy" in e for e in extra):
    extra.append("keel grpc-proxy: not measured: " + proxy_why)
if extra:
    L.append("## Not measured / failures")
    L.append("")
    L.extend("- " + e for e in extra)
    L.append("")
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
print("written to", out)
PYEOF
