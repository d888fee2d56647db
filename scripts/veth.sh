#!/usr/bin/env bash
# Sets up or tears down two network namespaces joined by a veth pair, the
# test bed xdpblast's tests, quick start and bench use.
#
#   scripts/veth.sh up   [NAME] [QUEUES] [MTU]   create NAME-tx and NAME-rx (default NAME=xb)
#   scripts/veth.sh up6  [NAME] [QUEUES] [MTU]   the same pair, IPv6 only (no IPv4 address)
#   scripts/veth.sh lan  [NAME]            the same two ends on a bridge that floods
#                                          every frame, plus NAME-x, an attacker
#                                          that sees all traffic (security tests)
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
#   up6 instead: fd00:77::1/64 and fd00:77::2/64 (no duplicate address
#   detection, so they are usable at once), and no IPv4 address
#   lan only: netns NAME-x: interface NAME-x, 10.77.0.3/24; netns NAME-br holds
#   the bridge (learning off on every port, so it floods like a hub)
# QUEUES sets numtxqueues/numrxqueues on both ends (default 1). MTU sets both
# ends' MTU (default 1500). veth takes up to 65535 once the XDP program on it
# is frags-aware, as ours is; an XDP program that is not refuses to attach to
# a veth whose MTU is above about 3500 bytes.
set -euo pipefail

cmd=${1:-}
name=${2:-xb}
queues=${3:-1}
mtu=${4:-1500}
TX_NS="$name-tx"; RX_NS="$name-rx"
TX_IF="$name-a";  RX_IF="$name-b"
TX_IP=10.77.0.1;  RX_IP=10.77.0.2
TX_IP6=fd00:77::1; RX_IP6=fd00:77::2
X_NS="$name-x";   BR_NS="$name-br"; X_IF="$name-x"; X_IP=10.77.0.3

if ((${#TX_IF} > 15)); then
  echo "veth.sh: name '$name' too long for an interface name" >&2; exit 2
fi

down() {
  for ns in "$TX_NS" "$RX_NS" "$X_NS" "$BR_NS"; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

# One end of the LAN: netns $1 gets interface $2 with address $3; its peer
# $4 becomes a port of the bridge.
lan_port() {
  ip netns add "$1"
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$BR_NS"
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$1" link set lo up
  ip -n "$1" link set "$2" up
  ip -n "$BR_NS" link set "$4" master br0 up
  ip netns exec "$BR_NS" bridge link set dev "$4" learning off
}

case "$cmd" in
  up|up6)
    down
    ip netns add "$TX_NS"
    ip netns add "$RX_NS"
    for ns in "$TX_NS" "$RX_NS"; do
      if [[ "$cmd" == up ]]; then
        # IPv4 only: no IPv6 autoconfiguration chatter on the test links.
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
      else
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
          net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
      fi
    done
    ip link add "$TX_IF" numtxqueues "$queues" numrxqueues "$queues" netns "$TX_NS" type veth \
      peer name "$RX_IF" numtxqueues "$queues" numrxqueues "$queues" netns "$RX_NS"
    if [[ "$cmd" == up ]]; then
      ip -n "$TX_NS" addr add "$TX_IP/24" dev "$TX_IF"
      ip -n "$RX_NS" addr add "$RX_IP/24" dev "$RX_IF"
    else
      ip -n "$TX_NS" addr add "$TX_IP6/64" dev "$TX_IF" nodad
      ip -n "$RX_NS" addr add "$RX_IP6/64" dev "$RX_IF" nodad
      TX_IP="$TX_IP6"; RX_IP="$RX_IP6"
    fi
    for ns in "$TX_NS" "$RX_NS"; do ip -n "$ns" link set lo up; done
    ip -n "$TX_NS" link set "$TX_IF" mtu "$mtu" up
    ip -n "$RX_NS" link set "$RX_IF" mtu "$mtu" up
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
    echo "veth.sh: $TX_NS/$TX_IF ($TX_IP) <-> $RX_NS/$RX_IF ($RX_IP), $queues queue(s), MTU $mtu, $napi"
    ;;
  lan)
    down
    ip netns add "$BR_NS"
    ip netns exec "$BR_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$BR_NS" link add br0 type bridge ageing_time 0
    ip -n "$BR_NS" link set br0 up
    lan_port "$TX_NS" "$TX_IF" "$TX_IP" "$name-pa"
    lan_port "$RX_NS" "$RX_IF" "$RX_IP" "$name-pb"
    lan_port "$X_NS" "$X_IF" "$X_IP" "$name-px"
    ip netns exec "$RX_NS" ethtool -K "$RX_IF" gro on >/dev/null 2>&1 || true
    echo "veth.sh: $TX_NS ($TX_IP), $RX_NS ($RX_IP) and attacker $X_NS ($X_IP) on a flooding bridge in $BR_NS"
    ;;
  down)
    down
    ;;
  env)
    echo "TX_NS=$TX_NS RX_NS=$RX_NS TX_IF=$TX_IF RX_IF=$RX_IF TX_IP=$TX_IP RX_IP=$RX_IP TX_IP6=$TX_IP6 RX_IP6=$RX_IP6 X_NS=$X_NS X_IF=$X_IF X_IP=$X_IP"
    ;;
  *)
    # The header comment, without its '#' marks.
    [ -n "$cmd" ] && echo "veth.sh: unknown command '$cmd'" >&2
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
