#!/usr/bin/env bash
# Installs what building and testing dispatchd needs on Debian, only if missing.
# clang builds the XDP program; m4, make, pkg-config, libelf-dev, zlib1g-dev and
# libpcap-dev build the vendored libbpf/libxdp that xsk-rs links; iproute2, ethtool
# and nftables build and tune the test topology; ping and setpriv serve the tests;
# bird2 (BGP) announces the VIP in the scale-out test; Debian's python3 (its
# http.server) answers the HTTP health checks of the health test;
# python3-prometheus-client is the Prometheus project's exposition parser the
# metrics test reads /metrics with (run with /usr/bin/python3); iperf3 is the
# benchmark's one-way bulk stream, taskset pins its clients and daemons.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

have_cmd clang || need+=(clang)
have_cmd m4 || need+=(m4)
have_cmd make || need+=(make)
have_cmd pkg-config || need+=(pkg-config)
have_cmd ip || need+=(iproute2)
have_cmd ethtool || need+=(ethtool)
have_cmd nft || need+=(nftables)
have_cmd ping || need+=(iputils-ping)
have_cmd setpriv || need+=(util-linux)
have_cmd bird || need+=(bird2)
# systemd-analyze verifies the unit file in tests/systemd_unit.rs.
have_cmd systemd-analyze || need+=(systemd)
have_cmd iperf3 || need+=(iperf3)
have_cmd taskset || need+=(util-linux)
have_cmd prlimit || need+=(util-linux)
# sysctl (the topology, tests) and kill (the testkit): minimal images lack them.
have_cmd sysctl || need+=(procps)
{ [ -x /usr/bin/kill ] || [ -x /bin/kill ]; } || need+=(procps) # not the shell builtin
[ -x /usr/bin/python3 ] || need+=(python3)
for p in libelf-dev zlib1g-dev libpcap-dev python3-prometheus-client; do have_pkg "$p" || need+=("$p"); done

if [ ${#need[@]} -gt 0 ]; then
	echo "install-deps: installing ${need[*]}" >&2
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing ${need[*]} and not root; install them with apt-get" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
	echo "install-deps: cargo not found; dispatchd needs a Rust toolchain (rustup)" >&2
	exit 1
fi
