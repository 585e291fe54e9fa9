#!/bin/bash
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# Starts a fresh server on a temp data dir and port 0, measures, then stops it by its PID.
# usage: bench/scripts/idle-rss.sh BIN ws|tcp|quic|sse|sse-h2 [CONNECTIONS] [ENV=VAL...]
# BENCH=path/to/bench overrides the bench binary (default target/release/bench).
# sse-h2: the server gets --tls-cert/--tls-key (a self-signed certificate that a
# first, throwaway start of BIN generates), H2_STREAMS (default 100) streams per
# HTTP/2 connection.
BIN=$1; T=$2; N=${3:-15000}; shift $(( $# < 3 ? $# : 3 )); ENVS="$@"
B=${BENCH:-target/release/bench}
D=$(mktemp -d)
TLS=""
if [ "$T" = sse-h2 ]; then
  C=$(mktemp -d)
  $BIN --data $C --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 --http 127.0.0.1:0 > $C/out 2>$C/err & CP=$!
  for i in $(seq 1 100); do grep -q ready $C/out && break; sleep 0.1; done
  kill $CP; wait $CP 2>/dev/null
  cp $C/tls_cert.pem $C/tls_key.pem $D/; rm -rf $C
  TLS="--tls-cert $D/tls_cert.pem --tls-key $D/tls_key.pem"
fi
env $ENVS $BIN --data $D --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 --http 127.0.0.1:0 $TLS > $D/out 2>$D/err & PID=$!
for i in $(seq 1 100); do grep -q ready $D/out && break; sleep 0.1; done
WS=$(grep -o 'ws listening on [^ ]*' $D/out | awk '{print $4}')
TCP=$(grep -o 'tcp listening on [^ ]*' $D/out | awk '{print $4}')
QUIC=$(grep -o 'quic listening on [^ ]*' $D/out | awk '{print $4}')
FP=$(grep -o 'tls fingerprint: [^ ]*' $D/out | awk '{print $3}')
S=$(grep -o 'token secret: [^ ]*' $D/out | awk '{print $3}')
case $T in
  tcp) A="--transport tcp --tcp $TCP";;
  quic) A="--transport quic --quic $QUIC --tls-fingerprint $FP";;
  sse) A="--transport sse --ws ws://$WS/ws";;
  sse-h2) A="--transport sse-h2 --ws wss://$WS/ws --tls-ca $D/tls_cert.pem --h2-streams ${H2_STREAMS:-100}";;
  *) A="--transport ws --ws ws://$WS/ws";;
esac
$B idle $A --connections $N --token-secret $S --sources 127.0.0.2-127.0.0.5 --rate 5000 --hold 2s --room-pid $PID > $D/bench.out 2>$D/bench.err
grep -E "^(ramp|rss per|slab per|bench rss per|hold)" $D/bench.out
kill $PID; wait $PID 2>/dev/null
[ -n "$KEEP" ] && echo "kept $D" || rm -rf $D
