#!/usr/bin/env bash
# Gateway benchmark: direct connection vs `etcd gateway start` vs
# `keel gateway start` to the same backends, alternating in every round
# (A/B/C, order rotated per round), medians over the rounds.
#
#   bench/gateway.sh [--quick] [--rounds N] [--out FILE] [KEEL_BIN_DIR]
#
# KEEL_BIN_DIR (or $KEEL_BIN_DIR) holds `keel`; default <checkout>/build/bin.
# keel-bench is taken from $KEEL_BENCH, KEEL_BIN_DIR or any build*/bin.
# Writes bench/results/gateway-<date>.md (see bench/README.md).
set -uo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$SRC_DIR/bench/lib.sh"

QUICK=0
ROUNDS=
OUT=
BIN_DIR=${KEEL_BIN_DIR:-$SRC_DIR/build/bin}
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) BIN_DIR=$1 ;;
  esac
  shift
done

if ((QUICK)); then
  ROUNDS=${ROUNDS:-2}; T=1; LIMIT=170
else
  ROUNDS=${ROUNDS:-3}; T=3; LIMIT=660
fi
KEEL="$BIN_DIR/keel"
[[ -x "$KEEL" ]] || { echo "gateway.sh: no keel binary at $KEEL (pass its directory)" >&2; exit 2; }
BENCH=$(find_keel_bench "$BIN_DIR") || { echo "gateway.sh: keel-bench not found (build it or set KEEL_BENCH)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "gateway.sh: iperf3 missing" >&2; exit 2; }

bench_init
bench_watchdog "$LIMIT"
mkdir -p "$SRC_DIR/bench/results"
OUT=${OUT:-$SRC_DIR/bench/results/gateway-$(date -u +%Y-%m-%d-%H%M).md}
RES="$WORK/results.jsonl"
: >"$RES"

read -r P_ETCD P_PEER P_ECHO P_IPERF \
        P_EGW_ETCD P_EGW_ECHO P_EGW_IPERF P_KGW_ETCD P_KGW_ECHO P_KGW_IPERF < <(free_ports 10)

echo "== starting backends and gateways in $WORK"
start_etcd etcd "$P_ETCD" "$P_PEER" "" ""
start echo "$BENCH" tcp-echo-server --listen "127.0.0.1:$P_ECHO"
start iperf iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
for b in etcd echo iperf; do
  var=P_${b^^}; backend=127.0.0.1:${!var}
  egw=P_EGW_${b^^}; kgw=P_KGW_${b^^}
  start "egw_$b" etcd gateway start --listen-addr "127.0.0.1:${!egw}" --endpoints "$backend"
  start "kgw_$b" "$KEEL" gateway start --listen-addr "127.0.0.1:${!kgw}" --endpoints "$backend" \
    --log-level error
done
for p in "$P_ECHO" "$P_IPERF" "$P_EGW_ETCD" "$P_EGW_ECHO" "$P_EGW_IPERF" "$P_KGW_ETCD" \
         "$P_KGW_ECHO" "$P_KGW_IPERF"; do
  wait_port "$p" || exit 1
done
wait_etcd "127.0.0.1:$P_ETCD" || exit 1
VALUE=$(printf 'v%.0s' $(seq 1 256))
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$P_ETCD" put bench-range-key "$VALUE" >/dev/null

# port_of BACKEND PATH -> the port a client uses for that path.
port_of() {
  local b=${1^^}
  case $2 in
    direct) local v=P_$b ;;
    etcd-gw) local v=P_EGW_$b ;;
    keel-gw) local v=P_KGW_$b ;;
  esac
  echo "${!v}"
}
relay_pid() {
  case $2 in
    direct) echo "" ;;
    etcd-gw) pid_of "egw_$1" ;;
    keel-gw) pid_of "kgw_$1" ;;
  esac
}

# record CELL PATH ROUND VALUE OPS CPU_TICKS P50 P99
record() {
  "$PY" -c 'import json,sys; a=sys.argv[1:]; print(json.dumps({"cell":a[0],"path":a[1],"round":int(a[2]),"value":float(a[3]),"ops":float(a[4]),"cpu_ticks":(None if a[5]=="" else float(a[5])),"p50":(None if a[6]=="" else float(a[6])),"p99":(None if a[7]=="" else float(a[7]))}))' "$@" >>"$RES"
}

# measure CELL PATH ROUND: runs one cell through one path.
measure() {
  local cell=$1 path=$2 round=$3 backend port rpid before="" after="" out ops value p50="" p99=""
  case $cell in
    bulk*) backend=iperf ;;
    rtt*) backend=echo ;;
    *) backend=etcd ;;
  esac
  port=$(port_of $backend "$path")
  rpid=$(relay_pid $backend "$path")
  [[ -n "$rpid" ]] && before=$(cpu_ticks "$rpid")
  case $cell in
    bulk1|bulk4)
      local streams=${cell#bulk}
      out=$(timeout $((T + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$T" -P "$streams" -J 2>&1) ||
        out=$(timeout $((T + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$T" -P "$streams" -J 2>&1)
      value=$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out" 2>/dev/null) || value=""
      ops=$(jq -r '.end.sum_received.bytes / 1048576' <<<"$out" 2>/dev/null) || ops=""  # MiB
      ;;
    rtt1|rtt16)
      out=$(timeout $((T + 20)) "$BENCH" tcp-rtt --target "127.0.0.1:$port" --conns "${cell#rtt}" \
              --size 64 --duration "${T}s" --json 2>&1)
      value=$(jq -r '.round_trips_per_sec' <<<"$out" 2>/dev/null) || value=""
      ops=$(jq -r '.round_trips' <<<"$out" 2>/dev/null) || ops=""
      p50=$(jq -r '.p50_us' <<<"$out" 2>/dev/null); p99=$(jq -r '.p99_us' <<<"$out" 2>/dev/null)
      ;;
    put-*|range-*)
      local clients=${cell##*-c} args=()
      case $cell in
        put-*) args=(put --key-size 8 --val-size 256 --key-space-size 100000) ;;
        range-l-*) args=(range bench-range-key --consistency l) ;;
        range-s-*) args=(range bench-range-key --consistency s) ;;
      esac
      out=$(timeout $((T + 30)) "$BENCH" --endpoints "127.0.0.1:$port" --conns 1 \
              --clients "$clients" --duration "${T}s" --json --no-progress "${args[@]}" 2>&1)
      value=$(jq -r '.rps' <<<"$out" 2>/dev/null) || value=""
      ops=$(jq -r '.requests' <<<"$out" 2>/dev/null) || ops=""
      p50=$(jq -r '.percentiles.p50 * 1e6' <<<"$out" 2>/dev/null)
      p99=$(jq -r '.percentiles.p99 * 1e6' <<<"$out" 2>/dev/null)
      local errs; errs=$(jq -r '.error_count' <<<"$out" 2>/dev/null)
      [[ "$errs" =~ ^[0-9]+$ && "$errs" != 0 ]] && echo "   $cell via $path: $errs errors" >&2
      ;;
  esac
  [[ -n "$rpid" ]] && after=$(cpu_ticks "$rpid")
  if [[ ! "$value" =~ ^[0-9.e+-]+$ ]]; then
    echo "   $cell via $path (round $round) FAILED: $(head -c 300 <<<"$out")" >&2
    return 0
  fi
  local ticks=""
  [[ -n "$before" && -n "$after" ]] && ticks=$((after - before))
  record "$cell" "$path" "$round" "$value" "$ops" "$ticks" "${p50:-}" "${p99:-}"
  printf '   %-12s %-8s %14.2f\n' "$cell" "$path" "$value"
}

CELLS=(bulk1 bulk4 rtt1 rtt16 put-c1 put-c64 range-l-c1 range-l-c64 range-s-c1 range-s-c64)
PATHS=(direct etcd-gw keel-gw)
START=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  echo "== round $r of $ROUNDS"
  for cell in "${CELLS[@]}"; do
    for ((i = 0; i < 3; i++)); do
      measure "$cell" "${PATHS[$(((i + r - 1) % 3))]}" "$r"
    done
  done
done
ELAPSED=$((SECONDS - START))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

"$PY" - "$RES" "$OUT" "$CLK_TCK" "$ROUNDS" "$T" "$ELAPSED" "$QUICK" "$KEEL" "$BENCH" \
  "$LOAD_BEFORE" "$LOAD_AFTER" <<'PYEOF'
import json, statistics, sys, datetime, os, subprocess
res, out, clk, rounds, t, elapsed, quick, keel, bench, load0, load1 = sys.argv[1:]
clk = float(clk)
rows = [json.loads(l) for l in open(res) if l.strip()]
def med(cell, path, key="value"):
    v = [r[key] for r in rows if r["cell"] == cell and r["path"] == path and r[key] is not None]
    return statistics.median(v) if v else None
def cpu_us(cell, path):
    # relay CPU per op over all rounds: sum ticks / sum ops
    rs = [r for r in rows if r["cell"] == cell and r["path"] == path and r["cpu_ticks"] is not None]
    ops = sum(r["ops"] for r in rs)
    if not rs or ops <= 0: return None
    return sum(r["cpu_ticks"] for r in rs) / clk * 1e6 / ops
def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b
def f(v, fmt="{:,.1f}"):
    return "—" if v is None else fmt.format(v)
def fr(v):
    return "—" if v is None else "{:.2f}×".format(v)
names = {
  "bulk1": "bulk, 1 stream (Gbit/s)", "bulk4": "bulk, 4 streams (Gbit/s)",
  "rtt1": "64 B round trips, 1 conn (/s)", "rtt16": "64 B round trips, 16 conns (/s)",
  "put-c1": "put, 1 client (req/s)", "put-c64": "put, 64 clients (req/s)",
  "range-l-c1": "linearizable range, 1 client (req/s)",
  "range-l-c64": "linearizable range, 64 clients (req/s)",
  "range-s-c1": "serializable range, 1 client (req/s)",
  "range-s-c64": "serializable range, 64 clients (req/s)",
}
cells = list(names)
L = []
L.append("# Gateway benchmark: direct vs `etcd gateway` vs `keel gateway`")
L.append("")
L.append("Run {} UTC on {} ({} cores); {} round(s), {} s per cell, medians; path order rotated per round; "
         "load generator, relay and backend share the machine. Total {} s{}.".format(
  datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), os.uname().nodename, os.cpu_count(),
  rounds, t, elapsed, " (--quick)" if quick == "1" else ""))
L.append("")
L.append("Binaries: keel `{}`, keel-bench `{}`. Load average before / after: {} / {} "
         "(anything above ~1 means other work shared the cores).".format(keel, bench, load0, load1))
L.append("")
L.append("| what | direct | etcd gw | keel gw | keel ÷ direct | etcd-gw ÷ direct | keel ÷ etcd-gw |")
L.append("|---|---|---|---|---|---|---|")
fmt = lambda c: "{:,.2f}" if c.startswith("bulk") else "{:,.0f}"
for c in cells:
    d, e, k = med(c, "direct"), med(c, "etcd-gw"), med(c, "keel-gw")
    L.append("| {} | {} | {} | {} | {} | {} | {} |".format(names[c], f(d, fmt(c)), f(e, fmt(c)), f(k, fmt(c)),
             fr(ratio(k, d)), fr(ratio(e, d)), fr(ratio(k, e))))
L.append("")
L.append("Latency (median over rounds of each run's p50 / p99, µs):")
L.append("")
L.append("| what | direct p50 / p99 | etcd gw p50 / p99 | keel gw p50 / p99 |")
L.append("|---|---|---|---|")
for c in cells:
    if c.startswith("bulk"): continue
    L.append("| {} | {} | {} | {} |".format(names[c], *[
        "{} / {}".format(f(med(c, p, "p50")), f(med(c, p, "p99"))) for p in ("direct", "etcd-gw", "keel-gw")]))
L.append("")
L.append("Relay CPU (utime+stime of the gateway process from /proc/<pid>/stat, all rounds), "
         "µs per round trip / per request / per MiB:")
L.append("")
L.append("| what | etcd gw | keel gw | keel ÷ etcd |")
L.append("|---|---|---|---|")
for c in cells:
    e, k = cpu_us(c, "etcd-gw"), cpu_us(c, "keel-gw")
    L.append("| {} | {} | {} | {} |".format(names[c], f(e), f(k), fr(ratio(k, e))))
L.append("")
# Goals from the issue.
kv = [c for c in cells if c.startswith(("put", "range"))]
kv_ratios = [ratio(med(c, "keel-gw"), med(c, "direct")) for c in kv]
kv_ratios = [x for x in kv_ratios if x is not None]
egw_ratios = [ratio(med(c, "etcd-gw"), med(c, "direct")) for c in kv]
egw_ratios = [x for x in egw_ratios if x is not None]
goals = []
def goal(text, value, target, ok):
    goals.append("| {} | {} | {} | {} |".format(text, value, target, "met" if ok else "**missed**"))
if kv_ratios:
    m = statistics.median(kv_ratios)
    goal("KV req/s keel ÷ direct (median of {} cells; min {:.2f}×)".format(len(kv_ratios), min(kv_ratios)),
         "{:.2f}× (etcd gw {:.2f}×)".format(m, statistics.median(egw_ratios) if egw_ratios else float('nan')),
         "≥ 0.97×", m >= 0.97)
r16 = ratio(med("rtt16", "keel-gw"), med("rtt16", "etcd-gw"))
if r16 is not None: goal("round trips at 16 conns, keel ÷ etcd gw", fr(r16), "≥ 2×", r16 >= 2)
for c in ("rtt1", "rtt16"):
    cr = ratio(cpu_us(c, "keel-gw"), cpu_us(c, "etcd-gw"))
    if cr is not None: goal("relay CPU per round trip ({}), keel ÷ etcd".format(c), fr(cr), "≤ 0.5×", cr <= 0.5)
for c in ("bulk1", "bulk4"):
    b = ratio(med(c, "keel-gw"), med(c, "direct"))
    e = ratio(med(c, "etcd-gw"), med(c, "direct"))
    if b is not None: goal("bulk ({}) keel ÷ direct".format(c), "{} (etcd gw {})".format(fr(b), fr(e)), "≥ 0.85×", b >= 0.85)
L.append("Goals:")
L.append("")
L.append("| goal | measured | target | |")
L.append("|---|---|---|---|")
L.extend(goals)
L.append("")
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
print("written to", out)
PYEOF
