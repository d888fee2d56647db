#!/usr/bin/env bash
# Installs what xdpblast needs to build, test and benchmark on Debian/Ubuntu.
# Idempotent: packages already present are left alone, so a warm machine pays
# for one dpkg query and nothing else.
set -euo pipefail

PKGS=(
  clang            # compiles bpf/xdpblast.bpf.c (libbpf-cargo drives it)
  llvm             # llvm-strip, used by libbpf-cargo on the BPF object
  libelf-dev       # libbpf-sys builds libbpf from source against libelf
  zlib1g-dev       # ... and zlib
  pkg-config
  make
  iproute2         # ip netns / ip link for the veth harness
  ethtool          # probe reports queues and driver features
  linux-libc-dev   # uapi headers (linux/if_xdp.h, linux/bpf.h)
  iperf3           # the bench's outside reference row (iperf3 -Z)
  util-linux       # setpriv: the tests run xdpblast unprivileged
  procps           # pgrep: the tests check no process outlives the bench
  tshark           # tests/dissector.rs decodes a capture with scripts/xdpblast.lua
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# The fuzz smoke run (scripts/fuzz.sh) needs cargo-fuzz.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
