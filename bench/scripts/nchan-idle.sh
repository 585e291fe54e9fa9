#!/bin/bash
# Nchan side by side: the `bench idle` workload of bench/scripts/floor-compare.sh
# against Nchan (nginx-light + libnginx-mod-nchan), without auth (Nchan has no
# pushgate tokens: --no-auth) and with the broadcast body sent as the msg frame
# itself (--broadcast-as-frame); CPU is the single nginx worker's.
# Run from the repository root after `cargo build --release -p pushgate-bench`.
# usage: bench/scripts/nchan-idle.sh [CONNECTIONS] [HEARTBEAT] [extra bench idle flags...]
# BENCH=path overrides target/release/bench; NGINX=path overrides /usr/sbin/nginx;
# PORT=n the port (default 7900).
set -euo pipefail
N=${1:-15000}; HB=${2:-25}; shift $(( $# < 2 ? $# : 2 ))
B=${BENCH:-target/release/bench}
NGINX=${NGINX:-/usr/sbin/nginx}
PORT=${PORT:-7900}
ulimit -n $(ulimit -Hn)
. "$(dirname "$0")/nchan-start.sh"
D=$(mktemp -d)
MASTER=
trap '[ -n "$MASTER" ] && kill $MASTER 2>/dev/null; wait $MASTER 2>/dev/null; rm -rf "$D"' EXIT
nchan_start "$D"
echo "nginx master $MASTER, worker $WORKER"
"$B" idle --no-auth --ws "ws://127.0.0.1:$PORT/ws" --http "http://127.0.0.1:$PORT" \
    --broadcast-as-frame --connections "$N" --heartbeat "$HB" \
    --sources 127.0.0.2-127.0.0.4 --rate 5000 --settle 5s --hold 30s --broadcasts 10 \
    --room-pid "$WORKER" "$@"
