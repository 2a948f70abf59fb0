#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable for the same
# binary and inputs whatever else the machine is doing, so a change to the request path can be
# measured to a fraction of a percent where wall-clock benchmarks here vary by tens of percent.
#
#   scripts/instructions.sh                          # all but gateway-accesslog, HTTP/1.1, 10 conns
#   TARGETS="nginx haproxy" scripts/instructions.sh  # no Rust build
#   PGO=1 scripts/instructions.sh                    # rouse built with scripts/pgo.sh
#   KEEP_PROFILES=DIR scripts/instructions.sh        # also keep callgrind's files (cg.TARGET.N)
#   CONNS=1 scripts/instructions.sh                  # one connection instead of 10
#   ROUSE_BIN=path scripts/instructions.sh           # that rouse binary, no build (an A/B)
#   FORWARDING=0 scripts/instructions.sh             # nginx and HAProxy add no forwarding fields
#
# Target `gateway-accesslog` is the gateway writing a JSON access log line per request to a
# file (the writer task included): what the access log costs. Run it with
# TARGETS=gateway-accesslog.
#
# Target `gateway-1cpu` is the gateway on one CPU (`taskset -c 1`), where rouse runs one
# single-threaded runtime for everything, as in `scripts/bench.sh` and in a pod limited to one
# CPU. Target `gateway-stealing` is the gateway on tokio's work-stealing runtime
# (`--work-stealing`) instead of its worker threads. Run them with TARGETS=gateway-1cpu and
# TARGETS=gateway-stealing.
#
# Targets `gateway-h2c` and `gateway-grpc` are the gateway serving HTTP/2 clients (h2c with
# prior knowledge, 10 streams at a time on each connection): `gateway-h2c` to the same HTTP/1.1
# backend, `gateway-grpc` unary gRPC calls (a 5-byte message, `te: trailers`) to an h2c backend
# (the backend nginx's HTTP/2 port), as in the gRPC row of `scripts/bench.sh`. Run them with
# TARGETS="gateway-h2c gateway-grpc".
#
# Target `gateway-1000hosts` is the gateway with 1,000 services shaped as the Knative ingress
# makes them (two routes each: Knative's probe route and the path), the requests going to the
# 500th: the cost of a large route table on the request path.
#
# Targets `nginx` and `haproxy` put the same requests through nginx as a reverse proxy and
# through HAProxy, to the same backend and with keep-alive to it, as rouse's targets: counts to
# set beside rouse's for the same work. nginx runs with `master_process off` and HAProxy with
# `-db` (and one thread), so that each is one process that callgrind follows whole, as it does
# rouse.
#
# Each target serves N1 and then N2 requests in two runs; (I(N2) - I(N1)) / (N2 - N1) cancels
# start-up and shutdown. Kernel time is not counted (callgrind sees user space only). Installs
# nginx, nghttp2-client (h2load), valgrind and (for its target) haproxy from Debian's packages if
# missing. Loopback only; stops everything it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N1=${N1:-1000}
N2=${N2:-6000}
# Connections the load uses; CONNS=1 counts what a lone client's requests cost, each of which
# finds the runtime asleep (the c=1 latency rows of scripts/bench.sh).
CONNS=${CONNS:-10}
TARGETS=${TARGETS:-gateway gateway-1000hosts sidecar nginx haproxy}
rouse=false nginx=false haproxy=false
for t in $TARGETS; do
  case $t in
    gateway*|sidecar) rouse=true ;;
    nginx) nginx=true ;;
    haproxy) haproxy=true ;;
  esac
done

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v valgrind >/dev/null || need+=(valgrind)
if $haproxy; then command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy); fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
# Only rouse's targets need rouse: nginx and haproxy alone are measured without a Rust build.
# PGO=1: the profile-guided build (scripts/pgo.sh, about 9 minutes more) instead of the plain one.
ROUSE=${ROUSE_BIN:-$ROOT/target/dist/rouse}
if $rouse && [ -z "${ROUSE_BIN:-}" ]; then
  if [ "${PGO:-0}" = 1 ]; then
    ROUSE=$("$ROOT/scripts/pgo.sh")
  else
    cargo build --profile dist --locked -q
  fi
fi

WORK=$(mktemp -d /tmp/rouse-instr.XXXXXX)
PIDS=()
cleanup() {
  # Waited for, so that bash does not report each as Killed on stderr.
  for p in "${PIDS[@]:-}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

BE=18180; BE_H2=18181; NX=18186; HP=18188; GW=18194; SC=18198
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
# One process, so that stopping it by its PID stops it all.
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f;
  uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;
  server { listen 127.0.0.1:$BE; listen 127.0.0.1:$BE_H2 http2; location / { return 200 'ok'; } } }
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 &
PIDS+=($!)

# nginx as the proxy: a prefix, pid and temp paths of its own so that it and the backend share no
# files (logs/ is where nginx opens its built-in error log before it reads error_log). The
# upstream keeps connections to the backend (keepalive, HTTP/1.1, no Connection: close), as
# rouse and HAProxy do, and keepalive_requests on both sides keeps nginx from closing a
# connection every 1,000 requests (its default, client side and, since 1.15.3, upstream).
mkdir -p "$WORK/nx/logs"
# nginx and HAProxy do rouse's job: NG_FWD and HA_FWD (see the file); plain HTTP only here.
HA_PROTO=http
. "$ROOT/scripts/forwarding.sh"
cat > "$WORK/nginx-proxy.conf" <<EOF
worker_processes 1;
# One process, so that callgrind counts all of it and SIGINT (fast shutdown) ends it.
master_process off;
daemon off;
pid $WORK/nx/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/nx/b; proxy_temp_path $WORK/nx/p; fastcgi_temp_path $WORK/nx/f;
  uwsgi_temp_path $WORK/nx/u; scgi_temp_path $WORK/nx/s;
  upstream backend { server 127.0.0.1:$BE; keepalive 32; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NX;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
      proxy_set_header Connection ""; $NG_FWD } } }
EOF
if $nginx; then
  "$NGINX" -t -q -c "$WORK/nginx-proxy.conf" -p "$WORK/nx"
fi

# HAProxy: one thread, no log (no `log` line), keep-alive on both sides and server connections
# shared between client connections (http-reuse always), as in a connection pool.
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HP
$HA_FWD
  default_backend be
backend be
  server s1 127.0.0.1:$BE
EOF
if $haproxy; then
  "$HAPROXY" -c -q -f "$WORK/haproxy.cfg"
fi
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

{ cat "$WORK/gw.yaml"; echo "access_log: { to: $WORK/access.log, format: json }"; } > "$WORK/gw-log.yaml"

cat > "$WORK/gw-grpc.yaml" <<EOF
listen: "127.0.0.1:$GW"
watch_interval: 0s
services:
  - name: bench
    hosts: ["*"]
    traffic: [{ revision: g, percent: 100 }]
    revisions:
      - { name: g, protocol: h2c, endpoints: ["127.0.0.1:$BE_H2"] }
EOF
# A gRPC message: uncompressed, empty.
printf '\x00\x00\x00\x00\x00' > "$WORK/grpc.bin"

{
  echo "listen: \"127.0.0.1:$GW\""
  echo "watch_interval: 0s"
  echo "services:"
  for i in $(seq 0 999); do
    host="h$i.example"
    [ "$i" = 500 ] && host="127.0.0.1"
    cat <<SVC
  - name: s$i
    hosts: ["$host"]
    routes:
      - { path: /, headers: { k-network-hash: override }, set_headers: { k-network-hash: h$i }, traffic: [{ revision: r, percent: 100 }] }
      - { path: /, traffic: [{ revision: r, percent: 100 }] }
    revisions:
      - { name: r, endpoints: ["127.0.0.1:$BE"] }
SVC
  done
} > "$WORK/gw1000.yaml"

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

count() { # target n -> instructions
  local target=$1 n=$2 out="$WORK/cg.$1.$2" port stop=INT path=/
  # The load: HTTP/1.1 keep-alive unless the target says otherwise.
  local load=(--h1)
  case $target in
    gateway)
      port=$GW
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw.yaml" >/dev/null 2>&1 &
      ;;
    gateway-1cpu)
      port=$GW
      RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw.yaml" >/dev/null 2>&1 &
      ;;
    gateway-stealing)
      port=$GW
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" --work-stealing gateway --config "$WORK/gw.yaml" >/dev/null 2>&1 &
      ;;
    gateway-h2c)
      port=$GW
      load=(-m 10)
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw.yaml" >/dev/null 2>&1 &
      ;;
    gateway-grpc)
      port=$GW
      path=/grpc.Bench/Unary
      load=(-m 10 -d "$WORK/grpc.bin" -H "content-type: application/grpc" -H "te: trailers")
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw-grpc.yaml" >/dev/null 2>&1 &
      ;;
    gateway-accesslog)
      port=$GW
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw-log.yaml" >/dev/null 2>&1 &
      ;;
    gateway-1000hosts)
      port=$GW
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$ROUSE" gateway --config "$WORK/gw1000.yaml" >/dev/null 2>&1 &
      ;;
    sidecar)
      port=$SC
      CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT=$SC USER_PORT=$BE REVISION_TIMEOUT_SECONDS=300 \
        SERVING_NAMESPACE=b SERVING_CONFIGURATION=b SERVING_REVISION=b SERVING_POD=b \
        SERVING_POD_IP=127.0.0.1 ROUSE_BIND=127.0.0.1 ROUSE_ADMIN_PORT=18199 \
        ROUSE_STATS_PORT=18200 ROUSE_METRICS_PORT=18201 ROUSE_DRAIN_QUIET_PERIOD=0s RUST_LOG=warn \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$ROUSE" sidecar >/dev/null 2>&1 &
      ;;
    nginx)
      port=$NX
      valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$NGINX" -c "$WORK/nginx-proxy.conf" -p "$WORK/nx" >/dev/null 2>&1 &
      ;;
    haproxy)
      port=$HP
      # SIGINT is a soft stop to HAProxy, and with its idle connections to the backend still
      # open it had not ended ten minutes later; SIGTERM, a hard stop, ends it at once, and
      # callgrind still writes its file.
      stop=TERM
      valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$HAPROXY" -db -f "$WORK/haproxy.cfg" >/dev/null 2>&1 &
      ;;
    *)
      echo "unknown target $target" >&2
      exit 1
      ;;
  esac
  local vg=$!
  # count runs in a command substitution, a subshell with neither the PIDS nor the trap of the
  # script: stop this process here if anything below fails.
  trap "kill -9 $vg 2>/dev/null || true" EXIT
  wait_port "$port"
  local done_n
  done_n=$(h2load "${load[@]}" -n "$n" -c "$CONNS" "http://127.0.0.1:$port$path" 2>&1 |
    awk '/^requests:/ {print $8}')
  if [ "$done_n" != "$n" ]; then
    echo "error: $target served $done_n of $n requests" >&2
    exit 1
  fi
  kill -"$stop" "$vg"
  wait "$vg" || true
  trap - EXIT
  if [ -n "${KEEP_PROFILES:-}" ]; then mkdir -p "$KEEP_PROFILES" && cp "$out" "$KEEP_PROFILES/"; fi
  awk '/^summary:/ {print $2}' "$out"
}

wait_port $BE
printf '%-18s %14s %14s %22s\n' target "I($N1)" "I($N2)" "instructions/request"
for t in $TARGETS; do
  a=$(count $t "$N1")
  b=$(count $t "$N2")
  printf '%-18s %14s %14s %22s\n' "$t" "$a" "$b" $(( (b - a) / (N2 - N1) ))
done
