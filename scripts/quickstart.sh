#!/usr/bin/env bash
# Quick start: on a fresh machine, as root, this installs the dependencies,
# builds, creates two namespaces joined by a veth pair, blasts a generated
# file from one to the other over AF_XDP, shows the verified result, and
# removes everything it made.
#
#   ./scripts/quickstart.sh [SIZE_MIB]     (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-256}
name=xbqs

./scripts/install-deps.sh
cargo build --release --locked
bin=$PWD/target/release/xdpblast

work=$(mktemp -d)
cleanup() {
  [[ -n "${rx_pid:-}" ]] && kill "$rx_pid" 2>/dev/null || true
  ./scripts/veth.sh down "$name"
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

./scripts/veth.sh up "$name"
eval "$(./scripts/veth.sh env "$name")"
echo "quickstart: generating a ${size_mib} MiB file"
head -c "$((size_mib << 20))" /dev/urandom > "$work/in.bin"

ip netns exec "$RX_NS" "$bin" --log warn recv --iface "$RX_IF" --listen "$RX_IP:9000" --out "$work/out.bin" \
  > "$work/recv.txt" 2> "$work/recv.log" &
rx_pid=$!
for _ in $(seq 100); do grep -q ready "$work/recv.log" 2>/dev/null && break; sleep 0.1; done

echo "quickstart: sender ($TX_NS) -> receiver ($RX_NS)"
ip netns exec "$TX_NS" "$bin" send "$work/in.bin" --iface "$TX_IF" --dst "$RX_IP:9000"
wait "$rx_pid"; rx_pid=
echo "quickstart: receiver said"
cat "$work/recv.txt"
if cmp -s "$work/in.bin" "$work/out.bin"; then
  echo "quickstart: byte-identical (cmp), BLAKE3 digest verified by both ends"
else
  echo "quickstart: FILES DIFFER" >&2; exit 1
fi
