#!/usr/bin/env bash
# Quick start: on a fresh machine, as root, this installs the dependencies,
# builds, and runs `xdpblast bench`, which creates two namespaces joined by a
# veth pair, generates a file, blasts it in every mode (AF_XDP and the TCP
# rungs of the zero-copy ladder), verifies every transfer with BLAKE3, prints
# the table, and removes everything it made.
#
#   ./scripts/quickstart.sh [SIZE] [RUNS]     (defaults: 1G, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
runs=${2:-3}

./scripts/install-deps.sh
cargo build --release --locked
mkdir -p bench-results
./target/release/xdpblast bench --size "$size" --runs "$runs" \
  --json bench-results/bench.json --plot bench-results/bench.svg
