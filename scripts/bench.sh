#!/usr/bin/env bash
# The end-to-end benchmark: dispatchd against direct routing, nftables DNAT and a
# bare AF_XDP forwarder on the DESIGN.md topology, all in one run. Builds, runs
# target/release/dispatchd-bench as root and writes bench/results/e2e-<ts>.{md,json},
# e2e-<ts>-latency.svg and latest.md. About 5 minutes; --quick takes about one.
#
# usage: scripts/bench.sh [--quick] [--seconds S] [--warmup S] [--perf]
#                         [--variants direct,nftables,dispatchd,bare] [...]
#        (target/release/dispatchd-bench run --help lists every flag)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
	echo "bench.sh: needs root (network namespaces, XDP, AF_XDP)" >&2
	exit 1
fi
cargo build --release --locked --workspace --bins
p=bench$$
# The harness tears its topology down itself (a guard, also on error or panic);
# this is for a harness that was killed outright.
trap 'scripts/topology.sh down "$p"' EXIT
target/release/dispatchd-bench run --prefix "$p" "$@"
