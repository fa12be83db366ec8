#!/usr/bin/env bash
# Coalescing and cache benchmark (issue 5): `etcd grpc-proxy start` vs
# `keel grpc-proxy start` (and etcd directly, for reference) in front of the
# same etcd member, in the same run.
#
#   bench/coalesce.sh [--quick] [--transport h2|grpc] [--out FILE] [KEEL_BIN_DIR]
#
# keel-bench speaks gRPC with --transport (default h2: gRPC framing on
# nghttp2, a few µs of client CPU per message, so that the 2 cores measure
# the proxies rather than the load generator; grpc: gRPC C++).
#
# Loads:
#  watch-N-cC  N watchers on one key over C connections (one stream per
#              connection), then puts one at a time: put -> seen by the last
#              watcher (p50/p99), the member's watcher count, and the proxy's
#              RSS growth per watcher (each proxy is restarted per run);
#              3 rounds (--quick: 1), target order rotated, medians: the
#              cell at 1,000 connections swings by a third run to run.
#  lease-N     N leases kept alive over N/10 streams (a keep-alive every 2 s
#              per lease, TTL 6 s): reply latency, the member's open
#              keep-alive streams. lease-N: every lease starts at once, so
#              all N keep-alives come in one burst every 2 s; lease-N-spread:
#              each lease starts at a random point of the first 2 s, as
#              independent clients would. direct-1s: the same leases sent to
#              etcd on one stream, as a coalescing proxy sends them.
#              3 rounds (--quick: 1), target order rotated, medians: a
#              burst's p99 swings by half from one run to the next.
#  range-*     one key read by C clients (-cC), serializable (s1: etcd's
#              proxy serves it from its cache) or linearizable (l1); req/s
#              and proxy CPU over RANGE_ROUNDS rounds (target order rotated
#              per round): the median req/s, the CPU summed over the rounds.
#              Over one connection, where keel-bench's h2 transport sends
#              from one thread, which keel's cache hits outrun; -n2: over
#              two connections, a keel-bench thread per core.
# KEEL_BIN_DIR (or $KEEL_BIN_DIR) holds `keel`; default <checkout>/build/bin.
# Writes bench/results/coalesce-<date>.md.
set -uo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$SRC_DIR/bench/lib.sh"

QUICK=0
TRANSPORT=h2
OUT=
BIN_DIR=${KEEL_BIN_DIR:-$SRC_DIR/build/bin}
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --transport) TRANSPORT=$2; shift ;;
    -h|--help) sed -n '2,/^set /{/^set /!p}' "$0"; exit 0 ;;
    *) BIN_DIR=$1 ;;
  esac
  shift
done

if ((QUICK)); then
  WATCHERS=(1000); CONNS=(1 100); LEASES=(1000); PUTS=20; LEASE_T=6; T=2; LIMIT=600
  RANGE_ROUNDS=1; WATCH_ROUNDS=1; LEASE_ROUNDS=1
else
  WATCHERS=(1000 10000); CONNS=(1 100 1000); LEASES=(1000 10000); PUTS=50; LEASE_T=10; T=5
  LIMIT=2400; RANGE_ROUNDS=3; WATCH_ROUNDS=3; LEASE_ROUNDS=3
fi
KEEL="$BIN_DIR/keel"
[[ -x "$KEEL" ]] || { echo "coalesce.sh: no keel binary at $KEEL (pass its directory)" >&2; exit 2; }
BENCH=$(find_keel_bench "$BIN_DIR") || { echo "coalesce.sh: keel-bench not found (build it or set KEEL_BENCH)" >&2; exit 2; }

bench_init
bench_watchdog "$LIMIT"
mkdir -p "$SRC_DIR/bench/results"
OUT=${OUT:-$SRC_DIR/bench/results/coalesce-$(date -u +%Y-%m-%d-%H%M).md}
RES="$WORK/results.jsonl"
: >"$RES"

read -r P_ETCD P_PEER P_EPX P_KPX < <(free_ports 4)
start_etcd etcd "$P_ETCD" "$P_PEER" "" ""
wait_etcd "127.0.0.1:$P_ETCD" || exit 1
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$P_ETCD" put bench-range-key \
  "$(printf 'v%.0s' $(seq 1 256))" >/dev/null
METRICS="http://127.0.0.1:$P_ETCD/metrics"

PID_epx=""
PID_kpx=""
# start_proxy TARGET: (re)starts that proxy and sets PORT to where to send load.
start_proxy() {
  case $1 in
    etcd-px)
      stop epx
      start epx etcd grpc-proxy start --listen-addr "127.0.0.1:$P_EPX" \
        --endpoints "127.0.0.1:$P_ETCD"
      PORT=$P_EPX ;;
    keel-px)
      stop kpx
      start kpx "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KPX" \
        --endpoints "127.0.0.1:$P_ETCD"
      PORT=$P_KPX ;;
    direct|direct-1s) PORT=$P_ETCD ;;
  esac
  wait_etcd "127.0.0.1:$PORT" >/dev/null
}
proxy_pid() { case $1 in etcd-px) pid_of epx ;; keel-px) pid_of kpx ;; *) echo "" ;; esac; }

# run TARGET LOAD COUNT -- keel-bench args...: one load against a freshly
# started proxy; records the report, the proxy's idle and peak RSS and CPU.
run() {
  local target=$1 load=$2 count=$3; shift 4
  local port pid idle="" peak="" c0="" c1="" out rc
  start_proxy "$target" || { echo "   $target: proxy did not start" >&2; return 0; }
  port=$PORT
  pid=$(proxy_pid "$target")
  if [[ -n "$pid" ]]; then idle=$(rss_kb "$pid"); c0=$(cpu_ticks "$pid"); fi
  # RSS is sampled only for loads with a count (watchers, leases): on 2
  # cores the sampler's own forks would tax a throughput cell.
  (
    local p=0 r
    while [[ -n "$pid" ]] && ((count > 0)) && kill -0 "$pid" 2>/dev/null; do
      r=$(rss_kb "$pid" 2>/dev/null || echo 0)
      ((r > p)) && p=$r && echo "$p" >"$WORK/peak"
      sleep 0.1
    done
  ) &
  local sampler=$!
  echo 0 >"$WORK/peak"
  out=$(timeout 600 "$BENCH" --endpoints "127.0.0.1:$port" --transport "$TRANSPORT" --json \
          --no-progress "$@" \
          2>"$WORK/bench.err")
  rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  if [[ -n "$pid" ]]; then peak=$(cat "$WORK/peak"); c1=$(cpu_ticks "$pid"); fi
  if ((rc != 0)) || ! jq -e . >/dev/null 2>&1 <<<"$out"; then
    echo "   $target / $load: keel-bench failed (exit $rc): $(head -c 300 "$WORK/bench.err")" >&2
    return 0
  fi
  printf '%s' "$out" >"$WORK/report.json"
  "$PY" - "$target" "$load" "$count" "${idle:-}" "${peak:-}" "${c0:-}" "${c1:-}" "$CLK_TCK" \
    "$WORK/report.json" >>"$RES" <<'PYEOF'
import json, sys
target, load, count, idle, peak, c0, c1, clk, report = sys.argv[1:]
n = lambda x: float(x) if x else None
print(json.dumps({"target": target, "load": load, "count": int(count),
                  "idle_kb": n(idle), "peak_kb": n(peak),
                  "cpu_s": None if not c0 else (float(c1) - float(c0)) / float(clk),
                  "report": json.load(open(report))}))
PYEOF
  printf '   %-8s %-16s done\n' "$target" "$load"
}

TARGETS=(direct etcd-px keel-px)
START=$SECONDS
for n in "${WATCHERS[@]}"; do
  for c in "${CONNS[@]}"; do
    for ((round = 0; round < WATCH_ROUNDS; round++)); do
      for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        t=${TARGETS[(i + round) % ${#TARGETS[@]}]}
        run "$t" "watch-$n-c$c" "$n" -- --conns "$c" watch-latency --streams "$c" \
          --watch-per-stream $((n / c)) --put-total "$PUTS" --event-timeout 10s \
          --metrics-url "$METRICS"
      done
    done
  done
done
# direct-1s: what etcd itself takes to answer them all on one stream, as it
# gets them from a proxy that coalesces (the floor for both proxies' p99).
LEASE_TARGETS=(direct direct-1s etcd-px keel-px)
for n in "${LEASES[@]}"; do
  for spread in "" "-spread"; do
    for ((round = 0; round < LEASE_ROUNDS; round++)); do
      for ((i = 0; i < ${#LEASE_TARGETS[@]}; i++)); do
        t=${LEASE_TARGETS[(i + round) % ${#LEASE_TARGETS[@]}]}
        if [[ $t == direct-1s ]]; then conns=1 streams=1; else conns=10 streams=$((n / 10)); fi
        run "$t" "lease-$n$spread" "$n" -- --conns "$conns" --clients 64 --duration "${LEASE_T}s" \
          lease-keepalive --leases "$n" --streams "$streams" --ttl 6 --interval 2s \
          ${spread:+--spread} --metrics-url "$METRICS"
      done
    done
  done
done
for ((round = 0; round < RANGE_ROUNDS; round++)); do
  for cell in range-s1-c64 range-l1-c64 range-s1-c256 range-s1-c64-n2; do
    spec=${cell#range-}  # s1-c64, or s1-c64-n2 for two connections
    cons=${spec:0:1}
    clients=${spec#*-c}; clients=${clients%%-*}
    conns=1; [[ $spec == *-n* ]] && conns=${spec##*-n}
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
      t=${TARGETS[(i + round) % ${#TARGETS[@]}]}
      run "$t" "$cell" 0 -- --conns "$conns" --clients "$clients" --duration "${T}s" \
        range bench-range-key --consistency "$cons"
    done
  done
done
ELAPSED=$((SECONDS - START))

"$PY" - "$RES" "$OUT" "$ELAPSED" "$(etcd --version | head -1)" "$TRANSPORT" "$RANGE_ROUNDS" \
  "$WATCH_ROUNDS" "$LEASE_ROUNDS" <<'PYEOF'
import json, statistics, sys
res, out, elapsed, etcd_version, transport, range_rounds, watch_rounds, lease_rounds = sys.argv[1:]
rows = [json.loads(l) for l in open(res) if l.strip()]
runs = {}  # (target, load) -> every round's row
for r in rows:
    runs.setdefault((r["target"], r["load"]), []).append(r)
median = lambda v: statistics.median(v) if v else None
loads = list(dict.fromkeys(r["load"] for r in rows))
f = lambda v, fmt="{:,.0f}": "—" if v is None else fmt.format(v)
def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b
L = ["# Coalescing and cache: etcd grpc-proxy vs keel grpc-proxy", "",
     "bench/coalesce.sh, {} s, {}; one etcd member; each proxy restarted per load; "
     "keel-bench --transport={}.".format(elapsed, etcd_version, transport), ""]
L += ["## Watch fan-out: N watchers on one key over C connections, put → seen by the last watcher", "",
      "Median over {} round(s) (target order rotated per round; each run on a freshly started "
      "proxy) of each run's p50 and p99; puts and errors summed; member watchers the most "
      "any run saw.".format(watch_rounds), "",
      "| load | target | p50 ms | p99 ms | p50 per run ms | p50 ÷ etcd-px | puts | errors | member watchers | proxy RSS growth KB/watcher |",
      "|---|---|---|---|---|---|---|---|---|---|"]
def fan_pc(r, q):
    pc = ((r["report"].get("fanout") or {}).get("percentiles") or {})
    return pc[q] * 1e3 if q in pc else None
for load in loads:
    if not load.startswith("watch"): continue
    p50 = {t: median([v for v in (fan_pc(r, "p50") for r in runs.get((t, load), [])) if v is not None])
           for t in ("direct", "etcd-px", "keel-px")}
    for t in ("direct", "etcd-px", "keel-px"):
        rs = runs.get((t, load), [])
        if not rs: continue
        fans = [r["report"].get("fanout") or {} for r in rs]
        growths = [(r["peak_kb"] - r["idle_kb"]) / r["count"] for r in rs
                   if r["peak_kb"] is not None and r["idle_kb"] is not None and r["count"]]
        watchers = [(r["report"].get("server") or {}).get("watchers") for r in rs]
        watchers = [w for w in watchers if w is not None]
        p99 = median([v for v in (fan_pc(r, "p99") for r in rs) if v is not None])
        L.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(load, t,
            f(p50[t], "{:.2f}"), f(p99, "{:.2f}"),
            ", ".join(f(fan_pc(r, "p50"), "{:.2f}") for r in rs),
            "—" if t == "etcd-px" else f(ratio(p50[t], p50["etcd-px"]), "{:.2f}×"),
            f(sum(x.get("requests") or 0 for x in fans)),
            f(sum(x.get("error_count") or 0 for x in fans)),
            f(max(watchers) if watchers else None), f(median(growths), "{:.2f}")))
L += ["", "## Lease keep-alives: N leases over N/10 streams, one keep-alive per lease every 2 s "
      "(-spread: leases started at random points of the first 2 s instead of in one burst); "
      "direct-1s: etcd directly with every lease on one stream, as a coalescing proxy sends them", "",
      "Median over {} round(s) (target order rotated per round; each run on a freshly started "
      "proxy) of each run's p50 and p99; replies, errors and proxy CPU summed; member "
      "keep-alive streams the most any run saw.".format(lease_rounds), "",
      "| load | target | replies | p50 ms | p99 ms | p99 per run ms | errors | member keep-alive streams | proxy CPU s |",
      "|---|---|---|---|---|---|---|---|---|"]
for load in loads:
    if not load.startswith("lease"): continue
    for t in ("direct", "direct-1s", "etcd-px", "keel-px"):
        rs = runs.get((t, load), [])
        if not rs: continue
        pc = lambda r, q: ((r["report"].get("percentiles") or {}).get(q) or 0) * 1e3
        streams = [(r["report"].get("server") or {}).get("keepalive_streams") for r in rs]
        streams = [s for s in streams if s is not None]
        cpus = [r["cpu_s"] for r in rs if r["cpu_s"] is not None]
        L.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(load, t,
            f(sum(r["report"].get("requests") or 0 for r in rs)),
            f(median([pc(r, "p50") for r in rs]), "{:.2f}"), f(median([pc(r, "p99") for r in rs]), "{:.2f}"),
            ", ".join(f(pc(r, "p99"), "{:.1f}") for r in rs),
            f(sum(r["report"].get("error_count") or 0 for r in rs)),
            f(max(streams) if streams else None), f(sum(cpus) if cpus else None, "{:.2f}")))
L += ["", "## One key read by many clients (etcd's proxy caches serializable reads); "
      "median req/s of {} round(s), CPU over all".format(range_rounds), "",
      "| load | direct req/s | etcd-px req/s | keel-px req/s | keel ÷ etcd-px | keel ÷ direct | etcd-px µs CPU/req | keel-px µs CPU/req |",
      "|---|---|---|---|---|---|---|---|"]
for load in loads:
    if not load.startswith("range"): continue
    rps = {t: median([r["report"]["rps"] for r in runs.get((t, load), []) if r["report"].get("rps")])
           for t in ("direct", "etcd-px", "keel-px")}
    def cpu(t):
        rs = [r for r in runs.get((t, load), []) if r["cpu_s"] is not None]
        n = sum(r["report"].get("requests") or 0 for r in rs)
        return sum(r["cpu_s"] for r in rs) * 1e6 / n if n else None
    L.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(load, f(rps["direct"]),
        f(rps["etcd-px"]), f(rps["keel-px"]), f(ratio(rps["keel-px"], rps["etcd-px"]), "{:.2f}×"),
        f(ratio(rps["keel-px"], rps["direct"]), "{:.2f}×"), f(cpu("etcd-px"), "{:.0f}"),
        f(cpu("keel-px"), "{:.0f}")))
L.append("")
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
print("wrote", out)
PYEOF
