#!/usr/bin/env bash
# Soak test: the gateway under moderate load for a while, with a config reload every minute
# and a cold start every third minute, printing rouse's RSS and open files once a minute.
# Fails if either has grown by the end (RSS by more than a quarter plus 8 MB over the
# second minute's figure, open files by more than 32), or if rouse answered any 5xx of its own.
#
#   scripts/soak.sh                  # 30 minutes
#   SOAK_MINUTES=5 scripts/soak.sh   # a shorter run
#
# Loopback only; every request loop is bounded by count; stops everything it started.
# Installs nghttp2-client (h2load) from Debian's packages if missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MINUTES=${SOAK_MINUTES:-30}
command -v h2load >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq nghttp2-client >/dev/null
}
cargo build --profile dist --locked -q
ROUSE="$ROOT/target/dist/rouse"
BACKEND_PY="$ROOT/tests/it/support/backend.py"

WORK=$(mktemp -d /tmp/rouse-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

BE=18301; GW=18302; ADMIN=18303
PORT=$BE REVISION=static python3 "$BACKEND_PY" >/dev/null 2>&1 &
PIDS+=($!)

config() { # $1: a value that changes on every reload
  cat > "$WORK/gw.yaml.new" <<YAML
listen: "127.0.0.1:$GW"
admin: "127.0.0.1:$ADMIN"
watch_interval: 1s
services:
  - name: soak
    hosts: ["*"]
    routes:
      - path: /cold
        traffic: [{ revision: cold, percent: 100 }]
    traffic:
      - { revision: static, percent: 100, set_headers: { x-generation: "$1" } }
    revisions:
      - name: static
        container_concurrency: 8
        endpoints: ["127.0.0.1:$BE"]
      - name: cold
        container_concurrency: 4
        scale:
          max: 2
          idle_grace: 20s
          process:
            command: ["python3", "$BACKEND_PY"]
            env: { REVISION: cold }
YAML
  mv "$WORK/gw.yaml.new" "$WORK/gw.yaml"
}
config 0
RUST_LOG=warn "$ROUSE" gateway --config "$WORK/gw.yaml" >"$WORK/rouse.log" 2>&1 &
RPID=$!
PIDS+=($RPID)
# Both the gateway and the static backend answer before the load starts.
for url in "http://127.0.0.1:$ADMIN/readyz" "http://127.0.0.1:$BE/"; do
  for _ in $(seq 100); do
    curl -sf "$url" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

sample() { # RSS in kB and open files of rouse
  echo "$(awk '/^VmRSS/ {print $2}' /proc/$RPID/status) $(ls /proc/$RPID/fd | wc -l)"
}
own_5xx() { # 5xx answers rouse gave itself (it also counts backend 5xx; backend.py gives none)
  curl -s "http://127.0.0.1:$ADMIN/metrics" |
    awk '/^rouse_requests_total\{.*code="5xx"/ {s += $2} END {print s + 0}'
}

printf '%-6s %10s %6s %10s\n' minute rss_kB fds requests
base_rss=0; base_fds=0; total=0
for m in $(seq "$MINUTES"); do
  started=$(date +%s)
  config "$m"
  h2load --h1 -n 6000 -c 8 "http://127.0.0.1:$GW/" >/dev/null 2>&1 || true
  total=$((total + 6000))
  if [ $((m % 3)) -ne 0 ]; then
    # Every third minute the cold revision gets nothing, so it scales to zero and the next
    # minute begins with a cold start.
    h2load --h1 -n 600 -c 4 "http://127.0.0.1:$GW/cold" >/dev/null 2>&1 || true
    total=$((total + 600))
  fi
  left=$((60 - ($(date +%s) - started)))
  [ "$left" -le 0 ] || sleep "$left"
  read -r rss fds < <(sample)
  printf '%-6s %10s %6s %10s\n' "$m" "$rss" "$fds" "$total"
  if [ "$m" -eq 2 ] || { [ "$MINUTES" -lt 2 ] && [ "$m" -eq 1 ]; }; then
    base_rss=$rss; base_fds=$fds
  fi
done
read -r rss fds < <(sample)
errors=$(own_5xx)
echo "rouse 5xx answers: $errors"
fail=0
if [ "$rss" -gt $((base_rss + base_rss / 4 + 8192)) ]; then
  echo "RSS grew: $base_rss kB at minute 2, $rss kB at the end" >&2; fail=1
fi
if [ "$fds" -gt $((base_fds + 32)) ]; then
  echo "open files grew: $base_fds at minute 2, $fds at the end" >&2; fail=1
fi
if [ "$errors" != 0 ]; then
  echo "rouse answered $errors requests with 5xx; its log:" >&2; tail -20 "$WORK/rouse.log" >&2; fail=1
fi
[ "$fail" -eq 0 ] && echo "soak: flat over $MINUTES minutes"
exit "$fail"
