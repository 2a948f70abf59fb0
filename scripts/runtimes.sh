#!/usr/bin/env bash
# rouse's worker threads (the default with more than one CPU) against `--work-stealing`, on the
# wall clock: the same gateway in front of one nginx backend, unpinned (rouse, wrk and the
# backend share the machine's CPUs), HTTP/1.1 with wrk at 1 and 50 connections, the two modes
# alternating for ROUNDS rounds (3) of SECONDS seconds (5) each. Prints one line per mode, load
# and round. Loopback only; stops everything it starts.
#
#   scripts/runtimes.sh
#   ROUNDS=5 SECONDS_EACH=8 scripts/runtimes.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-5}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --profile dist --locked -q
ROUSE="$ROOT/target/dist/rouse"

WORK=$(mktemp -d /tmp/rouse-runtimes.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

BE=18300; GW=18301
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f;
  uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;
  server { listen 127.0.0.1:$BE; location / { return 200 'ok'; } } }
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
cat > "$WORK/gw.yaml" <<EOF
listen: "127.0.0.1:$GW"
watch_interval: 0s
services:
  - name: bench
    hosts: ["*"]
    traffic: [{ revision: r, percent: 100 }]
    revisions:
      - { name: r, endpoints: ["127.0.0.1:$BE"] }
EOF

ready() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}
ready $BE

for round in $(seq "$ROUNDS"); do
  for mode in workers work-stealing; do
    args=()
    [ "$mode" = work-stealing ] && args=(--work-stealing)
    RUST_LOG=warn "$ROUSE" "${args[@]}" gateway --config "$WORK/gw.yaml" >/dev/null 2>&1 &
    r=$!
    PIDS+=("$r")
    ready $GW
    for c in 1 50; do
      out=$(wrk -t1 -c"$c" -d"${SECONDS_EACH}s" --latency "http://127.0.0.1:$GW/")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1=="50%" {print $2}')
      non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
      if [ -n "$non2xx" ]; then
        echo "round $round $mode c=$c: $non2xx non-2xx answers; no figure recorded" >&2
        exit 1
      fi
      echo "round $round  $mode  c=$c  req/s $rps  p50 $p50"
    done
    kill "$r"
    wait "$r" 2>/dev/null || true
  done
done
