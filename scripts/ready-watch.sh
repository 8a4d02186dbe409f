#!/usr/bin/env bash
# Announces this instance's routes while dispatchd is ready, withdraws them
# otherwise: every INTERVAL seconds it asks `dispatchd ctl ready` (exit 0 when
# ready; not ready when stopping, when a worker is not running, when a service
# has no healthy daemon, or when dispatchd does not answer at all) and enables
# or disables the bird2 protocol PROTOCOL (a static protocol holding the
# routes; BGP then announces or withdraws them). It acts only on a change, and
# says each one on stdout.
#
# usage: ready-watch.sh CONTROL_SOCKET BIRD_SOCKET [PROTOCOL] [INTERVAL]
#   DISPATCHD (environment): the dispatchd binary, `dispatchd` by default.
set -u

ctl=${1:?usage: ready-watch.sh CONTROL_SOCKET BIRD_SOCKET [PROTOCOL] [INTERVAL]}
bird=${2:?usage: ready-watch.sh CONTROL_SOCKET BIRD_SOCKET [PROTOCOL] [INTERVAL]}
proto=${3:-ready}
interval=${4:-0.2}
dispatchd=${DISPATCHD:-dispatchd}

state=unknown
echo "ready-watch: following $ctl for bird protocol $proto every ${interval}s"
while :; do
	if why=$("$dispatchd" ctl --socket "$ctl" ready 2>&1); then
		want=enable
	else
		want=disable
	fi
	if [ "$want" != "$state" ]; then
		if birdc -s "$bird" "$want" "$proto" >/dev/null 2>&1; then
			state=$want
			echo "ready-watch: $(date +%T.%3N) ${want}d $proto: ${why//$'\n'/ }"
		fi
	fi
	sleep "$interval"
done
