#!/bin/bash
# REST unicast side by side: pushgate (standalone, stored pushes, fsync group
# commit) and Nchan (nginx-light + libnginx-mod-nchan, per-user channels in
# memory), the same `bench latency` client: USERS connected users, pushes
# round-robin from PUBLISHERS requests in flight (keep-alive HTTP/1.1), asked
# at RATE/s (above what either sustains: closed loop). Prints each run's
# latency line and the server's CPU per push (pushgate: its one process;
# Nchan: its one worker). Runs alternate, RUNS of each.
# Run from the repository root after
# `cargo build --release -p pushgate -p pushgate-bench`.
# usage: bench/scripts/nchan-unicast.sh [RUNS] [DURATION] [PUBLISHERS] [RATE] [USERS]
# BIN=path overrides target/release/pushgate, BENCH=path target/release/bench,
# NGINX=path /usr/sbin/nginx, PORT=n the Nchan port (default 7900);
# STORE=false sends pushgate's pushes with "store":false (in memory, as
# Nchan keeps them); ONLY=pushgate or ONLY=nchan runs one server.
set -euo pipefail
RUNS=${1:-2}; DUR=${2:-15s}; PUBS=${3:-4}; RATE=${4:-40000}; U=${5:-200}
B=${BENCH:-target/release/bench}
BIN=${BIN:-target/release/pushgate}
NGINX=${NGINX:-/usr/sbin/nginx}
PORT=${PORT:-7900}
. "$(dirname "$0")/nchan-start.sh"
ulimit -n $(ulimit -Hn)
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
per_push() { # cpu ticks (1/100 s), pushes -> microseconds per push
  awk -v t=$1 -v n=$2 'BEGIN { if (n > 0) printf "%.1f", t * 10000 / n; else print "n/a" }'
}
sent_of() { grep -o 'sent [0-9]*' "$1" | head -1 | awk '{print $2}'; }

nchan_run() {
  D=$(mktemp -d)
  nchan_start "$D"
  c0=$(ticks $WORKER)
  "$B" latency --nchan --ws "ws://127.0.0.1:$PORT/sub/" --http "http://127.0.0.1:$PORT" \
      --api-key unused --token-secret unused --users $U --rate $RATE --duration $DUR \
      --inflight $PUBS > $D/bench.out 2>$D/bench.err || true
  c1=$(ticks $WORKER)
  echo "nchan:    $(grep -E '^latency: sent' $D/bench.out)"
  echo "nchan:    server cpu per push $(per_push $((c1-c0)) $(sent_of $D/bench.out)) us"
  kill $MASTER; wait $MASTER 2>/dev/null || true
  rm -rf "$D"
}

pushgate_run() {
  D=$(mktemp -d)
  # The floor under a stored push on the same file system: write + fdatasync.
  [ "${STORE:-true}" = true ] && echo "floor:    $("$B" durable --dir $D --writes 10000)"
  $BIN --data $D --ws 127.0.0.1:0 --http 127.0.0.1:0 > $D/out 2>$D/err & PID=$!
  for _ in $(seq 1 100); do grep -q ready $D/out && break; sleep 0.1; done
  WS=$(grep -o 'ws listening on [^ ]*' $D/out | awk '{print $4}')
  H=$(grep -o 'http listening on [^ ]*' $D/out | awk '{print $4}')
  S=$(grep -o 'token secret: [^ ]*' $D/out | awk '{print $3}')
  K=$(grep -o 'api key: [^ ]*' $D/out | awk '{print $3}')
  c0=$(ticks $PID)
  "$B" latency --ws "ws://$WS/ws" --http "http://$H" --api-key "$K" --token-secret "$S" \
      --users $U --rate $RATE --duration $DUR --inflight $PUBS --store ${STORE:-true} > $D/bench.out 2>$D/bench.err || true
  c1=$(ticks $PID)
  echo "pushgate: $(grep -E '^latency: sent' $D/bench.out)"
  echo "pushgate: server cpu per push $(per_push $((c1-c0)) $(sent_of $D/bench.out)) us"
  kill $PID; wait $PID 2>/dev/null || true
  rm -rf "$D"
}

for r in $(seq 1 $RUNS); do
  echo "== run $r of $RUNS: $U users, $PUBS publishers, asked $RATE/s for $DUR (pushgate store=${STORE:-true})"
  [ "${ONLY:-nchan}" = nchan ] && nchan_run
  [ "${ONLY:-pushgate}" = pushgate ] && pushgate_run
done
