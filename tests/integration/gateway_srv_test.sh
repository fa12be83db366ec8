#!/bin/bash
# `keel gateway start` with DNS SRV discovery (proxy.md 1.3, 3.8; member.md 6.2), and
# `keel grpc-proxy start` with the same flags (section g).
#
# Runs in a private network + mount namespace: only `lo` exists, so no packet
# leaves 127.0.0.0/8 and the fixed ports below cannot clash with anything else
# on the machine; /etc/resolv.conf is bind-mounted (in this namespace only) to
# point at a dnsmasq on 127.0.0.1:53 that serves the test zone example.test.
# Real etcd 3.4 members are the backends; each holds key "who" = its own name,
# so `etcdctl get who` through the gateway tells which member a connection
# reached. Real `etcd gateway start` runs beside keel for the error texts.
#
# Env: KEEL_BIN_DIR (the keel binary), run as root (ctest does).
set -uo pipefail

if [[ -z "${KEEL_SRV_TEST_IN_NS:-}" ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "FAIL: needs root for unshare --net --mount" >&2
    exit 1
  fi
  exec env KEEL_SRV_TEST_IN_NS=1 unshare --net --mount --propagation private bash "$0" "$@"
fi

: "${KEEL_BIN_DIR:?KEEL_BIN_DIR must point at the built binaries}"
KEEL="$KEEL_BIN_DIR/keel"
NAME_TCP="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/srv/name_tcp.py"
[[ -x "$KEEL" ]] || { echo "FAIL: $KEEL not found" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keel-gateway-srv.XXXXXX")
PIDS=()
DNS_PID=""

cleanup() {
  local p
  for p in "${PIDS[@]}" $DNS_PID; do kill -9 "$p" 2>/dev/null; done
  for p in "${PIDS[@]}" $DNS_PID; do wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() {
  echo "FAIL: $*" >&2
  local f
  for f in "$TMP"/*.log; do
    [[ -f "$f" ]] || continue
    echo "---- $(basename "$f") (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
  exit 1
}
step() { echo "== $*"; }

# wait_for SECONDS CMD...: polls CMD every 100 ms until it succeeds.
wait_for() {
  local timeout=$1
  shift
  local end=$((SECONDS + timeout))
  while ((SECONDS < end)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  "$@" >/dev/null 2>&1
}

can_connect() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# bg NAME CMD...: starts CMD in the background, output to $TMP/NAME.log.
bg() {
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}

stop_pid() {
  kill "$1" 2>/dev/null
  wait "$1" 2>/dev/null
  local kept=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

# ---- namespace: loopback, resolver -----------------------------------------

ip link set lo up || fail "ip link set lo up"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:2\n' >"$TMP/resolv.conf"
mount --bind "$TMP/resolv.conf" /etc/resolv.conf || fail "bind-mount resolv.conf"

# start_dns CONF-LINES...: (re)starts dnsmasq with the base zone plus the lines.
start_dns() {
  if [[ -n "$DNS_PID" ]]; then
    kill "$DNS_PID" 2>/dev/null
    wait "$DNS_PID" 2>/dev/null
    DNS_PID=""
  fi
  {
    echo "local=/example.test/"   # NXDOMAIN for unknown names, as a real zone would
    echo "local-ttl=1"            # TTL of every answer, SRV included: drives refresh
    echo "host-record=m1.example.test,127.0.0.1"
    echo "host-record=m2.example.test,127.0.0.1"
    echo "host-record=tls.example.test,127.0.0.1"
    printf '%s\n' "$@"
  } >"$TMP/dnsmasq.conf"
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=127.0.0.1 --port=53 \
    --bind-interfaces --pid-file= --conf-file="$TMP/dnsmasq.conf" >>"$TMP/dnsmasq.log" 2>&1 &
  DNS_PID=$!
  wait_for 10 getent hosts m1.example.test || fail "dnsmasq did not come up"
}

# ---- TLS material ----------------------------------------------------------

mk_ca() {  # mk_ca NAME
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=keel test $1" -keyout "$TMP/$1.key" -out "$TMP/$1.pem" 2>/dev/null ||
    fail "openssl CA $1"
}
mk_ca ca
mk_ca otherca
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=tls.example.test" \
  -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null || fail "openssl server csr"
printf 'subjectAltName=DNS:tls.example.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  >"$TMP/server.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/server.ext" -out "$TMP/server.pem" 2>/dev/null ||
  fail "openssl server cert"

# ---- etcd members (three independent one-member clusters) ------------------

M1=12379 M2=22379 M3=32379   # client ports; peer port = client + 1
start_etcd() {  # start_etcd NAME CLIENT_PORT SCHEME [extra flags]
  local name=$1 port=$2 scheme=$3
  shift 3
  bg "$name" etcd --name "$name" --data-dir "$TMP/$name.etcd" \
    --listen-client-urls "$scheme://127.0.0.1:$port" \
    --advertise-client-urls "$scheme://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "$name=http://127.0.0.1:$((port + 1))" "$@"
}
ctl() { ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 5s "$@"; }

start_etcd m1 $M1 http
start_etcd m2 $M2 http
start_etcd m3 $M3 https --cert-file "$TMP/server.pem" --key-file "$TMP/server.key"
TLS_CTL=(--cacert "$TMP/ca.pem")
wait_for 60 ctl --endpoints 127.0.0.1:$M1 put who m1 || fail "etcd m1 did not start"
wait_for 60 ctl --endpoints 127.0.0.1:$M2 put who m2 || fail "etcd m2 did not start"
wait_for 60 ctl "${TLS_CTL[@]}" --endpoints https://127.0.0.1:$M3 put who m3 ||
  fail "etcd m3 (TLS) did not start"

# ---- helpers for gateways ----------------------------------------------------

# start_gw NAME PORT FLAGS...: starts keel gateway on 127.0.0.1:PORT; waits until
# it accepts connections (fails if it exits first).
start_gw() {
  local name=$1 port=$2
  shift 2
  bg "$name" "$KEEL" gateway start --listen-addr "127.0.0.1:$port" "$@"
  local pid=$LAST_PID
  local end=$((SECONDS + 30))
  while ! can_connect 127.0.0.1 "$port"; do
    kill -0 "$pid" 2>/dev/null || fail "$name exited: $(cat "$TMP/$name.log")"
    ((SECONDS < end)) || fail "$name did not listen on $port"
    sleep 0.1
  done
  GW_PID=$pid
}

# who_via PORT [etcdctl flags]: the "who" value read through 127.0.0.1:PORT.
who_via() {
  local port=$1
  shift
  ctl --endpoints "127.0.0.1:$port" "$@" get who --print-value-only 2>/dev/null
}

expect_who() {  # expect_who PORT WANT WHAT
  local got
  got=$(who_via "$1") || fail "$3: etcdctl through gateway :$1 failed"
  [[ "$got" == "$2" ]] || fail "$3: reached '$got', want '$2'"
}

# run_fail NAME CMD...: CMD must exit non-zero within 30 s; output in $TMP/NAME.out.
run_fail() {
  local name=$1
  shift
  timeout 30 "$@" >"$TMP/$name.out" 2>&1
  local rc=$?
  [[ $rc -ne 0 && $rc -ne 124 ]] || fail "$name: expected a start-up error, rc=$rc: $(cat "$TMP/$name.out")"
}

# ---- (a) _etcd-client._tcp + --insecure-discovery ---------------------------

step "(a) SRV _etcd-client._tcp with --insecure-discovery"
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,$M1,0,0"
# --endpoints names m2: reaching m1 proves the SRV records were used.
start_gw gw-a 23791 --discovery-srv example.test --insecure-discovery \
  --endpoints "127.0.0.1:$M2"
for i in 1 2 3; do expect_who 23791 m1 "(a) connection $i"; done
grep -q "discovered cluster from SRV" "$TMP/gw-a.log" || fail "(a) no 'discovered cluster from SRV' log"
stop_pid "$GW_PID"

# ---- (b) only http records, no --insecure-discovery: fall back like etcd -----

step "(b) http-only SRV records without --insecure-discovery fall back to --endpoints"
start_gw gw-b 23792 --discovery-srv example.test --endpoints "127.0.0.1:$M2"
expect_who 23792 m2 "(b) keel"
grep -q "failed to validate discovered endpoints" "$TMP/gw-b.log" ||
  fail "(b) keel did not log the failed validation"
grep -q "is insecure" "$TMP/gw-b.log" || fail "(b) keel did not say why the target was dropped"
grep -q "falling back to --endpoints" "$TMP/gw-b.log" || fail "(b) keel did not log the fallback"
stop_pid "$GW_PID"
# The same with etcd's own gateway: it falls back the same way.
bg etcd-gw-b etcd gateway start --listen-addr 127.0.0.1:23802 --discovery-srv example.test \
  --endpoints "127.0.0.1:$M2"
ETCD_GW=$LAST_PID
wait_for 30 can_connect 127.0.0.1 23802 || fail "(b) etcd gateway did not start"
expect_who 23802 m2 "(b) etcd gateway"
stop_pid "$ETCD_GW"

# ---- (c) --discovery-srv-name prod -> _etcd-client-prod._tcp ----------------

step "(c) --discovery-srv-name prod"
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,$M1,0,0" \
  "srv-host=_etcd-client-prod._tcp.example.test,m2.example.test,$M2,0,0"
start_gw gw-c 23793 --discovery-srv example.test --discovery-srv-name prod \
  --insecure-discovery --endpoints "127.0.0.1:$M1"
for i in 1 2 3; do expect_who 23793 m2 "(c) connection $i"; done
stop_pid "$GW_PID"

# ---- (d) _etcd-client-ssl._tcp to a TLS etcd, verified with the CA ----------

step "(d) _etcd-client-ssl._tcp to a TLS member, TLS passed through"
start_dns "srv-host=_etcd-client-ssl._tcp.example.test,tls.example.test,$M3,0,0" \
  "srv-host=_etcd-client._tcp.example.test,m1.example.test,$M1,0,0"
# Not insecure: the http record is dropped, the https target must complete a
# TLS handshake that verifies against ca.pem (etcd only TCP-connects).
start_gw gw-d 23794 --discovery-srv example.test --trusted-ca-file "$TMP/ca.pem" \
  --endpoints "127.0.0.1:$M1"
grep -q "is insecure" "$TMP/gw-d.log" || fail "(d) the http record was not dropped"
for i in 1 2 3; do
  got=$(ctl "${TLS_CTL[@]}" --endpoints "https://tls.example.test:23794" get who \
    --print-value-only 2>&1) || fail "(d) etcdctl over TLS through the gateway: $got"
  [[ "$got" == "m3" ]] || fail "(d) reached '$got', want m3"
done
stop_pid "$GW_PID"
# A CA that did not sign the member's certificate: the https target is dropped
# (TLS verification failed) and the gateway falls back to --endpoints.
start_gw gw-d2 23795 --discovery-srv example.test --trusted-ca-file "$TMP/otherca.pem" \
  --endpoints "127.0.0.1:$M1"
grep -q "failed to dial" "$TMP/gw-d2.log" || fail "(d) a target with an untrusted certificate was kept"
expect_who 23795 m1 "(d) fallback after failed TLS verification"
stop_pid "$GW_PID"

# ---- (e) SRV refresh without restart ----------------------------------------

step "(e) SRV records change; the gateway follows the TTL"
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,$M1,0,0"
start_gw gw-e 23796 --discovery-srv example.test --insecure-discovery \
  --endpoints "127.0.0.1:$M1"
expect_who 23796 m1 "(e) before the change"
start_dns "srv-host=_etcd-client._tcp.example.test,m2.example.test,$M2,0,0"
refreshed() { [[ "$(who_via 23796)" == "m2" ]]; }
wait_for 60 refreshed || fail "(e) the gateway did not pick up the new SRV target"
# Every new connection now goes to the new member only.
for i in 1 2 3; do expect_who 23796 m2 "(e) after the change, connection $i"; done
kill -0 "$GW_PID" || fail "(e) the gateway restarted or died"
stop_pid "$GW_PID"

# ---- (f) priorities and weights (proxy.md section 4, gateway scenario 7) ----

step "(f) SRV priority classes and weights, end to end"
# Plain TCP backends that answer each connection with their name: A (priority
# 0, weight 10), B (0, 30), C (priority 1, weight 0).
PA=41001 PB=41002 PC=41003
bg name-a /usr/bin/python3 "$NAME_TCP" serve A $PA
PID_A=$LAST_PID
bg name-b /usr/bin/python3 "$NAME_TCP" serve B $PB
PID_B=$LAST_PID
bg name-c /usr/bin/python3 "$NAME_TCP" serve C $PC
for p in $PA $PB $PC; do wait_for 10 can_connect 127.0.0.1 "$p" || fail "(f) backend :$p"; done
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,$PA,0,10" \
  "srv-host=_etcd-client._tcp.example.test,m2.example.test,$PB,0,30" \
  "srv-host=_etcd-client._tcp.example.test,tls.example.test,$PC,1,0"
start_gw gw-f 23798 --discovery-srv example.test --insecure-discovery \
  --endpoints "127.0.0.1:$M1"
/usr/bin/python3 "$NAME_TCP" count 23798 4000 >"$TMP/f-weights.out" || fail "(f) client"
count_of() { awk -v n="$1" '$1 == n { print $2 }' "$2"; }
A=$(count_of A "$TMP/f-weights.out")
B=$(count_of B "$TMP/f-weights.out")
[[ -z "$(count_of C "$TMP/f-weights.out")" ]] || fail "(f) C chosen while A and B were up"
[[ "$((${A:-0} + ${B:-0}))" == 4000 ]] || fail "(f) lost connections: $(cat "$TMP/f-weights.out")"
# Expected 1:3; the bounds are > 4 standard deviations wide for 4,000 picks
# (the exact 1:3 within 2 % over 40,000 seeded picks is endpoint_picker_test).
awk -v a="$A" -v b="$B" 'BEGIN { r = b / a; exit !(r > 2.5 && r < 3.6) }' ||
  fail "(f) A:B = $A:$B, want about 1:3"
echo "   A:B = $A:$B"
stop_pid "$PID_A"
stop_pid "$PID_B"
/usr/bin/python3 "$NAME_TCP" count 23798 50 >"$TMP/f-fallback.out" || fail "(f) client"
[[ "$(count_of C "$TMP/f-fallback.out")" == 50 ]] ||
  fail "(f) with A and B down, C must get every connection: $(cat "$TMP/f-fallback.out")"
stop_pid "$GW_PID"

# ---- (g) keel grpc-proxy start takes its endpoints from SRV records too ------

step "(g) grpc-proxy: SRV records, --discovery-srv-name, an https record with --cacert"
# expect_px_who NAME PORT WANT FLAGS...: a grpc-proxy started with FLAGS on
# 127.0.0.1:PORT serves reads from the member named WANT.
expect_px_who() {
  local name=$1 port=$2 want=$3
  shift 3
  bg "$name" "$KEEL" grpc-proxy start --listen-addr "127.0.0.1:$port" \
    --data-dir "$TMP/$name.data" "$@"
  local pid=$LAST_PID
  reached() { [[ "$(who_via "$port")" == "$want" ]]; }
  wait_for 60 reached || fail "$name: reads through the proxy reached '$(who_via "$port")', want '$want'"
  grep -q "discovered cluster from SRV" "$TMP/$name.log" || fail "$name: no 'discovered cluster from SRV' log"
  stop_pid "$pid"
}
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,$M1,0,0" \
  "srv-host=_etcd-client-prod._tcp.example.test,m2.example.test,$M2,0,0"
# --endpoints names another member: reaching the SRV one proves the records were used.
expect_px_who px-g1 23781 m1 --discovery-srv example.test --insecure-discovery \
  --endpoints "127.0.0.1:$M2"
expect_px_who px-g2 23782 m2 --discovery-srv example.test --discovery-srv-name prod \
  --insecure-discovery --endpoints "127.0.0.1:$M1"
start_dns "srv-host=_etcd-client-ssl._tcp.example.test,tls.example.test,$M3,0,0"
# Not insecure: the https target must verify against --cacert; the proxy then
# speaks TLS to it while its own clients stay plain.
expect_px_who px-g3 23783 m3 --discovery-srv example.test --cacert "$TMP/ca.pem" \
  --endpoints "127.0.0.1:$M1"

# ---- start-up errors: same words as etcd's gateway ---------------------------

step "start-up errors match etcd's"
# expect_same_error NAME ARGS...: both gateways refuse to start, and keel's
# output contains etcd's message (etcd prints it as its last line).
expect_same_error() {
  local name=$1
  shift
  run_fail "etcd-$name" etcd gateway start "$@"
  run_fail "keel-$name" "$KEEL" gateway start "$@"
  local want
  want=$(grep -v '^{' "$TMP/etcd-$name.out" | grep -v '^\s*$' | tail -n 1)
  [[ -n "$want" ]] || fail "$name: etcd printed no message: $(cat "$TMP/etcd-$name.out")"
  grep -qF -- "$want" "$TMP/keel-$name.out" ||
    fail "$name: keel's output lacks etcd's '$want': $(cat "$TMP/keel-$name.out")"
  echo "   $name: $want"
}
start_dns
expect_same_error unresolvable --listen-addr 127.0.0.1:23797 \
  --endpoints nosuchhost.example.test:2379
expect_same_error no-srv --listen-addr 127.0.0.1:23797 --discovery-srv nothing.example.test
expect_same_error loop --listen-addr 127.0.0.1:23797 --endpoints 127.0.0.1:23797
start_dns "srv-host=_etcd-client._tcp.example.test,m1.example.test,23797,0,0"
expect_same_error srv-loop --listen-addr 127.0.0.1:23797 --discovery-srv example.test \
  --insecure-discovery

echo "PASS"
