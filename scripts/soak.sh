#!/usr/bin/env bash
# Soak: MINUTES (default 10) of mixed short and long-lived connections through
# dispatchd on the DESIGN.md topology, with a daemon restarted every minute.
# Afterwards: records left (must be 0) and resident memory growth after warm-up
# (must be < 1 %). Not part of CI; needs root. Prints the figures at the end.
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
bin=target/release
p=soak$$
sock=/tmp/dispatchd-$p.sock
log=$(mktemp)
pids=()
declare -A server
cleanup() {
	for pid in "${pids[@]}" "${server[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	scripts/topology.sh down "$p"
	rm -f "$log" "$sock"
}
trap cleanup EXIT

scripts/topology.sh up "$p" 4 1
start_server() {
	ip netns exec "${p}s" "$bin/dispatchd-testkit" serve --listen "198.19.0.$((11 + $1)):8080" >/dev/null 2>&1 &
	server[$1]=$!
}
for i in 0 1 2 3; do start_server "$i"; done
sleep 0.5
ip netns exec "${p}d" "$bin/dispatchd" run --front l0 --back l1 --service 198.18.0.100:80 \
	--backend 198.19.0.11:8080 --backend 198.19.0.12:8080 \
	--backend 198.19.0.13:8080 --backend 198.19.0.14:8080 \
	--control-socket "$sock" --linger-ms 1000 --idle-timeout-ms 20000 \
	--health-interval-ms 500 >"$log" 2>&1 &
lb=$!
pids+=("$lb")
for _ in $(seq 100); do grep -q "dispatchd: running" "$log" && break; sleep 0.1; done
grep -q "dispatchd: running" "$log" || { cat "$log"; exit 1; }

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$lb/status"; }
ctl() { "$bin/dispatchd" ctl --socket "$sock" "$@"; }
field() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

short_ok=0 short_err=0 long_ok=0 long_err=0 restarts=0
end=$(($(date +%s) + minutes * 60))
warm_at=$(($(date +%s) + 60))
rss_warm=""
next_restart=$(($(date +%s) + 60))
victim=0
while [ "$(date +%s)" -lt "$end" ]; do
	# Four long-lived connections per round, each ~20 s of steady exchanges.
	holds=()
	for _ in 1 2 3 4; do
		(ip netns exec "${p}c" "$bin/dispatchd-testkit" hold --to 198.18.0.100:80 --seconds 20 \
			--interval-ms 200 >/dev/null 2>&1 && echo ok || echo err) >>"$log.long" &
		holds+=($!)
	done
	# Short connections until the round's long ones are done.
	round_end=$(($(date +%s) + 20))
	while [ "$(date +%s)" -lt "$round_end" ]; do
		out=$(ip netns exec "${p}c" "$bin/dispatchd-testkit" connect --to 198.18.0.100:80 \
			--connections 300 --concurrency 4 --timeout-ms 3000 2>/dev/null || true)
		ok=$(echo "$out" | sed -n 's/^ok=\([0-9]*\) errors=\([0-9]*\).*/\1/p')
		err=$(echo "$out" | sed -n 's/^ok=\([0-9]*\) errors=\([0-9]*\).*/\2/p')
		short_ok=$((short_ok + ${ok:-0}))
		short_err=$((short_err + ${err:-0}))
		if [ "$(date +%s)" -ge "$next_restart" ]; then
			kill "${server[$victim]}" 2>/dev/null || true
			sleep 2
			start_server "$victim"
			restarts=$((restarts + 1))
			victim=$(((victim + 1) % 4))
			next_restart=$(($(date +%s) + 60))
		fi
		if [ -z "$rss_warm" ] && [ "$(date +%s)" -ge "$warm_at" ]; then
			rss_warm=$(rss)
		fi
	done
	wait "${holds[@]}" 2>/dev/null || true
done
sleep 3 # the last closes linger 1 s
rss_end=$(rss)
stats=$(ctl stats --json)
conns=$(echo "$stats" | field connections)
flows=$(echo "$stats" | field flows)
long_ok=$(grep -c '^ok' "$log.long" || true)
long_err=$(grep -c '^err' "$log.long" || true)
rm -f "$log.long"
growth=$(awk -v a="${rss_warm:-$rss_end}" -v b="$rss_end" 'BEGIN { printf "%.2f", (b - a) * 100 / a }')
echo "soak: ${minutes} min, short connections ok=$short_ok failed=$short_err," \
	"long-lived ok=$long_ok failed=$long_err, daemon restarts=$restarts"
echo "soak: records after: tracked=$conns in tables=$flows"
echo "soak: RSS after warm-up ${rss_warm:-?} KiB, at the end $rss_end KiB, growth $growth %"
ctl stats | sed 's/^/  /'
[ "$conns" = 0 ] && [ "$flows" = 0 ] || { echo "soak: FAILED: records left" >&2; exit 1; }
awk -v g="$growth" 'BEGIN { exit !(g < 1.0) }' || { echo "soak: FAILED: RSS grew $growth %" >&2; exit 1; }
echo "soak: passed"
