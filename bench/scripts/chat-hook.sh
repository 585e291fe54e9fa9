#!/bin/bash
# bench chat with the application hook on and off, alternated, same quarter
# hour: the hook is bench/scripts/hook.py (a local hook that allows every
# message at once). Run from the repository root after
# `cargo build --release -p pushgate -p pushgate-bench`.
# usage: bench/scripts/chat-hook.sh [RUNS] [RATE] [DURATION]
RUNS=${1:-3}; R=${2:-1000}; DUR=${3:-15s}
BIN=${BIN:-target/release/pushgate}
D=$(mktemp -d)
python3 bench/scripts/hook.py 0 > $D/hook.out 2>&1 & HP=$!
for _ in $(seq 1 50); do grep -q listening $D/hook.out && break; sleep 0.1; done
HOOK=$(awk '/listening/ {print $4}' $D/hook.out)
for r in $(seq 1 $RUNS); do
  echo "== run $r: hook off"
  bash bench/scripts/chat.sh $BIN $R $DUR --pairs 100
  echo "== run $r: hook on (http://$HOOK/hook)"
  SERVER_ARGS="--hook-url http://$HOOK/hook" bash bench/scripts/chat.sh $BIN $R $DUR --pairs 100
done
kill $HP; wait $HP 2>/dev/null
rm -rf $D
