#!/bin/bash
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# Starts a fresh standalone on a temp data dir and port 0, runs `bench chat`
# (its --server-pid gives CPU per message), then stops the server by its PID.
# usage: [TRANSPORT=ws|tcp] bench/scripts/chat.sh BIN RATE DURATION [CHAT ARGS...]
#   e.g. bench/scripts/chat.sh target/release/pushgate 1000 20s --pairs 100
#        bench/scripts/chat.sh target/release/pushgate 100 20s --group-size 100 --groups 2
# BENCH=path/to/bench overrides the bench binary; SERVER_ARGS adds server flags
# (e.g. "--hook-url http://127.0.0.1:9000/hook").
BIN=$1; R=$2; DUR=$3; shift 3; ARGS="$@"
B=${BENCH:-target/release/bench}
T=${TRANSPORT:-ws}
D=$(mktemp -d)
$BIN --data $D --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 --http 127.0.0.1:0 $SERVER_ARGS > $D/out 2>$D/err & PID=$!
for i in $(seq 1 100); do grep -q ready $D/out && break; sleep 0.1; done
WS=$(grep -o 'ws listening on [^ ]*' $D/out | awk '{print $4}')
TCP=$(grep -o 'tcp listening on [^ ]*' $D/out | awk '{print $4}')
S=$(grep -o 'token secret: [^ ]*' $D/out | awk '{print $3}')
case $T in
  tcp) A="--transport tcp --tcp $TCP";;
  *) A="--transport ws --ws ws://$WS/ws";;
esac
$B chat $A --token-secret $S --rate $R --duration $DUR --server-pid $PID $ARGS > $D/bench.out 2>$D/bench.err
echo "exit $?"
grep -E "^chat:" $D/bench.out
kill $PID; wait $PID 2>/dev/null
rm -rf $D
