#!/usr/bin/env bash
# The demo: builds dispatchd, brings up the DESIGN.md topology with 4 daemons, runs
# dispatchd, drives real TCP connections through it, prints how they spread over
# the daemons and the latency they saw, prints dispatchd's own statistics and
# per-packet histogram, and tears everything down. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: needs root (network namespaces, XDP, AF_XDP)" >&2
	exit 1
fi
cargo build --release --locked --workspace --bins
bin=target/release
p=demo$$
log=$(mktemp)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	scripts/topology.sh down "$p"
	rm -f "$log"
}
trap cleanup EXIT

scripts/topology.sh up "$p" 4 1
ip netns exec "${p}s" "$bin/dispatchd-testkit" serve \
	--listen 198.19.0.11:8080 --listen 198.19.0.12:8080 \
	--listen 198.19.0.13:8080 --listen 198.19.0.14:8080 >/dev/null &
pids+=($!)
ip netns exec "${p}d" "$bin/dispatchd" run --front l0 --back l1 \
	--service 198.18.0.100:80 \
	--backend 198.19.0.11:8080 --backend 198.19.0.12:8080 \
	--backend 198.19.0.13:8080 --backend 198.19.0.14:8080 >"$log" 2>&1 &
lb=$!
pids+=("$lb")
for _ in $(seq 100); do grep -q "dispatchd: running" "$log" && break; sleep 0.1; done
grep -q "dispatchd: running" "$log" || { cat "$log"; echo "demo.sh: dispatchd did not start" >&2; exit 1; }
sed 's/^/  /' "$log"

echo
echo "== 2000 short connections (connect, 64 B echo, close), 8 at a time, to 198.18.0.100:80"
ip netns exec "${p}c" "$bin/dispatchd-testkit" connect --to 198.18.0.100:80 \
	--connections 2000 --concurrency 8 --payload 64 | sed 's/^/  /'
echo
echo "== one 5 MB transfer each way"
ip netns exec "${p}c" "$bin/dispatchd-testkit" bulk --to 198.18.0.100:80 --bytes 5000000 | sed 's/^/  /'
echo
echo "== dispatchd stops (SIGTERM) and reports"
kill -TERM "$lb"
wait "$lb" || true
sed -n '/final statistics/,$p' "$log" | sed 's/^/  /'
