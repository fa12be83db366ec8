#!/usr/bin/env bash
# Installs every Debian package keel's build, tests and benchmarks need, then
# configures and builds a Release tree in build/ (binaries in build/bin/).
# Idempotent: safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libevent-dev libnghttp2-dev libgoogle-perftools-dev libssl-dev openssl libre2-dev libspdlog-dev libfmt-dev
  libleveldb-dev libsnappy-dev libgtest-dev libgmock-dev
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev libc-ares-dev libabsl-dev
  etcd-server etcd-client python3 python3-etcd3
  iperf3 dnsmasq-base iproute2 util-linux curl procps
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d keeps Debian's etcd-server package from starting a system etcd on :2379.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

BUILD_TYPE="${KEEL_BUILD_TYPE:-Release}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE"
cmake --build build -j"${KEEL_JOBS:-2}"
