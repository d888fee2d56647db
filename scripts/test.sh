#!/usr/bin/env bash
# The one test command: installs what the build needs, builds, and runs every
# test (unit tests, integration tests over veth pairs in namespaces they
# create and remove, and zero-copy tests over virtio-net in a QEMU guest),
# then a 30 s fuzz smoke run per target. Needs root: the
# integration tests use network namespaces, XDP and AF_XDP, and fail (they
# never skip) without them.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
# tests/zerocopy.rs runs AF_XDP zero-copy over virtio-net in a QEMU guest:
# QEMU and the guest kernel, fetched once and cached.
./scripts/vm.sh install
cargo build --release --locked --all-targets
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
# A bounded fuzz smoke run of every target (the long runs are in the notes).
./scripts/fuzz.sh 30
