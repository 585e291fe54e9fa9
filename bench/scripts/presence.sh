#!/bin/bash
# Presence at scale on one standalone server: N connections subscribe to one
# channel with presence (bench idle --channel), then the REST API pages
# through the members (GET /api/v1/channels/bench:all/presence) while they
# are held, and the room's CPU per connect is compared with the same ramp on
# a channel without presence (the cost of keeping the members).
#
# Run from the repository root after `cargo build --release -p pushgate -p pushgate-bench`.
# usage: bench/scripts/presence.sh [CONNECTIONS] [RUNS]
# Starts fresh servers on temp data dirs and port 0; stops them by their PIDs.
set -u
N=${1:-15000}; RUNS=${2:-3}
BIN=${BIN:-target/release/pushgate}; B=${BENCH:-target/release/bench}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

one() { # $1 = channel to fill: bench:all has presence, plain:all has not
  local CH=$1 D; D=$(mktemp -d)
  $BIN --data $D --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 --http 127.0.0.1:0 \
    --presence-channels 'bench:*' > $D/out 2>$D/err & local PID=$!
  for _ in $(seq 1 100); do grep -q ready $D/out && break; sleep 0.1; done
  local WS HTTP KEY S
  WS=$(grep -o 'ws listening on [^ ]*' $D/out | awk '{print $4}')
  HTTP=$(grep -o 'http listening on [^ ]*' $D/out | awk '{print $4}')
  KEY=$(grep -o 'api key: [^ ]*' $D/out | awk '{print $3}')
  S=$(grep -o 'token secret: [^ ]*' $D/out | awk '{print $3}')
  $B idle --transport ws --ws ws://$WS/ws --connections $N --token-secret $S \
    --sources 127.0.0.2-127.0.0.5 --rate 5000 --hold 30s --room-pid $PID \
    --channel $CH > $D/bench.out 2>$D/bench.err & local BP=$!
  for _ in $(seq 1 600); do
    c=$(curl -s -H "Authorization: Bearer $KEY" http://$HTTP/api/v1/stats | grep -o '"connections":[0-9]*' | head -1 | cut -d: -f2)
    [ "${c:-0}" -ge "$N" ] && break; sleep 0.1
  done
  sleep 1
  if [ "$CH" = bench:all ]; then
    local U="http://$HTTP/api/v1/channels/bench:all/presence"
    for r in 1 2 3 4 5; do
      # Every member, 1,000 a page, following the cursor.
      local cur="" total=0 pages=0 t0 t1
      t0=$(date +%s.%N)
      while :; do
        local q="limit=1000"; [ -n "$cur" ] && q="$q&cursor=$cur"
        local body; body=$(curl -s -H "Authorization: Bearer $KEY" "$U?$q")
        pages=$((pages + 1))
        total=$((total + $(echo "$body" | grep -o '"user":' | wc -l)))
        cur=$(echo "$body" | grep -o '"next":"[0-9a-f]*"' | cut -d'"' -f4)
        [ -z "$cur" ] && break
      done
      t1=$(date +%s.%N)
      echo "walk $total members in $pages pages: $(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.1f') ms" >> $D/walk
      # One page of 100 from the first member and from the middle.
      curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $KEY" "$U?limit=100" >> $D/first
      mid=$(printf 'bench-%d' $((N / 2)) | xxd -p | tr -d '\n')
      curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $KEY" "$U?limit=100&cursor=$mid" >> $D/mid
    done
    cat $D/walk
    echo "page of 100 (first): median $(median < $D/first | xargs -I{} echo '{} * 1000' | bc -l | xargs printf '%.2f') ms"
    echo "page of 100 (middle): median $(median < $D/mid | xargs -I{} echo '{} * 1000' | bc -l | xargs printf '%.2f') ms"
  fi
  wait $BP
  echo "channel $CH: $(grep -E '^ramp' $D/bench.out | head -1)"
  grep -E "^(rss per|hold|room cpu per connect)" $D/bench.out | head -3 | sed "s/^/channel $CH: /"
  kill $PID; wait $PID 2>/dev/null
  rm -rf $D
}

for r in $(seq 1 $RUNS); do
  echo "== run $r, $N connections"
  one bench:all
  one plain:all
done
