#!/bin/bash
# Server CPU per connect, heartbeat and broadcast delivery: pushgate against
# `bench floor` (see bench/README.md, "bench floor"), the same `bench idle`
# workload against each, fresh servers per run, results in a Markdown file.
# Run from the repository root after
#   cargo build --release -p pushgate-bench -p pushgate
# usage: bench/scripts/floor-compare.sh [CONNECTIONS] [RUNS] [extra bench compare flags...]
# BENCH=path overrides target/release/bench, PUSHGATE=path target/release/pushgate,
# OUT=file the result file (default bench/results/<UTC date>-floor.md).
set -euo pipefail
N=${1:-15000}; RUNS=${2:-2}; shift $(( $# < 2 ? $# : 2 ))
B=${BENCH:-target/release/bench}
PG=${PUSHGATE:-target/release/pushgate}
OUT=${OUT:-bench/results/$(date -u +%F)-floor.md}
ulimit -n $(ulimit -Hn)
exec "$B" compare --pushgate "$PG" --connections "$N" --runs "$RUNS" \
    --sources 127.0.0.2-127.0.0.4 --rate 5000 --settle 5s --hold 30s \
    --heartbeats 25,5 --broadcasts 10 --out "$OUT" "$@"
