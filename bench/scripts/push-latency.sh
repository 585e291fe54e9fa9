#!/bin/bash
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# Starts a fresh server on a temp data dir and port 0, measures, then stops it by its PID.
# usage: [TRANSPORT=ws|tcp|quic] bench/scripts/push-latency.sh BIN RATE DURATION [USERS] [ENV=VAL...]
# TRANSPORT picks the client transport (default ws); BENCH=path/to/bench overrides the bench binary;
# LATENCY_ARGS adds flags to `bench latency` (e.g. "--http2 --inflight 64").
BIN=$1; R=$2; DUR=$3; U=${4:-200}; shift $(( $# < 4 ? $# : 4 )); ENVS="$@"
B=${BENCH:-target/release/bench}
T=${TRANSPORT:-ws}
D=$(mktemp -d)
env $ENVS $BIN --data $D --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 --http 127.0.0.1:0 > $D/out 2>$D/err & PID=$!
for i in $(seq 1 100); do grep -q ready $D/out && break; sleep 0.1; done
WS=$(grep -o 'ws listening on [^ ]*' $D/out | awk '{print $4}')
H=$(grep -o 'http listening on [^ ]*' $D/out | awk '{print $4}')
S=$(grep -o 'token secret: [^ ]*' $D/out | awk '{print $3}')
K=$(grep -o 'api key: [^ ]*' $D/out | awk '{print $3}')
TCP=$(grep -o 'tcp listening on [^ ]*' $D/out | awk '{print $4}')
QUIC=$(grep -o 'quic listening on [^ ]*' $D/out | awk '{print $4}')
FP=$(grep -o 'tls fingerprint: [^ ]*' $D/out | awk '{print $3}')
case $T in
  tcp) A="--transport tcp --tcp $TCP";;
  quic) A="--transport quic --quic $QUIC --tls-fingerprint $FP";;
  *) A="--transport ws --ws ws://$WS/ws";;
esac
c0=$(awk '{print $14+$15}' /proc/$PID/stat)
$B latency --http http://$H --api-key $K $A --token-secret $S --users $U --rate $R --duration $DUR $LATENCY_ARGS > $D/bench.out 2>$D/bench.err
c1=$(awk '{print $14+$15}' /proc/$PID/stat)
grep -E "^(latency|http errors|clients closed):" $D/bench.out
echo "server cpu: $(( (c1-c0) ))0 ms"
kill $PID; wait $PID 2>/dev/null
rm -rf $D
