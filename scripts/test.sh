#!/usr/bin/env bash
# The one test command: installs what the build needs, builds, and runs every
# test (unit tests, and integration tests over veth pairs in namespaces they
# create and remove), then a 30 s fuzz smoke run per target. Needs root: the
# integration tests use network namespaces, XDP and AF_XDP, and fail (they
# never skip) without them.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --all-targets
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
# A bounded fuzz smoke run of every target (the long runs are in the notes).
./scripts/fuzz.sh 30
