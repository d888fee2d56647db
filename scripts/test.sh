#!/usr/bin/env bash
# The one test command: installs what the build needs, builds, and runs every
# test (unit tests, and integration tests over veth pairs in namespaces they
# create and remove). Needs root: the integration tests use network
# namespaces, XDP and AF_XDP, and fail (they never skip) without them.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --all-targets
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
