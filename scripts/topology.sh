#!/usr/bin/env bash
# The DESIGN.md test topology: three namespaces, two veth pairs.
#
#   PREFIXc: c0 198.18.0.2/24 (default via .1)  <->  PREFIXd: l0 198.18.0.1/24 + VIP 198.18.0.100
#   PREFIXs: s0 198.19.0.2/24 + .11 .12 ...     <->  PREFIXd: l1 198.19.0.1/24
#
# With ROUTER, a fourth namespace PREFIXr routes one side, its own links in
# 198.18.x.y (the tests put a smaller route MTU or a filter on it):
#
#   front: c0 198.18.0.2/24 <-> r0 198.18.0.1/24 | r1 198.18.1.1/24 <-> l0 198.18.1.2/24 + VIP
#          (the dispatcher reaches the clients via 198.18.1.1, the router the VIP via
#          198.18.1.2 and answers the clients' ARP for it)
#   back:  l1 198.18.2.1/24 <-> b0 198.18.2.2/24 | b1 198.19.0.1/24 <-> s0 (as above)
#          (the dispatcher reaches the daemons via 198.18.2.2, the router the clients via 198.18.2.1)
#
# With FAMILY "dual", IPv6 besides, in the benchmark prefix 2001:2::/48 (RFC
# 5180), every address without duplicate address detection:
#
#   PREFIXc: c0 2001:2:0:1::2/64 (default via ::1)  <->  PREFIXd: l0 2001:2:0:1::1/64 + VIP 2001:2:0:1::100
#   PREFIXs: s0 2001:2:0:2::2/64 + ::11 ::12 ...    <->  PREFIXd: l1 2001:2:0:2::1/64
#
# and with a ROUTER, its IPv6 links as its IPv4 ones:
#
#   front: c0 2001:2:0:1::2/64 <-> r0 2001:2:0:1::1/64 | r1 2001:2:0:3::1/64 <-> l0 2001:2:0:3::2/64 + VIP
#          (the clients reach the VIP through the router by a host route)
#   back:  l1 2001:2:0:4::1/64 <-> b0 2001:2:0:4::2/64 | b1 2001:2:0:2::1/64 <-> s0 (as above)
#
# usage: topology.sh up PREFIX [DAEMONS] [QUEUES] [BACK_QUEUES] [ROUTER: none|front|back] [FAMILY: ipv4|dual]
#        topology.sh down PREFIX
# QUEUES (default 1) is the number of RX and TX queues of c0/l0, BACK_QUEUES
# (default QUEUES) that of l1/s0. A veth hands each frame to the peer's RX
# queue of the TX queue it was sent on, and the sender's kernel picks the TX
# queue per connection, so connections spread over the queues as RSS spreads
# them on a NIC.
# Interfaces live inside their namespaces from the start, so the fixed names
# c0/l0/l1/s0 (r0/r1, b0/b1) never clash between topologies; PREFIX keeps
# namespaces apart.
set -euo pipefail

usage="usage: topology.sh up|down PREFIX [DAEMONS] [QUEUES] [BACK_QUEUES] [none|front|back] [ipv4|dual]"
cmd=${1:?$usage}
p=${2:?$usage}
daemons=${3:-4}
queues=${4:-1}
back_queues=${5:-$queues}
router=${6:-none}
family=${7:-ipv4}

down() {
	for ns in "${p}c" "${p}d" "${p}s" "${p}r"; do
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
	case "$router" in none | front | back) ;; *) echo "$usage" >&2; exit 2 ;; esac
	case "$family" in ipv4 | dual) ;; *) echo "$usage" >&2; exit 2 ;; esac
	down
	trap 'down' ERR
	local all=("${p}c" "${p}d" "${p}s")
	[ "$router" = none ] || all+=("${p}r")
	for ns in "${all[@]}"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		if [ "$family" = dual ]; then
			# No duplicate address detection on the interfaces made next, their
			# link-local addresses included: a tentative address is not used,
			# and a test would wait a second or more for each.
			ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
		fi
	done
	local q="numtxqueues $queues numrxqueues $queues"
	local bq="numtxqueues $back_queues numrxqueues $back_queues"
	case "$router" in
	front)
		# shellcheck disable=SC2086
		ip link add c0 netns "${p}c" $q type veth peer name r0 netns "${p}r" $q
		# shellcheck disable=SC2086
		ip link add r1 netns "${p}r" $q type veth peer name l0 netns "${p}d" $q
		tune "${p}r" r0; tune "${p}r" r1
		;;
	*)
		# shellcheck disable=SC2086
		ip link add c0 netns "${p}c" $q type veth peer name l0 netns "${p}d" $q
		;;
	esac
	case "$router" in
	back)
		# shellcheck disable=SC2086
		ip link add l1 netns "${p}d" $bq type veth peer name b0 netns "${p}r" $bq
		# shellcheck disable=SC2086
		ip link add b1 netns "${p}r" $bq type veth peer name s0 netns "${p}s" $bq
		tune "${p}r" b0; tune "${p}r" b1
		;;
	*)
		# shellcheck disable=SC2086
		ip link add l1 netns "${p}d" $bq type veth peer name s0 netns "${p}s" $bq
		;;
	esac
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
	# A NIC's RSS keeps a connection on one RX queue for good (it hashes the
	# headers). A veth's peer picks the queue from the sending socket's hash,
	# which TCP re-draws after a retransmission timeout (net.core.txrehash):
	# the connection would move to another queue, and so to another worker,
	# which has no record of it. Keep the hash, as a wire would.
	ip netns exec "${p}c" sysctl -qw net.core.txrehash=0

	if [ "$router" = front ]; then
		ip -n "${p}d" addr add 198.18.1.2/24 dev l0
	else
		ip -n "${p}d" addr add 198.18.0.1/24 dev l0
	fi
	# The VIP is local on the front so the kernel answers ARP for it and keeps
	# its non-service ports (ping, ssh) reachable; service frames never reach it.
	ip -n "${p}d" addr add 198.18.0.100/32 dev l0
	if [ "$router" = back ]; then
		ip -n "${p}d" addr add 198.18.2.1/24 dev l1
	else
		ip -n "${p}d" addr add 198.19.0.1/24 dev l1
	fi
	# dispatchd's XDP program asks the FIB where the kernel would forward each
	# frame a daemon sends (the client's next hop, or the host itself), as for a
	# frame arriving on l1; the kernel answers that only if l1 forwards IPv4. The
	# host forwards between the two sides too (a host on the client side
	# reaching a daemon by its own address), so l0 forwards as well.
	ip netns exec "${p}d" sysctl -qw net.ipv4.conf.l0.forwarding=1 net.ipv4.conf.l1.forwarding=1
	ip -n "${p}d" link set l0 up
	ip -n "${p}d" link set l1 up
	case "$router" in
	front) ip -n "${p}d" route add 198.18.0.0/24 via 198.18.1.1 dev l0 ;;
	back) ip -n "${p}d" route add 198.19.0.0/24 via 198.18.2.2 dev l1 ;;
	esac

	if [ "$router" != none ]; then
		ip netns exec "${p}r" sysctl -qw net.ipv4.ip_forward=1
	fi
	case "$router" in
	front)
		ip -n "${p}r" addr add 198.18.0.1/24 dev r0
		ip -n "${p}r" addr add 198.18.1.1/24 dev r1
		ip -n "${p}r" link set r0 up
		ip -n "${p}r" link set r1 up
		ip -n "${p}r" route add 198.18.0.100/32 via 198.18.1.2 dev r1
		# The clients' subnet holds the VIP, so they ARP for it on their own
		# link: the router answers for it (proxy ARP) as it routes it elsewhere.
		ip netns exec "${p}r" sysctl -qw net.ipv4.conf.r0.proxy_arp=1
		;;
	back)
		ip -n "${p}r" addr add 198.18.2.2/24 dev b0
		ip -n "${p}r" addr add 198.19.0.1/24 dev b1
		ip -n "${p}r" link set b0 up
		ip -n "${p}r" link set b1 up
		ip -n "${p}r" route add 198.18.0.0/24 via 198.18.2.1 dev b0
		;;
	esac

	ip -n "${p}s" addr add 198.19.0.2/24 dev s0
	for i in $(seq 1 "$daemons"); do
		ip -n "${p}s" addr add "198.19.0.$((10 + i))/24" dev s0
	done
	ip -n "${p}s" link set s0 up
	ip -n "${p}s" route add default via 198.19.0.1
	if [ "$family" = dual ]; then
		up6
	fi
	# Bursts of new connections must not overflow the echo servers' accept queues.
	ip netns exec "${p}s" sysctl -qw net.core.somaxconn=4096
	trap - ERR
}

# The IPv6 half of a "dual" topology (after `up` made the links).
up6() {
	ip -n "${p}c" addr add 2001:2:0:1::2/64 dev c0 nodad
	ip -n "${p}c" -6 route add default via 2001:2:0:1::1 dev c0

	local front=2001:2:0:1::1/64 back=2001:2:0:2::1/64
	[ "$router" = front ] && front=2001:2:0:3::2/64
	[ "$router" = back ] && back=2001:2:0:4::1/64
	ip -n "${p}d" addr add "$front" dev l0 nodad
	# Local on the front, as the IPv4 VIP: the kernel answers neighbour
	# solicitations for it.
	ip -n "${p}d" addr add 2001:2:0:1::100/128 dev l0 nodad
	ip -n "${p}d" addr add "$back" dev l1 nodad
	# dispatchd's FIB lookup (bpf_ipv6_fib_lookup) checks the forwarding
	# setting of the device it is made for, l1: net.ipv6.conf.l1.forwarding.
	# The kernel's own IPv6 forwarding between the sides (ip6_forward) checks
	# net.ipv6.conf.all.forwarding, which also sets every interface's. A
	# forwarding interface ignores router advertisements unless accept_ra is
	# 2; this topology's addresses and routes are static, so none are taken.
	ip netns exec "${p}d" sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.l1.forwarding=1 \
		net.ipv6.conf.l0.accept_ra=0 net.ipv6.conf.l1.accept_ra=0
	case "$router" in
	front) ip -n "${p}d" -6 route add 2001:2:0:1::/64 via 2001:2:0:3::1 dev l0 ;;
	back) ip -n "${p}d" -6 route add 2001:2:0:2::/64 via 2001:2:0:4::2 dev l1 ;;
	esac

	case "$router" in
	front)
		ip -n "${p}r" addr add 2001:2:0:1::1/64 dev r0 nodad
		ip -n "${p}r" addr add 2001:2:0:3::1/64 dev r1 nodad
		ip -n "${p}r" -6 route add 2001:2:0:1::100/128 via 2001:2:0:3::2 dev r1
		# The VIP lies in the clients' own prefix, where they would solicit
		# it on their link: a host route sends it to the router instead (the
		# IPv4 side's proxy ARP, without a proxy neighbour entry).
		ip -n "${p}c" -6 route add 2001:2:0:1::100/128 via 2001:2:0:1::1 dev c0
		;;
	back)
		ip -n "${p}r" addr add 2001:2:0:4::2/64 dev b0 nodad
		ip -n "${p}r" addr add 2001:2:0:2::1/64 dev b1 nodad
		ip -n "${p}r" -6 route add 2001:2:0:1::/64 via 2001:2:0:4::1 dev b0
		;;
	esac
	if [ "$router" != none ]; then
		ip netns exec "${p}r" sysctl -qw net.ipv6.conf.all.forwarding=1
	fi

	ip -n "${p}s" addr add 2001:2:0:2::2/64 dev s0 nodad
	for i in $(seq 1 "$daemons"); do
		ip -n "${p}s" addr add "2001:2:0:2::$(printf %x $((16 + i)))/64" dev s0 nodad
	done
	ip -n "${p}s" -6 route add default via 2001:2:0:2::1 dev s0
}

case "$cmd" in
up) up ;;
down) down ;;
*) echo "$usage" >&2; exit 2 ;;
esac
