#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) from a copy of the
# committed seed corpus, so the tree is not modified. A crash fails the run
# and leaves the input under fuzz/artifacts/. Needs a nightly toolchain and
# cargo-fuzz (scripts/install-deps.sh installs cargo-fuzz).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-30}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then targets=(wire receiver); fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  cp -r "corpus/$t" "$work/$t"
  echo "fuzz.sh: $t for ${secs}s"
  set +e
  cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$work/$t.log" 2>&1
  rc=$?
  set -e
  grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)" "$work/$t.log" || true
  if ((rc != 0)); then
    tail -n 60 "$work/$t.log" >&2
    echo "fuzz.sh: $t failed (exit $rc); a crashing input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
