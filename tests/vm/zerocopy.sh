# Runs inside the guest of scripts/vm.sh (busybox sh, as root): AF_XDP over
# virtio-net, zero-copy where the device allows it. It decides nothing: each
# check's JSON goes to the result stream (fd 3) between "@@begin KEY" and
# "@@end", and single facts as "@@ KEY VALUE"; tests/zerocopy.rs reads them
# and asserts. Every command is bounded by `timeout`.
#
# Wiring (see scripts/vm.sh): the NICs with MACs :01 and :02 (iommu_platform=on)
# are joined to each other only; they go into namespaces tx and rx. The pair
# :03 and :04 (iommu_platform=off) has no zero-copy: :03 stays in the
# guest's root namespace, its peer :04 goes into namespace peer.

set -u
TX_IP=10.99.0.1
RX_IP=10.99.0.2
PORT=9000
SIZE_MB=${SIZE_MB:-16}

iface_by_mac() {
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address")" = "$1" ] && basename "$d" && return 0
  done
  return 1
}

emit_file() { echo "@@begin $1" >&3; cat "$2" >&3; echo "" >&3; echo "@@end" >&3; }
fact() { echo "@@ $1 $2" >&3; }

TX=$(iface_by_mac 52:54:00:00:00:01)
RX=$(iface_by_mac 52:54:00:00:00:02)
NOZC=$(iface_by_mac 52:54:00:00:00:03)
NOZC_PEER=$(iface_by_mac 52:54:00:00:00:04)
ip netns add tx
ip netns add rx
ip link set "$TX" netns tx
ip link set "$RX" netns rx
ip -n tx addr add $TX_IP/24 dev "$TX"
ip -n rx addr add $RX_IP/24 dev "$RX"
for ns in tx rx; do ip -n $ns link set lo up; done
ip -n tx link set "$TX" up
ip -n rx link set "$RX" up
ip addr add 10.98.0.1/24 dev "$NOZC"
ip link set "$NOZC" up
ip netns add peer
ip link set "$NOZC_PEER" netns peer
ip -n peer addr add 10.98.0.2/24 dev "$NOZC_PEER"
ip -n peer link set "$NOZC_PEER" up
fact ifaces "$TX,$RX,$NOZC,$NOZC_PEER"

in_tx() { ip netns exec tx "$@"; }
in_rx() { ip netns exec rx "$@"; }

# The link's XDP attachment as `ip` shows it, "none" when there is none.
xdp_of() {
  if [ -n "$1" ]; then
    ip -n "$1" -d link show dev "$2"
  else
    ip -d link show dev "$2"
  fi | grep -oE 'prog/xdp id [0-9]+' | head -n 1 | tr ' ' _
}
xdp_fact() { local x; x=$(xdp_of "$2" "$3"); fact "$1" "${x:-none}"; }

head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > /tmp/file.bin
xdpblast keygen /tmp/key >/dev/null 2>&1

wait_ready() {
  local n=0
  while ! grep -q ready "$1" 2>/dev/null; do
    n=$((n + 1))
    [ $n -gt 200 ] && return 1
    sleep 0.1
  done
}

# transfer KEY "RECV ARGS" "SEND ARGS" ["SENDER ENV"]: one file, receiver
# in rx, sender in tx.
transfer() {
  local key=$1 rargs=$2 sargs=$3 senv=${4:-} out=/tmp/out-$1.bin
  rm -f "$out"
  in_rx timeout 120 xdpblast recv --iface "$RX" --listen $RX_IP:$PORT --out "$out" --wait 60 --json $rargs \
    > /tmp/$key.recv.json 2> /tmp/$key.recv.log &
  local rpid=$!
  wait_ready /tmp/$key.recv.log || fact "$key.recv_ready" false
  in_tx env $senv timeout 120 xdpblast send /tmp/file.bin --iface "$TX" --dst $RX_IP:$PORT --json $sargs \
    > /tmp/$key.send.json 2> /tmp/$key.send.log
  fact "$key.send_rc" $?
  wait $rpid
  fact "$key.recv_rc" $?
  if cmp -s /tmp/file.bin "$out"; then fact "$key.identical" true; else fact "$key.identical" false; fi
  emit_file "$key.send" /tmp/$key.send.json
  emit_file "$key.recv" /tmp/$key.recv.json
  emit_file "$key.send_log" /tmp/$key.send.log
  emit_file "$key.recv_log" /tmp/$key.recv.log
  xdp_fact "$key.rx_xdp_after" rx "$RX"
  rm -f "$out"
}

probe() {
  $2 timeout 30 xdpblast probe --iface "$3" --attach --json > /tmp/$1.json 2> /tmp/$1.log
  fact "$1.rc" $?
  emit_file "$1" /tmp/$1.json
  emit_file "$1.log" /tmp/$1.log
  xdp_fact "$1.xdp_after" "$4" "$3"
}

probe probe_zc in_tx "$TX" tx
probe probe_nozc "" "$NOZC" ""

transfer zc_zc "" ""
transfer zc_copy "--xdp-bind copy" ""
transfer copy_zc "" "--xdp-bind copy"
transfer loss "--inject-loss 0.05" ""
transfer keyed "--key-file /tmp/key" "--key-file /tmp/key"
transfer keyed_chacha "--key-file /tmp/key" "--key-file /tmp/key --cipher chacha20-poly1305"
# The TCP modes' TLS records: both ends in the kernel (kTLS), then the
# sender sealing in user space against a receiver opening in the kernel.
fact tls_module "$(grep -c '^tls ' /proc/modules)"
transfer ktls "--key-file /tmp/key" "--key-file /tmp/key --mode sendfile --cipher aes-256-gcm"
transfer ktls_mixed "--key-file /tmp/key" "--key-file /tmp/key --mode sendfile --cipher aes-256-gcm" XDPBLAST_NO_KTLS=1

# Raw TX: the preloaded frames round and round into the drop sink.
in_rx timeout 30 xdpblast sink --iface "$RX" --port $PORT --duration 6 --json > /tmp/sink.json 2> /tmp/sink.log &
spid=$!
sleep 1
in_tx timeout 30 xdpblast send /tmp/file.bin --iface "$TX" --dst $RX_IP:$PORT --raw --duration 3 --json \
  > /tmp/raw.json 2> /tmp/raw.log &
rawpid=$!
# The queue a zero-copy sender holds still carries the stack's own traffic
# (the receiver's control replies): on 7.3.4 it did not while the socket had
# no RX ring, and not at all while the fill ring's wakeups went unanswered.
sleep 1
fact raw.pings_answered_of_20 "$(in_rx ping -c 20 -i 0.05 -W 1 $TX_IP 2>/dev/null | grep -c 'bytes from')"
wait $rawpid
fact raw.rc $?
wait $spid
fact sink.rc $?
emit_file raw /tmp/raw.json
emit_file raw_log /tmp/raw.log
emit_file sink /tmp/sink.json

# SIGKILL either end mid-transfer: no XDP program is left attached, and the
# queues are free again for the next zero-copy transfer.
kill_one() {
  local key=$1 victim=$2
  # "$IP" itself, so that $! is xdpblast (ip netns exec execs it).
  "$IP" netns exec rx xdpblast recv --iface "$RX" --listen $RX_IP:$PORT --out /tmp/out-$key.bin --timeout 3 --wait 10 \
    > /dev/null 2> /tmp/$key.recv.log &
  local rpid=$!
  wait_ready /tmp/$key.recv.log || fact "$key.recv_ready" false
  "$IP" netns exec tx xdpblast send /tmp/file.bin --iface "$TX" --dst $RX_IP:$PORT --rate 20M --timeout 3 \
    > /dev/null 2> /tmp/$key.send.log &
  local spid=$!
  sleep 3
  xdp_fact "$key.rx_xdp_during" rx "$RX"
  if [ "$victim" = sender ]; then kill -KILL $spid; else kill -KILL $rpid; fi
  wait $spid
  fact "$key.send_rc" $?
  wait $rpid
  fact "$key.recv_rc" $?
  sleep 0.5
  xdp_fact "$key.rx_xdp_after" rx "$RX"
  xdp_fact "$key.tx_xdp_after" tx "$TX"
  emit_file "$key.send_log" /tmp/$key.send.log
  emit_file "$key.recv_log" /tmp/$key.recv.log
  if [ -e /tmp/out-$key.bin ]; then fact "$key.output_complete" true; else fact "$key.output_complete" false; fi
  rm -f /tmp/out-$key.bin /tmp/out-$key.bin.partial
}
kill_one kill_sender sender
kill_one kill_receiver receiver
transfer after_kill "" ""

# Zero-copy asked for where the device cannot give it (no
# VIRTIO_F_ACCESS_PLATFORM): both ends fail at once, naming why.
start=$(date +%s)
timeout 60 xdpblast send /tmp/file.bin --iface "$NOZC" --dst 10.98.0.2:$PORT --xdp-bind zerocopy --timeout 20 \
  > /dev/null 2> /tmp/force_send.log
fact force_send.rc $?
fact force_send.secs $(( $(date +%s) - start ))
emit_file force_send_log /tmp/force_send.log
start=$(date +%s)
timeout 60 xdpblast recv --iface "$NOZC" --listen 10.98.0.1:$PORT --out /tmp/force.bin --xdp-bind zerocopy --timeout 20 --wait 20 \
  > /dev/null 2> /tmp/force_recv.log
fact force_recv.rc $?
fact force_recv.secs $(( $(date +%s) - start ))
emit_file force_recv_log /tmp/force_recv.log
xdp_fact force_recv.xdp_after "" "$NOZC"

# Jumbo frames: virtio_net takes no descriptor chains in zero-copy
# (xdp_zc_max_segs is 1).
ip -n tx link set "$TX" mtu 9000
ip -n rx link set "$RX" mtu 9000
probe probe_zc9000 in_tx "$TX" tx
transfer mtu9000 "" ""
# Zero-copy by name with 9000-byte packets: refused up front, naming the
# packet size that fits.
start=$(date +%s)
in_tx timeout 60 xdpblast send /tmp/file.bin --iface "$TX" --dst $RX_IP:$PORT --xdp-bind zerocopy --timeout 20 \
  > /dev/null 2> /tmp/zc9000.log
fact zc9000.rc $?
fact zc9000.secs $(( $(date +%s) - start ))
emit_file zc9000_log /tmp/zc9000.log
# ... and with that size, both ends in zero-copy at MTU 9000.
transfer mtu9000_fit "--xdp-bind zerocopy" "--xdp-bind zerocopy --packet-size 4082"

dmesg > /tmp/dmesg.txt
emit_file dmesg /tmp/dmesg.txt
