#!/bin/bash
# bench chat through a local cluster (`pushgate dev-cluster`): clients on a
# room send 1:1 messages; the room's own dispatcher takes ids from the
# idgens, stores through the saver (Redis) and delivers through the
# registers. CPU per message is the whole cluster's (every process of the
# dev-cluster tree, /proc ticks), the load client's not included.
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# usage: bench/scripts/cluster-chat.sh BIN RATE DURATION [PAIRS] [BASE_PORT]
BIN=$1; R=$2; DUR=$3; P=${4:-100}; BASE=${5:-27800}
B=${BENCH:-target/release/bench}
D=$(mktemp -d)
$BIN dev-cluster --rooms 1 --base-port $BASE --data $D/data > $D/out 2>$D/err & PID=$!
for i in $(seq 1 300); do grep -q '^ready' $D/out && break; sleep 0.1; done
grep -q '^ready' $D/out || { echo "dev-cluster did not start:"; tail -20 $D/err; kill $PID; exit 1; }
S=$(grep -o '^token secret: [^ ]*' $D/out | awk '{print $3}')
# CPU ticks (utime + stime) of the dev-cluster and every process below it.
tree_ticks() {
  local all="$PID $(pgrep -P $PID | tr '\n' ' ')"
  local more; for p in $all; do more="$more $(pgrep -P $p | tr '\n' ' ')"; done
  local t=0
  for p in $all $more; do
    [ -r /proc/$p/stat ] || continue
    t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat)))
  done
  echo $t
}
T0=$(tree_ticks)
$B chat --ws ws://127.0.0.1:$((BASE+100))/ws --token-secret $S --pairs $P --rate $R --duration $DUR > $D/bench.out 2>$D/bench.err
echo "exit $?"
T1=$(tree_ticks)
grep -E "^chat:" $D/bench.out
ACC=$(grep -o 'accepted [0-9]*' $D/bench.out | head -1 | awk '{print $2}')
HZ=$(getconf CLK_TCK)
echo "cluster cpu: $(( (T1 - T0) * 1000000 / HZ / (ACC > 0 ? ACC : 1) )) us per message ($((T1 - T0)) ticks over $ACC messages, including the grace period)"
kill -TERM $PID; wait $PID 2>/dev/null
rm -rf $D
