#!/bin/bash
# Differential conformance suite for `keel grpc-proxy start` (issue 4): the same client
# operations (etcdctl 3.4, python3-etcd3) run directly against a real etcd 3.4.23 and through
# the proxy (plain and --namespace=ns/); exit codes, outputs and error strings must match.
# The harness lives in conformance/ (run.py; steps in steps.py, normalization rules in
# norm.py). It prints one diff per mismatching step and exits 1 if any step mismatches.
#
# Env: KEEL_BIN_DIR (the keel binary) or KEEL_PROXY_CMD (e.g. "etcd grpc-proxy start", to run
# the suite against etcd's own proxy; it fails the status-code and Lock-namespace checks).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${KEEL_PROXY_CMD:-}" ]]; then
  : "${KEEL_BIN_DIR:?KEEL_BIN_DIR must point at the built binaries}"
  [[ -x "$KEEL_BIN_DIR/keel" ]] || { echo "FAIL: $KEEL_BIN_DIR/keel not found" >&2; exit 1; }
fi
# /usr/bin/python3 has python3-etcd3 and grpc; a python3 earlier on PATH may not.
exec /usr/bin/python3 -B -u "$HERE/conformance/run.py" "$@"
