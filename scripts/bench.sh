#!/usr/bin/env bash
# The end-to-end benchmark: dispatchd against direct routing, nftables DNAT and a
# bare AF_XDP forwarder on the DESIGN.md topology, all in one run, in two modes:
# dedicated (as deployed: one forwarding core per variant, clients and daemons on
# core 0) and shared (everything on both cores). Builds, runs
# target/release/dispatchd-bench as root and writes bench/results/e2e-<ts>.md (both
# tables), e2e-<ts>-dedicated.json, e2e-<ts>.json (shared), their latency SVGs and
# latest.md. By default 3 alternating rounds of 5 s per workload, every value
# their median: about 20 minutes. --quick: one round of 3 s, about two.
#
# BENCH_PREFIX names the namespaces (default bench<pid>).
# usage: scripts/bench.sh [--quick] [--rounds N] [--modes dedicated,shared]
#                         [--seconds S] [--warmup S] [--perf] [--control-core C]
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
p=${BENCH_PREFIX:-bench$$}
# The harness tears its topology down itself (a guard, also on error or panic);
# this is for a harness that was killed outright.
trap 'scripts/topology.sh down "$p"' EXIT
target/release/dispatchd-bench run --prefix "$p" "$@"
