#!/usr/bin/env bash
# Soak: MINUTES (default 10) of short connections without pause and long-lived
# ones in rounds through dispatchd on the DESIGN.md topology, with a daemon killed
# and restarted every minute. Fails on any connection failure not explained by a
# restart, on records left behind, and on resident memory growing 1 % or more
# after the first minute; prints the failures by kind and daemon and the memory
# samples. The same test, 90 seconds long, runs in CI (tests/soak.rs). Needs root.
#
# usage: scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
	echo "soak.sh: needs root (network namespaces, XDP, AF_XDP)" >&2
	exit 1
fi
cargo build --release --locked --workspace --bins
SOAK_SECONDS=$((minutes * 60)) exec cargo test --release --locked --test soak -- --nocapture
