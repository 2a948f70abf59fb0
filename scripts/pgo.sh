#!/usr/bin/env bash
# A profile-guided build of rouse: the dist profile built once with instrumentation, run under
# a training load, and built again with the profile it wrote, so that the compiler lays out and
# inlines the code the way requests use it. Prints the optimised binary's path on stdout.
#
#   scripts/pgo.sh                                   # target/pgo/use/dist/rouse
#   PGO_TARGET=x86_64-unknown-linux-gnu PGO_RUSTFLAGS="-C target-feature=+crt-static" \
#     PGO_DIR=target/pgo-static scripts/pgo.sh       # the static build scripts/bench.sh measures
#   PGO_FEATURES=kubernetes scripts/pgo.sh           # with cargo features (the container image)
#   PGO_STEP=instrumented scripts/pgo.sh             # only the instrumented build: the image's
#                                                    # layer of compiled dependencies
#
# The training load is broad rather than the benchmarks' alone: the gateway over HTTP/1.1 at
# 1 and 50 connections, with request bodies, split traffic, a revision with a concurrency
# limit, HTTP/2 (h2c and over TLS, to HTTP/1.1 and h2c backends), TLS with HTTP/1.1, requests
# for an unknown host (404), and the sidecar over HTTP/1.1. About 15 seconds of load; the two
# builds take about 4 minutes each on 2 cores.
#
# Installs nginx, nghttp2-client (h2load) and openssl from Debian's packages, and rustup's
# llvm-tools (for llvm-profdata), if missing. Loopback only; stops everything it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIR=$(realpath -m "${PGO_DIR:-$ROOT/target/pgo}")
TARGET_ARGS=()
if [ -n "${PGO_TARGET:-}" ]; then TARGET_ARGS=(--target "$PGO_TARGET"); fi
if [ -n "${PGO_FEATURES:-}" ]; then TARGET_ARGS+=(--features "$PGO_FEATURES"); fi
case "${PGO_STEP:-all}" in
  all | instrumented) ;;
  *) echo "pgo: PGO_STEP is '$PGO_STEP'; use 'all' (the default) or 'instrumented'" >&2; exit 2 ;;
esac

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# llvm-profdata of the LLVM that rustc itself uses: the profile's format follows it.
HOST=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools >&2
fi

build() { # target dir, profile flag
  # Called as `$(build ...)`, where bash does not stop at a failed command by itself: without
  # the exit, a failed build would hand on the binary an earlier run left in the same place.
  RUSTFLAGS="${PGO_RUSTFLAGS:-} $2" CARGO_TARGET_DIR="$1" \
    cargo build --profile dist --locked -q --bin rouse "${TARGET_ARGS[@]}" >&2 || exit 1
  echo "$1/${PGO_TARGET:+$PGO_TARGET/}dist/rouse"
}

# What the two builds compile (`config/` for the built-in demo's file): a source changed
# between them would be built with a profile of other code, which the compiler drops function
# by function with a warning, and the result would be neither build.
sources() {
  find src config Cargo.toml Cargo.lock -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum
}
rm -rf "$DIR/data"
echo "pgo: building the instrumented binary" >&2
SOURCES=$(sources)
GEN=$(build "$DIR/gen" "-Cprofile-generate=$DIR/data")
if [ "${PGO_STEP:-all}" = instrumented ]; then echo "$GEN"; exit 0; fi

W=$(mktemp -d /tmp/rouse-pgo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

BE=18380; BE_H2=18381; GW=18394; GW_TLS=18397; SC=18398
mkdir -p "$W/be"
cat > "$W/be/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $W/be/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $W/be/b; proxy_temp_path $W/be/p; fastcgi_temp_path $W/be/f;
  uwsgi_temp_path $W/be/u; scgi_temp_path $W/be/s;
  server { listen 127.0.0.1:$BE; listen 127.0.0.1:$BE_H2 http2;
    location / { return 200 'ok'; }
    # A request body is read whole before the answer (return alone would not read it).
    location /post { proxy_pass http://127.0.0.1:$BE/; } } }
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=pgo \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat > "$W/gw.yaml" <<EOF
listen: "127.0.0.1:$GW"
watch_interval: 0s
tls:
  listen: "127.0.0.1:$GW_TLS"
  certificates: [{ cert: "$W/cert.pem", key: "$W/key.pem" }]
services:
  - name: app
    hosts: ["127.0.0.1", "app.example"]
    routes:
      - { path: /h2, traffic: [{ revision: g, percent: 100 }] }
      - { path: /split, traffic: [{ revision: r, percent: 50 }, { revision: s, percent: 50 }] }
    traffic: [{ revision: r, percent: 100 }]
    revisions:
      - { name: r, endpoints: ["127.0.0.1:$BE"] }
      - { name: s, endpoints: ["127.0.0.1:$BE"], container_concurrency: 4 }
      - { name: g, protocol: h2c, endpoints: ["127.0.0.1:$BE_H2"] }
EOF
"$NGINX" -c "$W/be/nginx.conf" -p "$W/be" >/dev/null 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$GEN" gateway --config "$W/gw.yaml" >/dev/null 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
CONTAINER_CONCURRENCY=10 QUEUE_SERVING_PORT=$SC USER_PORT=$BE REVISION_TIMEOUT_SECONDS=300 \
  SERVING_NAMESPACE=pgo SERVING_CONFIGURATION=pgo SERVING_REVISION=pgo-00001 SERVING_POD=pgo \
  SERVING_POD_IP=127.0.0.1 ROUSE_BIND=127.0.0.1 ROUSE_ADMIN_PORT=18399 \
  ROUSE_STATS_PORT=18400 ROUSE_METRICS_PORT=18401 ROUSE_DRAIN_QUIET_PERIOD=0s RUST_LOG=warn \
  "$GEN" sidecar >/dev/null 2>&1 &
SC_PID=$!
PIDS+=($SC_PID)
for port in $BE $BE_H2 $GW $GW_TLS $SC; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done
head -c 20000 /dev/zero > "$W/body"
# One load; a run whose requests did not all get the status they should fails the build, so
# that a broken training run never shapes the binary.
load() { # expected status class (2xx, 4xx), h2load arguments...
  local want=$1
  shift
  local out
  out=$(timeout 120 h2load "$@" 2>&1 || true)
  local n got
  n=$(awk '/^requests:/ {print $2}' <<<"$out")
  got=$(awk -v w="$want" '/^status codes:/ {for (i = 3; i < NF; i += 2) if (index($(i + 1), w) == 1) print $i}' <<<"$out")
  if [ -z "$n" ] || [ "$got" != "$n" ]; then
    echo "pgo: training load failed: h2load $*" >&2
    echo "$out" | tail -5 >&2
    exit 1
  fi
}
echo "pgo: training" >&2
for port in $GW $SC; do
  load 2xx --h1 -c1 -n20000 "http://127.0.0.1:$port/"
  load 2xx --h1 -c50 -n100000 "http://127.0.0.1:$port/a/b?c=d"
  load 2xx --h1 -c10 -n10000 -d "$W/body" "http://127.0.0.1:$port/post"
done
load 2xx --h1 -c10 -n20000 "http://127.0.0.1:$GW/split"
load 2xx -c10 -m10 -n50000 "http://127.0.0.1:$GW/"
load 2xx -c10 -m10 -n50000 "http://127.0.0.1:$GW/h2"
load 2xx -c10 -m10 -n50000 "https://127.0.0.1:$GW_TLS/"
load 2xx --h1 -c10 -n20000 "https://127.0.0.1:$GW_TLS/"
load 4xx --h1 -c10 -n5000 -H "host: nowhere.example" "http://127.0.0.1:$GW/"
# Stopped as in production, so that each writes its profile on the way out.
kill -TERM "$GW_PID" "$SC_PID"
wait "$GW_PID" "$SC_PID" 2>/dev/null || true
"$PROFDATA" merge -o "$DIR/rouse.profdata" "$DIR/data"

unchanged() {
  if [ "$(sources)" != "$SOURCES" ]; then
    echo "pgo: the sources changed while the profile was made; run again with them left as they are" >&2
    exit 1
  fi
}
unchanged
echo "pgo: building with the profile" >&2
USE=$(build "$DIR/use" "-Cprofile-use=$DIR/rouse.profdata")
unchanged
echo "$USE"
