#!/usr/bin/env bash
# The DESIGN.md test topology: three namespaces, two veth pairs.
#
#   PREFIXc: c0 198.18.0.2/24 (default via .1)  <->  PREFIXd: l0 198.18.0.1/24 + VIP 198.18.0.100
#   PREFIXs: s0 198.19.0.2/24 + .11 .12 ...     <->  PREFIXd: l1 198.19.0.1/24
#
# usage: topology.sh up PREFIX [DAEMONS] [QUEUES]
#        topology.sh down PREFIX
# Interfaces live inside their namespaces from the start, so the fixed names
# c0/l0/l1/s0 never clash between topologies; PREFIX keeps namespaces apart.
set -euo pipefail

cmd=${1:?usage: topology.sh up|down PREFIX [DAEMONS] [QUEUES]}
p=${2:?usage: topology.sh up|down PREFIX [DAEMONS] [QUEUES]}
daemons=${3:-4}
queues=${4:-1}

down() {
	for ns in "${p}c" "${p}d" "${p}s"; do
		ip netns del "$ns" 2>/dev/null || true
	done
}

# Offloads off on every veth: a locally sent frame otherwise carries a partial
# checksum that nothing completes after an XDP redirect, and TSO/GRO would hand
# AF_XDP frames larger than the MTU. A real wire has neither.
tune() {
	ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
	ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
}

up() {
	down
	trap 'down' ERR
	for ns in "${p}c" "${p}d" "${p}s"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	local q="numtxqueues $queues numrxqueues $queues"
	# shellcheck disable=SC2086
	ip link add c0 netns "${p}c" $q type veth peer name l0 netns "${p}d" $q
	# shellcheck disable=SC2086
	ip link add l1 netns "${p}d" $q type veth peer name s0 netns "${p}s" $q
	tune "${p}c" c0; tune "${p}d" l0; tune "${p}d" l1; tune "${p}s" s0

	ip -n "${p}c" addr add 198.18.0.2/24 dev c0
	ip -n "${p}c" link set c0 up
	ip -n "${p}c" route add default via 198.18.0.1
	# The clients open short connections by the ten thousand and close first, so
	# each port then sits in TIME_WAIT for a minute: a wide port range and TIME_WAIT
	# reuse keep them from running out (the default range lasts seconds at the
	# rates here, and exhausted ports look like lost connections). Ports below
	# 10000 stay free for the benchmark's packet generator.
	ip netns exec "${p}c" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1

	ip -n "${p}d" addr add 198.18.0.1/24 dev l0
	# The VIP is local on the front so the kernel answers ARP for it and keeps
	# its non-service ports (ping, ssh) reachable; service frames never reach it.
	ip -n "${p}d" addr add 198.18.0.100/32 dev l0
	ip -n "${p}d" addr add 198.19.0.1/24 dev l1
	# dispatchd's XDP program asks the FIB where the kernel would forward each
	# frame a daemon sends (the client's next hop, or the host itself), as for a
	# frame arriving on l1; the kernel answers that only if l1 forwards IPv4. The
	# host forwards between the two sides too (a host on the client side
	# reaching a daemon by its own address), so l0 forwards as well.
	ip netns exec "${p}d" sysctl -qw net.ipv4.conf.l0.forwarding=1 net.ipv4.conf.l1.forwarding=1
	ip -n "${p}d" link set l0 up
	ip -n "${p}d" link set l1 up

	ip -n "${p}s" addr add 198.19.0.2/24 dev s0
	for i in $(seq 1 "$daemons"); do
		ip -n "${p}s" addr add "198.19.0.$((10 + i))/24" dev s0
	done
	ip -n "${p}s" link set s0 up
	ip -n "${p}s" route add default via 198.19.0.1
	# Bursts of new connections must not overflow the echo servers' accept queues.
	ip netns exec "${p}s" sysctl -qw net.core.somaxconn=4096
	trap - ERR
}

case "$cmd" in
up) up ;;
down) down ;;
*) echo "usage: topology.sh up|down PREFIX [DAEMONS] [QUEUES]" >&2; exit 2 ;;
esac
