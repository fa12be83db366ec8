#!/usr/bin/env bash
# What one client watching the whole keyspace through a proxy costs etcd's
# own write rate (issue 5): `etcd grpc-proxy start` vs `keel grpc-proxy
# start` (both with default flags, both running throughout) in front of the
# same etcd member, in the same run.
#
#   bench/watch_write_cost.sh [--rounds N] [--out FILE] [KEEL_BIN_DIR]
#
# Per cell, `etcdctl watch --prefix ""` runs through the given path (none,
# directly on etcd, directly with --prev-kv, through etcd's proxy, through
# keel's), then keel-bench puts with 64 clients directly on etcd for 5 s
# (256-byte values, 100,000 keys), and the share of those puts the watcher
# saw (given up to 10 s to catch up). A watcher that asks for prev_kv makes
# etcd read the old value of every event. keel's range cache (on by
# default) keeps its own whole-keyspace watch, without prev_kv, on etcd in
# every cell, "none" included. Cell order rotated per round, reversed every
# other round; the median req/s of the rounds. Exit status 1 if a cell
# failed.
# KEEL_BIN_DIR (or $KEEL_BIN_DIR) holds `keel`; default <checkout>/build/bin.
# Writes bench/results/watch-write-cost-<date>.md.
set -uo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$SRC_DIR/bench/lib.sh"

ROUNDS=3
OUT=
BIN_DIR=${KEEL_BIN_DIR:-$SRC_DIR/build/bin}
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,/^set /{/^set /!p}' "$0"; exit 0 ;;
    *) BIN_DIR=$1 ;;
  esac
  shift
done
KEEL="$BIN_DIR/keel"
[[ -x "$KEEL" ]] || { echo "watch_write_cost.sh: no keel binary at $KEEL (pass its directory)" >&2; exit 2; }
BENCH=$(find_keel_bench "$BIN_DIR") || { echo "watch_write_cost.sh: keel-bench not found" >&2; exit 2; }

bench_init
bench_watchdog $((ROUNDS * 120 + 120))
mkdir -p "$SRC_DIR/bench/results"
OUT=${OUT:-$SRC_DIR/bench/results/watch-write-cost-$(date -u +%Y-%m-%d-%H%M).md}
RES="$WORK/results.tsv"
: >"$RES"
BEGIN=$SECONDS

read -r P_ETCD P_PEER P_EPX P_KPX < <(free_ports 4)
start_etcd etcd "$P_ETCD" "$P_PEER" "" ""
wait_etcd "127.0.0.1:$P_ETCD" || exit 1
start epx etcd grpc-proxy start --listen-addr "127.0.0.1:$P_EPX" --endpoints "127.0.0.1:$P_ETCD"
start kpx "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KPX" --endpoints "127.0.0.1:$P_ETCD"
wait_etcd "127.0.0.1:$P_EPX" || exit 1
wait_etcd "127.0.0.1:$P_KPX" || exit 1

CELLS=(none direct direct-prev-kv etcd-px keel-px)
FAILED=0
# cell NAME: one watcher on that path, a put run directly on etcd.
cell() {
  local name=$1 args=() ep=$P_ETCD wpid="" out rps seen
  case $name in
    direct-prev-kv) args=(--prev-kv) ;;
    etcd-px) ep=$P_EPX ;;
    keel-px) ep=$P_KPX ;;
  esac
  if [[ $name != none ]]; then
    start watch env ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ep" watch --prefix "" "${args[@]}"
    wpid=$PID_watch
    sleep 1
  fi
  out=$("$BENCH" --endpoints "127.0.0.1:$P_ETCD" --transport h2 --clients 64 --duration 5s \
          --json --no-progress put --key-size 8 --val-size 256 --key-space-size 100000 \
          2>"$WORK/bench.err")
  rps=$(jq -r '.rps' <<<"$out" 2>/dev/null || echo "")
  puts=$(jq -r '.requests' <<<"$out" 2>/dev/null || echo 0)
  seen=$puts
  if [[ -n "$wpid" ]]; then
    for _ in $(seq 1 100); do
      seen=$(grep -c '^PUT$' "$WORK/watch.log")
      ((seen >= puts)) && break
      sleep 0.1
    done
    stop watch
    if ((seen == 0)); then
      echo "   $name: the watcher saw no event: $(head -c 300 "$WORK/watch.log")" >&2
      FAILED=1
      return
    fi
  fi
  if [[ -z "$rps" || "$rps" == null ]]; then
    echo "   $name: keel-bench failed: $(head -c 300 "$WORK/bench.err")" >&2
    FAILED=1
    return
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rps" "$seen" "$puts" >>"$RES"
  printf '   %-16s %8.0f put/s%s\n' "$name" "$rps" "${wpid:+, the watcher saw $seen of $puts}"
}

for ((round = 0; round < ROUNDS; round++)); do
  echo "round $((round + 1)) of $ROUNDS"
  for ((i = 0; i < ${#CELLS[@]}; i++)); do
    j=$(((i + round) % ${#CELLS[@]}))
    ((round % 2)) && j=$((${#CELLS[@]} - 1 - j))
    cell "${CELLS[j]}"
  done
done

"$PY" - "$RES" "$ROUNDS" $((SECONDS - BEGIN)) "$(etcd --version | head -1)" "$(nproc)" >"$OUT" <<'PYEOF'
import statistics, sys
res, rounds, secs, version, cores = sys.argv[1:]
by, seen = {}, {}
for line in open(res):
    name, rps, saw, puts = line.split()
    by.setdefault(name, []).append(float(rps))
    seen.setdefault(name, []).append(int(saw) / max(int(puts), 1))
med = {k: statistics.median(v) for k, v in by.items()}
labels = {
    "none": "no watcher",
    "direct": "`etcdctl watch --prefix \"\"` directly on etcd",
    "direct-prev-kv": "the same with `--prev-kv`, directly on etcd",
    "etcd-px": "`etcdctl watch --prefix \"\"` through `etcd grpc-proxy`",
    "keel-px": "`etcdctl watch --prefix \"\"` through `keel grpc-proxy`",
}
print("# What a whole-keyspace watcher costs etcd's write rate\n")
print(f"bench/watch_write_cost.sh, {secs} s, {version}; one etcd member; {cores} cores shared "
      f"by etcd, both proxies, the watcher and the load generator (what a proxy spends "
      f"forwarding events is taken from etcd too); both proxies with default flags and "
      f"running throughout (keel's range cache keeps a whole-keyspace watch without prev_kv "
      f"on etcd in every cell); put with 64 clients directly on etcd "
      f"(keel-bench --transport=h2, 5 s, 256-byte values, 100,000 keys) while one client "
      f"(`etcdctl watch`) watches the whole keyspace through each path; median of {rounds} "
      f"round(s), order rotated and reversed every other round.\n")
print("| watcher | put/s (median) | runs | ÷ no watcher | puts the watcher saw (lowest) |")
print("|---|---|---|---|---|")
for k in ["none", "direct", "direct-prev-kv", "etcd-px", "keel-px"]:
    if k not in med:
        print(f"| {labels[k]} | failed | 0 | — | — |")
        continue
    ratio = f"{med[k] / med['none']:.2f}×" if "none" in med else "—"
    runs = ", ".join(f"{x:,.0f}" for x in by[k])
    saw = "—" if k == "none" else f"{min(seen[k]):.0%}"
    print(f"| {labels[k]} | {med[k]:,.0f} | {runs} | {ratio} | {saw} |")
if "keel-px" in med and "etcd-px" in med:
    print(f"\nkeel-px ÷ etcd-px: {med['keel-px'] / med['etcd-px']:.2f}×")
PYEOF
cat "$OUT"
exit "$FAILED"
