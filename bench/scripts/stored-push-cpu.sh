#!/usr/bin/env bash
# Server CPU per stored REST push, split by thread (the store's writer
# thread against the runtime's workers), for one or more pushgate binaries
# run alternately: the A/B of a storage change.
#
#   bash bench/scripts/stored-push-cpu.sh RUNS BIN_A [BIN_B ...]
#
# Each run: a fresh standalone (data dir under /tmp), `bench latency` with
# 200 users, 4 requests in flight, RATE × DUR pushes (closed loop; default
# 10000 × 4s = 40,000 pushes), STORE=true. Prints the bench's latency line
# and microseconds of CPU per push for each thread name.
set -u
RUNS=${1:?runs}; shift
B=${BENCH:-target/release/bench}
RATE=${RATE:-10000}; DUR=${DUR:-4s}
one() {
  local BIN=$1 D PID WS H S K BP
  D=$(mktemp -d)
  "$BIN" --data "$D" --ws 127.0.0.1:0 --http 127.0.0.1:0 > "$D/out" 2> "$D/err" & PID=$!
  for _ in $(seq 1 100); do grep -q ready "$D/out" && break; sleep 0.1; done
  WS=$(grep -o 'ws listening on [^ ]*' "$D/out" | awk '{print $4}')
  H=$(grep -o 'http listening on [^ ]*' "$D/out" | awk '{print $4}')
  S=$(grep -o 'token secret: [^ ]*' "$D/out" | awk '{print $3}')
  K=$(grep -o 'api key: [^ ]*' "$D/out" | awk '{print $3}')
  thr() { for t in /proc/$PID/task/*; do echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
          awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
  thr > "$D/t0"
  "$B" latency --ws "ws://$WS/ws" --http "http://$H" --api-key "$K" --token-secret "$S" \
     --users 200 --rate "$RATE" --duration "$DUR" --inflight 4 --store "${STORE:-true}" > "$D/bench.out" 2> "$D/bench.err"
  thr > "$D/t1"
  local sent; sent=$(grep -o 'sent [0-9]*' "$D/bench.out" | head -1 | awk '{print $2}')
  echo "$BIN: $(grep -E '^latency: sent' "$D/bench.out" | sed 's/, late.*//')"
  join "$D/t0" "$D/t1" | awk -v n="$sent" '$3 > $2 { printf "  %-16s %6.1f us per push\n", $1, ($3-$2)*10000/n; t += ($3-$2) }
      END { printf "  %-16s %6.1f us per push\n", "total", t*10000/n }'
  kill $PID; wait $PID 2>/dev/null
  rm -rf "$D"
}
for r in $(seq 1 "$RUNS"); do
  for bin in "$@"; do one "$bin"; done
done
