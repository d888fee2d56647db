#!/usr/bin/env bash
# Sets up or tears down two network namespaces joined by a veth pair, the
# test bed xdpblast's tests, quick start and bench use.
#
#   scripts/veth.sh up   [NAME] [QUEUES]   create NAME-tx and NAME-rx (default NAME=xb)
#   scripts/veth.sh down [NAME]            remove them (idempotent)
#   scripts/veth.sh env  [NAME]            print the variables below
#   NAPI=threaded scripts/veth.sh up ...   run the receiving end's NAPI in a kthread
#                                          (default: softirq on the sending CPU, which
#                                          measured faster for AF_XDP on 2 vCPUs)
#
# Layout (all inside namespaces this script creates; nothing touches the root
# namespace's addresses):
#   netns NAME-tx: interface NAME-a, 10.77.0.1/24
#   netns NAME-rx: interface NAME-b, 10.77.0.2/24
# QUEUES sets numtxqueues/numrxqueues on both ends (default 1).
set -euo pipefail

cmd=${1:-}
name=${2:-xb}
queues=${3:-1}
TX_NS="$name-tx"; RX_NS="$name-rx"
TX_IF="$name-a";  RX_IF="$name-b"
TX_IP=10.77.0.1;  RX_IP=10.77.0.2

if ((${#TX_IF} > 15)); then
  echo "veth.sh: name '$name' too long for an interface name" >&2; exit 2
fi

down() {
  ip netns del "$TX_NS" 2>/dev/null || true
  ip netns del "$RX_NS" 2>/dev/null || true
}

case "$cmd" in
  up)
    down
    ip netns add "$TX_NS"
    ip netns add "$RX_NS"
    # IPv4 only: no IPv6 autoconfiguration chatter on the test links.
    for ns in "$TX_NS" "$RX_NS"; do
      ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    ip link add "$TX_IF" numtxqueues "$queues" numrxqueues "$queues" netns "$TX_NS" type veth \
      peer name "$RX_IF" numtxqueues "$queues" numrxqueues "$queues" netns "$RX_NS"
    ip -n "$TX_NS" addr add "$TX_IP/24" dev "$TX_IF"
    ip -n "$RX_NS" addr add "$RX_IP/24" dev "$RX_IF"
    for ns in "$TX_NS" "$RX_NS"; do ip -n "$ns" link set lo up; done
    ip -n "$TX_NS" link set "$TX_IF" up
    ip -n "$RX_NS" link set "$RX_IF" up
    # GRO on gives the receiving veth a NAPI instance (TCP coalesces). With
    # NAPI=threaded its work moves to a kthread that may run on the other core.
    napi="NAPI in softirq"
    ip netns exec "$RX_NS" ethtool -K "$RX_IF" gro on >/dev/null 2>&1 || napi="no GRO"
    if [[ "${NAPI:-softirq}" == threaded ]]; then
      if ip netns exec "$RX_NS" sh -c "echo 1 > /sys/class/net/$RX_IF/threaded" 2>/dev/null; then
        napi="threaded NAPI on $RX_IF"
      else
        napi="threaded NAPI unavailable on $RX_IF"
      fi
    fi
    echo "veth.sh: $TX_NS/$TX_IF ($TX_IP) <-> $RX_NS/$RX_IF ($RX_IP), $queues queue(s), $napi"
    ;;
  down)
    down
    ;;
  env)
    echo "TX_NS=$TX_NS RX_NS=$RX_NS TX_IF=$TX_IF RX_IF=$RX_IF TX_IP=$TX_IP RX_IP=$RX_IP"
    ;;
  *)
    sed -n '2,17p' "$0" >&2; exit 2
    ;;
esac
