#!/usr/bin/env bash
# The whole test suite: unit and property tests, then the privileged end-to-end
# tests on real network namespaces, XDP and AF_XDP. Needs root; fails, never skips,
# when it cannot run them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
	echo "test.sh: the end-to-end tests need root (network namespaces, XDP, AF_XDP)" >&2
	exit 1
fi
cargo build --release --locked --workspace --bins
# The end-to-end tests each build their own namespaces, and one dispatcher pins
# its worker; two cores do not take more than one at a time.
cargo test --release --locked --workspace -- --test-threads=1
