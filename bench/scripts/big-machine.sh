#!/bin/bash
# The side-by-side benchmark for a machine with more cores (issue 11): the
# floor comparison and REST push latency over HTTP/1.1 and h2c, with
# prebuilt release binaries. Every run is bounded in count and time.
# usage: BIN=dir-with-pushgate-and-bench OUTDIR=dir bench/scripts/big-machine.sh [CONNECTIONS] [RUNS]
set -uo pipefail
BIN=${BIN:-target/release}; OUTDIR=${OUTDIR:-bench/results}; N=${1:-15000}; RUNS=${2:-2}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
sysctl -w net.ipv4.ip_local_port_range="1024 65000" >/dev/null 2>&1 || true
{
  echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), nofile $(ulimit -n)"
  echo "load at start: $(cat /proc/loadavg)"
} | tee "$OUTDIR/machine.txt"
BENCH=$BIN/bench PUSHGATE=$BIN/pushgate OUT=$OUTDIR/floor.md \
  timeout 420 bash bench/scripts/floor-compare.sh "$N" "$RUNS" 2>&1 | tail -20
for proto in http1 http2; do
  A=""; [ $proto = http2 ] && A="--http2"
  for r in 1 2; do
    echo "push latency $proto run $r (10,000 pushes/s for 10 s, 1,000 users, 64 in flight):"
    BENCH=$BIN/bench LATENCY_ARGS="$A --inflight 64" \
      timeout 60 bash bench/scripts/push-latency.sh "$BIN/pushgate" 10000 10s 1000
  done
done 2>&1 | tee "$OUTDIR/push-latency.txt"
