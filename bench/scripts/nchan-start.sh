# Sourced by the Nchan scripts: `nchan_start DIR` writes DIR/nginx.conf from
# nchan.conf (replacing @DIR@ and @PORT@), starts nginx with one worker, and
# sets MASTER and WORKER to their PIDs (the worker is the process to
# measure); exits 2 with nginx's error log when no worker appears.
# Needs NGINX (the binary) and PORT.
nchan_start() {
  local dir=$1
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$PORT|g" "$(dirname "${BASH_SOURCE[0]}")/nchan.conf" > "$dir/nginx.conf"
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" & MASTER=$!
  WORKER=
  for _ in $(seq 1 50); do
    WORKER=$(pgrep -P $MASTER | head -1 || true)
    [ -n "$WORKER" ] && return 0
    sleep 0.1
  done
  echo "nginx did not start:"; cat "$dir/error.log"; exit 2
}
