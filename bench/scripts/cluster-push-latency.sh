#!/bin/bash
# Push -> delivery latency through a local cluster (`pushgate dev-cluster`):
# REST on the center, ids from idgen links, store through a saver on Redis,
# lookup in the registers, delivery over the room link.
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# usage: bench/scripts/cluster-push-latency.sh BIN RATE DURATION [USERS] [BASE_PORT]
BIN=$1; R=$2; DUR=$3; U=${4:-200}; BASE=${5:-27800}
B=${BENCH:-target/release/bench}
D=$(mktemp -d)
$BIN dev-cluster --rooms 1 --base-port $BASE --data $D/data > $D/out 2>$D/err & PID=$!
for i in $(seq 1 300); do grep -q '^ready' $D/out && break; sleep 0.1; done
grep -q '^ready' $D/out || { echo "dev-cluster did not start:"; tail -20 $D/err; kill $PID; exit 1; }
S=$(grep -o '^token secret: [^ ]*' $D/out | awk '{print $3}')
K=$(grep -o '^api key: [^ ]*' $D/out | awk '{print $3}')
$B latency --http http://127.0.0.1:$BASE --api-key $K --ws ws://127.0.0.1:$((BASE+100))/ws --token-secret $S --users $U --rate $R --duration $DUR > $D/bench.out 2>$D/bench.err
grep "^latency:\|^lost\|^sent" $D/bench.out
kill -TERM $PID; wait $PID 2>/dev/null
rm -rf $D
