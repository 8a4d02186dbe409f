#!/usr/bin/env bash
# Several dispatchd instances behind an ECMP router that learns the VIP by BGP
# (bird2), daemons returning through any instance (README, "Running several
# instances"):
#
#   PREFIXc  c0 198.18.1.2/24, default via .1
#      |
#   PREFIXr  r0 198.18.1.1/24; f0 198.18.10.1/24, f1 198.18.11.1/24, f2 198.18.12.1/24
#      |     bird2: BGP AS 65000 with each instance, ECMP (merge paths, L4 hash)
#   PREFIXi0..i2  l0 198.18.1K.2/24 + VIP 198.18.0.100/32, default via 198.18.1K.1
#      |          l1 198.19.0.(1+K)/24 (forwarding on)
#      |          bird2 AS 65010: the VIP to the router, a default route to the
#      |          daemons, both while `dispatchd ctl ready` says so (ready-watch.sh)
#   PREFIXs  bridge sb 198.19.0.9/24 + daemons 198.19.0.11, .12, ... (ports b0..b2)
#            bird2 AS 65100: the default route from each ready instance, ECMP
#
# usage: scaleout.sh up PREFIX [DAEMONS]      namespaces, links, bird configurations
#        scaleout.sh down PREFIX              namespaces gone, this topology's birds stopped
#        scaleout.sh bird PREFIX router|daemons|0|1|2
#                                             runs bird2 in the foreground in its namespace
#
# Configurations, control sockets and pid files live in /tmp/PREFIX-bird/.
# Three instance namespaces are always made; an instance is "added" by starting
# its dispatchd, bird and watcher. PREFIX must leave room for the suffixes in
# namespace names; interface names are fixed inside the namespaces.
set -euo pipefail

usage="usage: scaleout.sh up|down PREFIX [DAEMONS] | bird PREFIX router|daemons|0|1|2"
cmd=${1:?$usage}
p=${2:?$usage}
INSTANCES=3
run="/tmp/${p}-bird"

namespaces() {
	echo "${p}c" "${p}r" "${p}s"
	for k in $(seq 0 $((INSTANCES - 1))); do echo "${p}i$k"; done
}

down() {
	# Only the birds this topology started, by the pids they wrote.
	for pidfile in "$run"/*.pid; do
		[ -e "$pidfile" ] || continue
		pid=$(cat "$pidfile" 2>/dev/null || true)
		[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	done
	for ns in $(namespaces); do
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$run"
}

# Offloads off on every veth and the bridge (see topology.sh): frames must
# carry full checksums and be wire-sized when XDP redirects them.
tune() {
	ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
	ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
}

# BGP timers short enough for a test: a dead peer is noticed after 3 s (the
# hold time), a session that failed is tried again after 1 s.
TIMERS="hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;"

bird_configs() {
	mkdir -p "$run"
	# The router: every instance's VIP route in the kernel as one multipath route.
	{
		echo "router id 198.18.1.1;"
		echo "log stderr all;"
		echo "protocol device { scan time 2; }"
		echo "protocol kernel { ipv4 { import none; export all; }; merge paths on; }"
		echo "template bgp peer { local as 65000; $TIMERS ipv4 { import all; export none; }; }"
		for k in $(seq 0 $((INSTANCES - 1))); do
			echo "protocol bgp i$k from peer { neighbor 198.18.$((10 + k)).2 as 65010; }"
		done
	} >"$run/router.conf"
	# The daemons' host: the default route through every ready instance.
	{
		echo "router id 198.19.0.9;"
		echo "log stderr all;"
		echo "protocol device { scan time 2; }"
		echo "protocol kernel { ipv4 { import none; export all; }; merge paths on; }"
		echo "template bgp peer { local as 65100; $TIMERS ipv4 { import all; export none; }; }"
		for k in $(seq 0 $((INSTANCES - 1))); do
			echo "protocol bgp i$k from peer { neighbor 198.19.0.$((1 + k)) as 65010; }"
		done
	} >"$run/daemons.conf"
	# Each instance's speaker: the routes are those of the static protocol
	# `ready`, which starts disabled and which ready-watch.sh enables while
	# `dispatchd ctl ready` succeeds and disables otherwise (BGP then
	# withdraws both routes).
	for k in $(seq 0 $((INSTANCES - 1))); do
		cat >"$run/i$k.conf" <<EOF
router id 198.18.$((10 + k)).2;
log stderr all;
protocol device { scan time 2; }
protocol static ready {
	disabled;
	ipv4;
	route 198.18.0.100/32 blackhole;
	route 0.0.0.0/0 blackhole;
}
protocol bgp to_router {
	local 198.18.$((10 + k)).2 as 65010;
	neighbor 198.18.$((10 + k)).1 as 65000;
	$TIMERS
	ipv4 { import none; export where net = 198.18.0.100/32; next hop self; };
}
protocol bgp to_daemons {
	local 198.19.0.$((1 + k)) as 65010;
	neighbor 198.19.0.9 as 65100;
	$TIMERS
	ipv4 { import none; export where net = 0.0.0.0/0; next hop self; };
}
EOF
	done
}

up() {
	local daemons=${3:-4}
	down
	trap 'down' ERR
	for ns in $(namespaces); do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	local c="${p}c" r="${p}r" s="${p}s"

	ip link add c0 netns "$c" type veth peer name r0 netns "$r"
	tune "$c" c0
	tune "$r" r0
	ip -n "$c" addr add 198.18.1.2/24 dev c0
	ip -n "$c" link set c0 up
	ip -n "$c" route add default via 198.18.1.1
	# As in topology.sh: many short connections, and a connection's hash (here
	# also the router's path for it) kept across retransmissions.
	ip netns exec "$c" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" \
		net.ipv4.tcp_tw_reuse=1 net.core.txrehash=0

	ip -n "$r" addr add 198.18.1.1/24 dev r0
	ip -n "$r" link set r0 up
	# The ECMP hash over addresses and ports (L4), so connections from one
	# client spread over the instances.
	ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1

	ip -n "$s" link add sb type bridge
	tune "$s" sb
	ip -n "$s" addr add 198.19.0.9/24 dev sb
	for i in $(seq 1 "$daemons"); do
		ip -n "$s" addr add "198.19.0.$((10 + i))/24" dev sb
	done
	ip -n "$s" link set sb up
	ip netns exec "$s" sysctl -qw net.core.somaxconn=4096 net.ipv4.fib_multipath_hash_policy=1

	for k in $(seq 0 $((INSTANCES - 1))); do
		local i="${p}i$k"
		ip link add "f$k" netns "$r" type veth peer name l0 netns "$i"
		ip link add "b$k" netns "$s" type veth peer name l1 netns "$i"
		tune "$r" "f$k"
		tune "$s" "b$k"
		tune "$i" l0
		tune "$i" l1
		ip -n "$r" addr add "198.18.$((10 + k)).1/24" dev "f$k"
		ip -n "$r" link set "f$k" up
		ip -n "$s" link set "b$k" master sb
		ip -n "$s" link set "b$k" up
		ip -n "$i" addr add "198.18.$((10 + k)).2/24" dev l0
		# The VIP is local on the front (README's requirements): the host
		# answers ARP and keeps its other ports.
		ip -n "$i" addr add 198.18.0.100/32 dev l0
		ip -n "$i" addr add "198.19.0.$((1 + k))/24" dev l1
		ip netns exec "$i" sysctl -qw net.ipv4.conf.l1.forwarding=1
		ip -n "$i" link set l0 up
		ip -n "$i" link set l1 up
		ip -n "$i" route add default via "198.18.$((10 + k)).1"
		# The README's two rules (What survives what). While dispatchd runs,
		# its XDP program takes the service's frames before the host sees
		# them; when it has died and the routers have not yet heard, the host
		# would answer the clients' segments with resets (it owns the VIP) and
		# forward the daemons' replies unrewritten, breaking connections a
		# survivor could have recovered. Dropped instead, they are
		# retransmitted after the routes have moved. SCALEOUT_HOST_RST=1
		# leaves them out, to measure the resets.
		if [ "${SCALEOUT_HOST_RST:-0}" != 1 ]; then
			ip netns exec "$i" nft 'add table ip dispatchd;
				add chain ip dispatchd input { type filter hook input priority 0; };
				add rule ip dispatchd input ip daddr 198.18.0.100 tcp dport 80 drop;
				add chain ip dispatchd forward { type filter hook forward priority 0; };
				add rule ip dispatchd forward ip saddr 198.19.0.0/24 tcp sport 8080 drop'
		fi
	done
	bird_configs
	trap - ERR
}

bird_run() {
	local which=${3:?$usage} ns
	case "$which" in
	router) ns="${p}r" ;;
	daemons) ns="${p}s" ;;
	0 | 1 | 2) ns="${p}i$which"; which="i$which" ;;
	*) echo "$usage" >&2; exit 2 ;;
	esac
	exec ip netns exec "$ns" bird -f -c "$run/$which.conf" -s "$run/$which.ctl" -P "$run/$which.pid"
}

case "$cmd" in
up) up "$@" ;;
down) down ;;
bird) bird_run "$@" ;;
*) echo "$usage" >&2; exit 2 ;;
esac
