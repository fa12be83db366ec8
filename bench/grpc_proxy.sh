#!/usr/bin/env bash
# gRPC proxy benchmark: direct etcd vs `etcd grpc-proxy start` vs
# `keel grpc-proxy start` (default flags, range cache on) vs a second
# `keel grpc-proxy start --range-cache-max-bytes=0` (no cache), plus
# `keel gateway start` (an L4 hop: what any proxy in between costs), all in
# front of the same etcd member, alternating in every round (order rotated per
# round), medians over the rounds, plus each proxy's CPU per request from
# /proc/<pid>/stat. The issue 4 goals are judged on the no-cache keel proxy.
#
#   bench/grpc_proxy.sh [--quick] [--rounds N] [--transport h2|grpc] [--namespace PREFIX]
#                       [--tls | --tls-etcd] [--out FILE] [KEEL_BIN_DIR]
#
# --tls: the load generator speaks TLS to every path (certificates made here
# with OpenSSL): etcd serves an https client URL next to its http one, and
# the direct and L4 gateway paths use it; both proxies terminate TLS
# (--cert-file/--key-file) and talk plain HTTP/2 to etcd's http URL. Implies
# --transport grpc (the h2 transport is plaintext only).
#
# --tls-etcd: as --tls, but both proxies also speak TLS to etcd, on its
# https URL (--cacert): TLS on every hop, as most deployments run.
#
# --namespace PREFIX: both proxies (etcd's and keel's) run with
# --namespace=PREFIX, so every request crosses each one's namespace layer;
# the keys read are loaded under PREFIX too (through a namespaced keel
# proxy), so a read through a proxy finds the same data as the same read
# made directly (unprefixed) or through the L4 gateway.
#
# keel-bench speaks gRPC with --transport (default h2, gRPC framing on
# nghttp2: a few µs of client CPU per request, so that the load generator
# takes less of the 2 cores from etcd and the proxies; grpc: gRPC C++).
#
# KEEL_BIN_DIR (or $KEEL_BIN_DIR) holds `keel`; default <checkout>/build/bin.
# keel-bench is taken from $KEEL_BENCH, KEEL_BIN_DIR or any build*/bin.
# Writes bench/results/grpc-proxy-<date>.md (see bench/README.md).
set -uo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$SRC_DIR/bench/lib.sh"

QUICK=0
ROUNDS=
TRANSPORT=h2
NS=
TLS=0
TLS_ETCD=0
OUT=
BIN_DIR=${KEEL_BIN_DIR:-$SRC_DIR/build/bin}
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --transport) TRANSPORT=$2; shift ;;
    --namespace) NS=$2; shift ;;
    --tls) TLS=1 ;;
    --tls-etcd) TLS=1; TLS_ETCD=1 ;;
    -h|--help) sed -n '2,/^set /{/^set /!p}' "$0"; exit 0 ;;
    *) BIN_DIR=$1 ;;
  esac
  shift
done

if ((QUICK)); then
  ROUNDS=${ROUNDS:-1}; T=1; CLIENTS=(1 64); LIMIT=400; KEYS=10000
else
  ROUNDS=${ROUNDS:-3}; T=3; CLIENTS=(1 16 64 256); LIMIT=2400; KEYS=100000
fi
if ((TLS)); then
  [[ "$TRANSPORT" == h2 ]] && TRANSPORT=grpc
  [[ "$TRANSPORT" == grpc ]] || { echo "grpc_proxy.sh: --tls needs --transport grpc" >&2; exit 2; }
fi
KEEL="$BIN_DIR/keel"
[[ -x "$KEEL" ]] || { echo "grpc_proxy.sh: no keel binary at $KEEL (pass its directory)" >&2; exit 2; }
"$KEEL" grpc-proxy start --help >/dev/null 2>&1 ||
  { echo "grpc_proxy.sh: $KEEL has no \`grpc-proxy start\`" >&2; exit 2; }
BENCH=$(find_keel_bench "$BIN_DIR") || { echo "grpc_proxy.sh: keel-bench not found (build it or set KEEL_BENCH)" >&2; exit 2; }

bench_init
bench_watchdog "$LIMIT"
mkdir -p "$SRC_DIR/bench/results"
TLS_TAG=
((TLS)) && TLS_TAG=-tls
((TLS_ETCD)) && TLS_TAG=-tls-etcd
OUT=${OUT:-$SRC_DIR/bench/results/grpc-proxy${NS:+-ns}$TLS_TAG-$(date -u +%Y-%m-%d-%H%M).md}
RES="$WORK/results.jsonl"
: >"$RES"

read -r P_ETCD P_PEER P_EPX P_KPX P_KPXNC P_KGW P_KLOAD P_ETCDS < <(free_ports 8)
NS_FLAGS=()
[[ -n "$NS" ]] && NS_FLAGS=(--namespace "$NS")
# With --tls: the flags of every TLS listener, etcd's extra https URL, what
# the load generator adds, and the scheme of the paths it talks to.
SERVE_TLS=()
ETCD_TLS=()
BENCH_TLS=()
SCHEME=
P_DIRECT=$P_ETCD
if ((TLS)); then
  CA="$WORK/ca.pem"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /O=keel-bench \
    -keyout "$WORK/ca.key" -out "$CA" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /O=keel-bench \
      -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null &&
    openssl x509 -req -in "$WORK/server.csr" -CA "$CA" -CAkey "$WORK/ca.key" -CAcreateserial \
      -days 1 -extfile <(printf 'subjectAltName=IP:127.0.0.1\n') -out "$WORK/server.pem" 2>/dev/null ||
    { echo "grpc_proxy.sh: making certificates failed" >&2; exit 1; }
  SERVE_TLS=(--cert-file "$WORK/server.pem" --key-file "$WORK/server.key")
  # (start_etcd sets --listen-client-urls too: etcd takes the last one.)
  ETCD_TLS=(--listen-client-urls "http://127.0.0.1:$P_ETCD,https://127.0.0.1:$P_ETCDS"
            "${SERVE_TLS[@]}")
  BENCH_TLS=(--cacert "$CA")
  SCHEME=https://
  P_DIRECT=$P_ETCDS
fi
# Where both proxies find etcd.
UPSTREAM=(--endpoints "127.0.0.1:$P_ETCD")
((TLS_ETCD)) && UPSTREAM=(--endpoints "https://127.0.0.1:$P_ETCDS" --cacert "$CA")
# wait_tls ADDR: wait_etcd over TLS when --tls.
wait_tls() {
  if ((TLS)); then ETCDCTL_CACERT=$CA wait_etcd "https://$1"; else wait_etcd "$1"; fi
}
VALUE=$(printf 'v%.0s' $(seq 1 256))

echo "== loading $KEYS keys, then restarting etcd (etcd 3.4 reads slow down after write bursts)"
start_etcd etcd "$P_ETCD" "$P_PEER" "" ""
wait_etcd "127.0.0.1:$P_ETCD" || exit 1
"$BENCH" --endpoints "127.0.0.1:$P_ETCD" --conns 4 --clients 64 --total "$KEYS" --key-size 8 \
  --val-size 256 --key-space-size "$KEYS" --sequential-keys --no-progress put >/dev/null ||
  { echo "grpc_proxy.sh: loading keys failed" >&2; exit 1; }
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$P_ETCD" put bench-range-key "$VALUE" >/dev/null
if [[ -n "$NS" ]]; then
  echo "== loading the same keys under $NS"
  start kload "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KLOAD" \
    --endpoints "127.0.0.1:$P_ETCD" --namespace "$NS"
  wait_etcd "127.0.0.1:$P_KLOAD" || exit 1
  "$BENCH" --endpoints "127.0.0.1:$P_KLOAD" --conns 4 --clients 64 --total "$KEYS" --key-size 8 \
    --val-size 256 --key-space-size "$KEYS" --sequential-keys --no-progress put >/dev/null ||
    { echo "grpc_proxy.sh: loading keys under $NS failed" >&2; exit 1; }
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$P_KLOAD" put bench-range-key "$VALUE" >/dev/null
  stop kload
fi
stop etcd
# Same data dir: etcd ignores the --initial-cluster flags of an existing member.
start_etcd etcd "$P_ETCD" "$P_PEER" "" "" "${ETCD_TLS[@]}"
wait_etcd "http://127.0.0.1:$P_ETCD" || exit 1
wait_tls "127.0.0.1:$P_DIRECT" || exit 1

start epx etcd grpc-proxy start --listen-addr "127.0.0.1:$P_EPX" "${UPSTREAM[@]}" \
  "${NS_FLAGS[@]}" "${SERVE_TLS[@]}"
start kpx "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KPX" \
  "${UPSTREAM[@]}" "${NS_FLAGS[@]}" "${SERVE_TLS[@]}"
start kpxnc "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$P_KPXNC" \
  "${UPSTREAM[@]}" --range-cache-max-bytes=0 "${NS_FLAGS[@]}" "${SERVE_TLS[@]}"
start kgw "$KEEL" gateway start --listen-addr "127.0.0.1:$P_KGW" --endpoints "127.0.0.1:$P_DIRECT"
wait_port "$P_KGW" || exit 1
wait_port "$P_EPX" || exit 1
wait_port "$P_KPX" || exit 1
wait_port "$P_KPXNC" || exit 1
wait_tls "127.0.0.1:$P_EPX" || exit 1
wait_tls "127.0.0.1:$P_KPX" || exit 1
wait_tls "127.0.0.1:$P_KPXNC" || exit 1

port_of() {
  case $1 in
    direct) echo "$P_DIRECT" ;; etcd-px) echo "$P_EPX" ;;
    keel-px) echo "$P_KPX" ;; keel-nc) echo "$P_KPXNC" ;; keel-gw) echo "$P_KGW" ;;
  esac
}
relay_pid() {
  case $1 in
    direct) echo "" ;; etcd-px) pid_of epx ;;
    keel-px) pid_of kpx ;; keel-nc) pid_of kpxnc ;; keel-gw) pid_of kgw ;;
  esac
}

# record CELL PATH ROUND RPS OPS RELAY_TICKS SERVER_TICKS P50_US P99_US ERRORS
record() {
  "$PY" -c 'import json,sys; a=sys.argv[1:]; n=lambda x: None if x=="" else float(x); print(json.dumps({"cell":a[0],"path":a[1],"round":int(a[2]),"value":float(a[3]),"ops":float(a[4]),"cpu_ticks":n(a[5]),"server_ticks":n(a[6]),"p50":n(a[7]),"p99":n(a[8]),"errors":n(a[9])}))' "$@" >>"$RES"
}

# measure CELL PATH ROUND
measure() {
  local cell=$1 path=$2 round=$3 port rpid before="" after="" s0 s1 out args=()
  local clients=${cell##*-c}
  port=$(port_of "$path")
  rpid=$(relay_pid "$path")
  case $cell in
    put-*) args=(--key-size 8 --val-size 256 --key-space-size "$KEYS" put) ;;
    txn-*) args=(--key-size 8 --val-size 256 --key-space-size "$KEYS" txn-put) ;;
    range-l1-*) args=(range bench-range-key --consistency l) ;;
    range-s1-*) args=(range bench-range-key --consistency s) ;;
    range-lall-*) args=(--key-size 8 --key-space-size "$KEYS" range --random-keys --consistency l) ;;
    range-sall-*) args=(--key-size 8 --key-space-size "$KEYS" range --random-keys --consistency s) ;;
  esac
  [[ -n "$rpid" ]] && before=$(cpu_ticks "$rpid")
  s0=$(cpu_ticks "$(pid_of etcd)")
  out=$(timeout $((T + 30)) "$BENCH" --endpoints "${SCHEME}127.0.0.1:$port" "${BENCH_TLS[@]}" \
          --transport "$TRANSPORT" --conns 1 \
          --clients "$clients" --duration "${T}s" --json --no-progress "${args[@]}" 2>&1)
  s1=$(cpu_ticks "$(pid_of etcd)")
  [[ -n "$rpid" ]] && after=$(cpu_ticks "$rpid")
  local value ops p50 p99 errs
  value=$(jq -r '.rps' <<<"$out" 2>/dev/null) || value=""
  ops=$(jq -r '.requests' <<<"$out" 2>/dev/null) || ops=""
  p50=$(jq -r '.percentiles.p50 * 1e6' <<<"$out" 2>/dev/null) || p50=""
  p99=$(jq -r '.percentiles.p99 * 1e6' <<<"$out" 2>/dev/null) || p99=""
  errs=$(jq -r '.error_count' <<<"$out" 2>/dev/null) || errs=""
  if [[ ! "$value" =~ ^[0-9.e+-]+$ ]]; then
    echo "   $cell via $path (round $round) FAILED: $(head -c 300 <<<"$out")" >&2
    return 0
  fi
  [[ "$errs" =~ ^[0-9]+$ && "$errs" != 0 ]] && echo "   $cell via $path: $errs errors" >&2
  local ticks=""
  [[ -n "$before" && -n "$after" ]] && ticks=$((after - before))
  record "$cell" "$path" "$round" "$value" "$ops" "$ticks" "$((s1 - s0))" "$p50" "$p99" "${errs:-}"
  printf '   %-16s %-8s %12.0f req/s\n' "$cell" "$path" "$value"
}

CELLS=()
for c in "${CLIENTS[@]}"; do CELLS+=("put-c$c"); done
for c in "${CLIENTS[@]}"; do CELLS+=("txn-c$c"); done
for c in "${CLIENTS[@]}"; do CELLS+=("range-l1-c$c"); done
for c in "${CLIENTS[@]}"; do CELLS+=("range-s1-c$c"); done
for c in "${CLIENTS[@]}"; do CELLS+=("range-lall-c$c"); done
CELLS+=("range-sall-c64")
PATHS=(direct etcd-px keel-px keel-nc keel-gw)
START=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  echo "== round $r of $ROUNDS"
  for cell in "${CELLS[@]}"; do
    for ((i = 0; i < ${#PATHS[@]}; i++)); do
      measure "$cell" "${PATHS[$(((i + r - 1) % ${#PATHS[@]}))]}" "$r"
    done
  done
done
ELAPSED=$((SECONDS - START))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

"$PY" - "$RES" "$OUT" "$CLK_TCK" "$ROUNDS" "$T" "$ELAPSED" "$QUICK" "$KEEL" "$BENCH" \
  "$LOAD_BEFORE" "$LOAD_AFTER" "$KEYS" "$TRANSPORT" "$NS" "$TLS" "$TLS_ETCD" <<'PYEOF'
import json, statistics, sys, datetime, os
res, out, clk, rounds, t, elapsed, quick, keel, bench, load0, load1, keys, transport, ns, tls, \
    tls_etcd = sys.argv[1:]
clk = float(clk)
rows = [json.loads(l) for l in open(res) if l.strip()]
def med(cell, path, key="value"):
    v = [r[key] for r in rows if r["cell"] == cell and r["path"] == path and r[key] is not None]
    return statistics.median(v) if v else None
def cpu_us(cell, path, key="cpu_ticks"):
    rs = [r for r in rows if r["cell"] == cell and r["path"] == path and r[key] is not None]
    ops = sum(r["ops"] for r in rs)
    if not rs or ops <= 0: return None
    return sum(r[key] for r in rs) / clk * 1e6 / ops
def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b
def f(v, fmt="{:,.0f}"):
    return "—" if v is None else fmt.format(v)
def fr(v):
    return "—" if v is None else "{:.2f}×".format(v)
cells = []
for r in rows:
    if r["cell"] not in cells: cells.append(r["cell"])
def name(c):
    kind, n = c.rsplit("-c", 1)
    return {"put": "put", "txn": "txn (1 put)", "range-l1": "linearizable range, one key",
            "range-s1": "serializable range, one key ¹",
            "range-lall": "linearizable range, random key of {:,}".format(int(keys)),
            "range-sall": "serializable range, random key of {:,}".format(int(keys))}[kind] + \
           ", {} client{}".format(n, "" if n == "1" else "s")
L = ["# gRPC proxy benchmark: direct vs `etcd grpc-proxy` vs `keel grpc-proxy` (cache on / off){}{}".format(
         ", both with `--namespace`" if ns else "",
         ", TLS on every hop" if tls_etcd == "1" else ", clients over TLS" if tls == "1" else ""), ""]
L.append("Run {} UTC on {} ({} cores); {} round(s), {} s per cell, 1 gRPC connection, medians; "
         "paths: direct etcd, `etcd grpc-proxy`, `keel grpc-proxy` with default flags (range cache on) "
         "and `keel grpc-proxy --range-cache-max-bytes=0` (no cache), and `keel gateway` (an L4 "
         "hop, for what any proxy in between costs); "
         "path order rotated per round; load generator, proxies and etcd share the machine.{} "
         "Total {} s{}.".format(datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
         os.uname().nodename, os.cpu_count(), rounds, t,
         (" **Both proxies (etcd's and keel's, with and without the cache) run with `--namespace={}`**; "
          "the keys read exist under that prefix too.".format(ns) if ns else "") +
         (" **TLS on every hop**: clients speak TLS on every path, etcd's https client URL "
          "(direct, and through the L4 gateway); both proxies terminate TLS and speak TLS to "
          "etcd's https URL (`--cacert`)." if tls_etcd == "1" else
          " **Clients speak TLS on every path**: etcd's https client URL (direct, and through the L4 "
          "gateway), both proxies terminate TLS and talk plain HTTP/2 to etcd's http URL."
          if tls == "1" else ""),
         elapsed, " (--quick)" if quick == "1" else ""))
L.append("")
L.append("Binaries: keel `{}`, keel-bench `{}` (--transport={}). Load average before / after: "
         "{} / {}.".format(keel, bench, transport, load0, load1))
L.append("")
L.append("| what (req/s) | direct | etcd proxy | keel proxy | keel proxy, no cache | keel gateway (L4) | "
         "keel ÷ direct | keel no-cache ÷ direct | L4 gateway ÷ direct | etcd proxy ÷ direct | "
         "keel ÷ etcd proxy |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|")
for c in cells:
    d, e, k, n = med(c, "direct"), med(c, "etcd-px"), med(c, "keel-px"), med(c, "keel-nc")
    g = med(c, "keel-gw")
    L.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
             name(c), f(d), f(e), f(k), f(n), f(g), fr(ratio(k, d)), fr(ratio(n, d)),
             fr(ratio(g, d)), fr(ratio(e, d)), fr(ratio(k, e))))
L.append("")
L.append("¹ Both proxies answer serializable reads of one hot key from a cache (keel's with default "
         "flags; the \"keel proxy, no cache\" column is without it), so these rows are not counted "
         "in the uncached goals below.")
L.append("")
L.append("Latency (median of each run's p50 / p99, µs):")
L.append("")
L.append("| what | direct | etcd proxy | keel proxy | keel proxy, no cache | keel gateway (L4) |")
L.append("|---|---|---|---|---|---|")
for c in cells:
    L.append("| {} | {} | {} | {} | {} | {} |".format(name(c), *[
        "{} / {}".format(f(med(c, p, "p50")), f(med(c, p, "p99")))
        for p in ("direct", "etcd-px", "keel-px", "keel-nc", "keel-gw")]))
L.append("")
L.append("CPU per request (utime+stime from /proc/<pid>/stat, summed over rounds ÷ requests), µs:")
L.append("")
L.append("| what | etcd server (direct) | etcd proxy | keel proxy | keel proxy, no cache | "
         "keel gateway (L4) | keel ÷ etcd proxy |")
L.append("|---|---|---|---|---|---|---|")
for c in cells:
    e, k, n = cpu_us(c, "etcd-px"), cpu_us(c, "keel-px"), cpu_us(c, "keel-nc")
    g = cpu_us(c, "keel-gw")
    L.append("| {} | {} | {} | {} | {} | {} | {} |".format(
             name(c), f(cpu_us(c, "direct", "server_ticks"), "{:.1f}"), f(e, "{:.1f}"),
             f(k, "{:.1f}"), f(n, "{:.1f}"), f(g, "{:.1f}"), fr(ratio(k, e))))
L.append("")
uncached = [c for c in cells if not c.startswith("range-s1")]
er = [x for x in (ratio(med(c, "etcd-px"), med(c, "direct")) for c in uncached) if x is not None]
def goals(path, label):
    kr = [x for x in (ratio(med(c, path), med(c, "direct")) for c in uncached) if x is not None]
    cpu = [(c, x) for c, x in ((c, cpu_us(c, path)) for c in uncached) if x is not None]
    if kr:
        m = statistics.median(kr)
        L.append("| {} req/s ÷ direct | median {:.2f}×, min {:.2f}×, max {:.2f}× (etcd proxy: median {}) | ≥ 0.85× | {} |".format(
            label, m, min(kr), max(kr), "{:.2f}×".format(statistics.median(er)) if er else "—",
            "met" if min(kr) >= 0.85 else ("met by the median, not every cell" if m >= 0.85 else "**missed**")))
        # By concurrency: one client pays an extra hop's wake-ups whatever
        # the proxy (the L4 gateway line shows that floor).
        for lo, hi, what in ((1, 1, "1 client"), (16, 16, "16 clients"), (64, 256, "≥ 64 clients")):
            xs = [x for c, x in zip(uncached, (ratio(med(c, path), med(c, "direct")) for c in uncached))
                  if x is not None and lo <= int(c.rsplit("-c", 1)[1]) <= hi]
            if xs:
                L.append("| … at {} | median {:.2f}×, min {:.2f}× | | |".format(
                    what, statistics.median(xs), min(xs)))
    if cpu:
        xs = [x for _, x in cpu]
        many = [x for c, x in cpu if not c.endswith("-c1")]
        L.append("| {} CPU per request | {:.1f}–{:.1f} µs | ≤ 20 µs | {} |".format(
            label, min(xs), max(xs), "met" if max(xs) <= 20 else
            ("met at ≥ 16 clients, not at 1" if many and max(many) <= 20 else "**missed**")))
        for lo, hi, what in ((1, 1, "1 client"), (16, 16, "16 clients"), (64, 256, "≥ 64 clients")):
            sel = [x for c, x in cpu if lo <= int(c.rsplit("-c", 1)[1]) <= hi]
            if sel:
                L.append("| … at {} | {:.1f}–{:.1f} µs | | |".format(what, min(sel), max(sel)))
L.append("Goals (issue 4), over the {} uncached cells (all but the serializable one-key rows), "
         "judged on the keel proxy without its cache; the default-flags lines (cache on) are "
         "for information:".format(len(uncached)))
L.append("")
L.append("| goal | measured | target | |")
L.append("|---|---|---|---|")
goals("keel-nc", "keel proxy, no cache")
goals("keel-px", "keel proxy, default flags (cache on)")
goals("keel-gw", "for reference, an L4 hop (keel gateway)")
L.append("")
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
print("written to", out)
PYEOF
