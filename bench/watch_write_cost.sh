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
# (256-byte values, 100,000 keys); the watcher must have seen events. A
# watcher that asks for prev_kv makes etcd read the old value of every
# event. Cell order rotated per round; the median req/s of the rounds.
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
# cell NAME: one watcher on that path, a put run directly on etcd.
cell() {
  local name=$1 args=() ep=$P_ETCD wpid="" out rps seen
  case $name in
    direct-prev-kv) args=(--prev-kv) ;;
    etcd-px) ep=$P_EPX ;;
    keel-px) ep=$P_KPX ;;
  esac
  if [[ $name != none ]]; then
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ep" watch --prefix "" "${args[@]}" \
      >"$WORK/watch.out" 2>&1 &
    wpid=$!
    sleep 1
  fi
  out=$("$BENCH" --endpoints "127.0.0.1:$P_ETCD" --transport h2 --clients 64 --duration 5s \
          --json --no-progress put --key-size 8 --val-size 256 --key-space-size 100000 2>/dev/null)
  rps=$(jq -r '.rps' <<<"$out" 2>/dev/null || echo "")
  if [[ -n "$wpid" ]]; then
    sleep 0.5
    kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null
    seen=$(grep -c '^PUT$' "$WORK/watch.out")
    if ((seen == 0)); then
      echo "   $name: the watcher saw no event: $(head -c 300 "$WORK/watch.out")" >&2
      return
    fi
  fi
  [[ -n "$rps" && "$rps" != null ]] || { echo "   $name: keel-bench failed" >&2; return; }
  printf '%s\t%s\n' "$name" "$rps" >>"$RES"
  printf '   %-16s %8.0f put/s\n' "$name" "$rps"
}

for ((round = 0; round < ROUNDS; round++)); do
  echo "round $((round + 1)) of $ROUNDS"
  for ((i = 0; i < ${#CELLS[@]}; i++)); do
    cell "${CELLS[(i + round) % ${#CELLS[@]}]}"
  done
done

"$PY" - "$RES" "$ROUNDS" $((SECONDS - BEGIN)) "$(etcd --version | head -1)" >"$OUT" <<'PYEOF'
import statistics, sys
res, rounds, secs, version = sys.argv[1:]
by = {}
for line in open(res):
    name, rps = line.split()
    by.setdefault(name, []).append(float(rps))
med = {k: statistics.median(v) for k, v in by.items()}
labels = {
    "none": "no watcher",
    "direct": "`etcdctl watch --prefix \"\"` directly on etcd",
    "direct-prev-kv": "the same with `--prev-kv`, directly on etcd",
    "etcd-px": "`etcdctl watch --prefix \"\"` through `etcd grpc-proxy`",
    "keel-px": "`etcdctl watch --prefix \"\"` through `keel grpc-proxy`",
}
print("# What a whole-keyspace watcher costs etcd's write rate\n")
print(f"bench/watch_write_cost.sh, {secs} s, {version}; one etcd member; both proxies "
      f"with default flags and running throughout; put with 64 clients directly on etcd "
      f"(keel-bench --transport=h2, 5 s, 256-byte values, 100,000 keys) while one client "
      f"watches the whole keyspace through each path; median of {rounds} round(s), order rotated.\n")
print("| watcher | put/s (median) | runs | ÷ no watcher |")
print("|---|---|---|---|")
for k in ["none", "direct", "direct-prev-kv", "etcd-px", "keel-px"]:
    if k not in med:
        print(f"| {labels[k]} | failed | 0 | — |")
        continue
    ratio = f"{med[k] / med['none']:.2f}×" if "none" in med else "—"
    runs = ", ".join(f"{x:,.0f}" for x in by[k])
    print(f"| {labels[k]} | {med[k]:,.0f} | {runs} | {ratio} |")
if "keel-px" in med and "etcd-px" in med:
    print(f"\nkeel-px ÷ etcd-px: {med['keel-px'] / med['etcd-px']:.2f}×")
PYEOF
cat "$OUT"
