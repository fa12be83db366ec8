#!/usr/bin/env bash
# Starts a local stack for trying keel: one etcd member (Debian's etcd, until
# keel's own member exists) on 127.0.0.1:2379, keel's gateway on
# 127.0.0.1:23790 (metrics :23791) and keel's grpc-proxy on 127.0.0.1:23792
# (metrics :23793) in front of it. State and logs go to $KEEL_LOCAL_DIR
# (default ~/.local/share/keel-local). Stop it with scripts/stop-local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${KEEL_LOCAL_DIR:-$HOME/.local/share/keel-local}"
mkdir -p "$dir"
keel=build/bin/keel
[ -x "$keel" ] || { echo "build/bin/keel is missing: run scripts/setup.sh first" >&2; exit 1; }

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
wait_port() {  # wait_port PORT SECONDS
  for _ in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

if running etcd; then
  echo "etcd already running (pid $(cat "$dir/etcd.pid"))"
else
  nohup etcd --name local --data-dir "$dir/etcd-data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster local=http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_port 2379 20 || { echo "etcd did not start; see $dir/etcd.log" >&2; exit 1; }
  echo "etcd started (pid $(cat "$dir/etcd.pid"), log $dir/etcd.log)"
fi

if running gateway; then
  echo "keel gateway already running (pid $(cat "$dir/gateway.pid"))"
else
  nohup "$keel" gateway start --listen-addr 127.0.0.1:23790 --endpoints 127.0.0.1:2379 \
    --metrics-addr http://127.0.0.1:23791 >"$dir/gateway.log" 2>&1 &
  echo $! >"$dir/gateway.pid"
  wait_port 23790 10 || { echo "keel gateway did not start; see $dir/gateway.log" >&2; exit 1; }
  echo "keel gateway started (pid $(cat "$dir/gateway.pid"), log $dir/gateway.log)"
fi

if running grpc-proxy; then
  echo "keel grpc-proxy already running (pid $(cat "$dir/grpc-proxy.pid"))"
else
  nohup "$keel" grpc-proxy start --listen-addr 127.0.0.1:23792 --endpoints 127.0.0.1:2379 \
    --advertise-client-url 127.0.0.1:23792 --metrics-addr http://127.0.0.1:23793 \
    --data-dir "$dir/grpc-proxy" >"$dir/grpc-proxy.log" 2>&1 &
  echo $! >"$dir/grpc-proxy.pid"
  wait_port 23792 10 || { echo "keel grpc-proxy did not start; see $dir/grpc-proxy.log" >&2; exit 1; }
  echo "keel grpc-proxy started (pid $(cat "$dir/grpc-proxy.pid"), log $dir/grpc-proxy.log)"
fi

cat <<MSG

Try it (etcdctl talks to keel's gateway on 127.0.0.1:23790):
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23790 put greeting hello
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23790 get greeting
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23790 watch greeting   # in another shell, then put again
  curl -s http://127.0.0.1:23791/metrics | grep keel_gateway
  curl -s http://127.0.0.1:23791/health
And the same through keel's grpc-proxy on 127.0.0.1:23792:
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23792 get greeting
  curl -s http://127.0.0.1:23793/metrics | grep grpc_server_handled_total
Stop everything with scripts/stop-local.sh
MSG
