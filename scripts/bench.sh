#!/usr/bin/env bash
# Side-by-side proxy benchmark: direct to the backend, nginx, HAProxy, the rouse gateway, the
# rouse sidecar and Knative's own queue-proxy (the sidecar's counterpart, built from
# knative.dev/serving by scripts/knative-serving-binaries.sh when Go is there), interleaved and
# repeated in one run, each reported as a ratio to direct from the same round.
#
#   scripts/bench.sh            # quick mode, under 3 minutes
#   scripts/bench.sh full       # full mode, under 15 minutes
#   scripts/bench.sh c1         # HTTP/1.1 c=1 only, 10 rounds of 3 s: how often rouse's
#                               # added latency is below nginx's and HAProxy's (ROUNDS=N)
#   BENCH_MD=out.md BENCH_JSON=out.json scripts/bench.sh full
#   PGO=1 scripts/bench.sh full  # rouse built with scripts/pgo.sh (about 9 minutes more)
#   FORWARDING=0 scripts/bench.sh  # nginx and HAProxy without the forwarding fields rouse adds
#
# Installs wrk, nghttp2-client (h2load), nginx and haproxy from Debian's packages if missing,
# builds rouse with the dist profile (what ships), and stops everything it started on exit. Loopback only.
# Pinning: the load generator runs on CPU 0; proxy and backend share CPU 1, so a ratio to
# direct measures the proxy's cost per request against the backend's.
set -euo pipefail

MODE=${1:-quick}
MODES="c1 c50 h2c tls grpc"
case "$MODE" in
  quick) ROUNDS=2; DUR=2 ;;
  full) ROUNDS=3; DUR=8 ;;
  c1) ROUNDS=${ROUNDS:-10}; DUR=3; MODES=c1 ;;
  *) echo "usage: $0 [quick|full|c1]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# The binary as a container image would ship it: glibc linked in statically (no ld.so, no
# shared libc mapped), relative relocations packed. It measures the same code; only the idle
# memory differs (about 1.5 MB less RSS than the dynamically linked build).
# PGO=1: that build profile-guided (scripts/pgo.sh).
TRIPLE=x86_64-unknown-linux-gnu
STATIC="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
if [ "${PGO:-0}" = 1 ]; then
  ROUSE=$(PGO_TARGET=$TRIPLE PGO_RUSTFLAGS="$STATIC" PGO_DIR="$ROOT/target/pgo-static" \
    "$ROOT/scripts/pgo.sh")
else
  RUSTFLAGS="$STATIC" \
    CARGO_TARGET_DIR="$ROOT/target/static" cargo build --profile dist --locked -q --target $TRIPLE
  ROUSE="$ROOT/target/static/$TRIPLE/dist/rouse"
fi

WORK=$(mktemp -d /tmp/rouse-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  # Waited for, so that bash does not report each as Killed on stderr.
  for p in "${PIDS[@]:-}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Ports: backend h1 / h2c / TLS, then per proxy cleartext, h2c and TLS (rouse serves
# HTTP/1.1 and h2c on one port).
BE=18080; BE_H2=18081; BE_TLS=18082
NG=18090; NG_H2=18091; NG_TLS=18095
HA=18092; HA_H2=18093; HA_TLS=18096
RO=18094; RO_TLS=18097
SC=18098; SC_ADMIN=18099; SC_STATS=18100; SC_METRICS=18101
# Knative's queue-proxy: its serving ports; its admin (8022) and metrics (9090, 9091) ports are
# fixed by Knative.
KQ=18102; KQ_TLS=18103

# A throwaway certificate for the TLS rows (h2load does not verify it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench -addext "subjectAltName=DNS:bench,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/haproxy.pem"
# One gRPC message with an empty payload: the 5-byte frame header alone.
printf '\x00\x00\x00\x00\x00' > "$WORK/grpc.bin"
TLS_NGINX="ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"

nginx_conf() { # name, server block
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/$1/nginx.pid;
error_log stderr crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/$1/body;
  proxy_temp_path $WORK/$1/proxy;
  fastcgi_temp_path $WORK/$1/fastcgi;
  uwsgi_temp_path $WORK/$1/uwsgi;
  scgi_temp_path $WORK/$1/scgi;
  $2
}
EOF
}

# nginx and HAProxy do rouse's job: NG_FWD, NG_GRPC_FWD, HA_FWD (see the file).
. "$ROOT/scripts/forwarding.sh"
nginx_conf backend "server { listen 127.0.0.1:$BE; listen 127.0.0.1:$BE_H2 http2; location / { return 200 'ok'; } }
  server { listen 127.0.0.1:$BE_TLS ssl http2; $TLS_NGINX location / { return 200 'ok'; } }"
nginx_conf proxy "upstream be { server 127.0.0.1:$BE; keepalive 128; }
  upstream be_h2 { server 127.0.0.1:$BE_H2; keepalive 128; }
  server { listen 127.0.0.1:$NG; listen 127.0.0.1:$NG_H2 http2; listen 127.0.0.1:$NG_TLS ssl http2; $TLS_NGINX
    location /grpc. { grpc_pass grpc://be_h2; $NG_GRPC_FWD }
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";
      $NG_FWD } }"
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$HA
  bind 127.0.0.1:$HA_H2 proto h2
  bind 127.0.0.1:$HA_TLS ssl crt $WORK/haproxy.pem alpn h2,http/1.1
$HA_FWD
  use_backend g if { path_beg /grpc. }
  default_backend b
backend b
  server s1 127.0.0.1:$BE
backend g
  server s2 127.0.0.1:$BE_H2 proto h2
EOF
cat > "$WORK/rouse.yaml" <<EOF
listen: "127.0.0.1:$RO"
watch_interval: 0s
tls:
  listen: "127.0.0.1:$RO_TLS"
  certificates: [{ cert: "$WORK/cert.pem", key: "$WORK/key.pem" }]
services:
  - name: bench
    hosts: ["*"]
    routes:
      - { path: /grpc., traffic: [{ revision: g, percent: 100 }] }
    traffic: [{ revision: r, percent: 100 }]
    revisions:
      - { name: r, endpoints: ["127.0.0.1:$BE"] }
      - { name: g, protocol: h2c, endpoints: ["127.0.0.1:$BE_H2"] }
EOF

start() { # name, command...
  local name=$1; shift
  taskset -c 1 "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
}
start backend "$NGINX" -c "$WORK/backend/nginx.conf" -p "$WORK/backend"
start nginx "$NGINX" -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy"
start haproxy "$HAPROXY" -f "$WORK/haproxy.cfg" -db
RUST_LOG=warn start rouse "$ROUSE" gateway --config "$WORK/rouse.yaml"
# The sidecar as Knative runs it (CC 0, as queue-proxy's published figures), in front of the
# same HTTP/1.1 backend.
CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT=$SC USER_PORT=$BE REVISION_TIMEOUT_SECONDS=300 \
  SERVING_NAMESPACE=bench SERVING_CONFIGURATION=bench SERVING_REVISION=bench-00001 \
  SERVING_POD=bench-pod SERVING_POD_IP=127.0.0.1 ROUSE_BIND=127.0.0.1 \
  ROUSE_ADMIN_PORT=$SC_ADMIN ROUSE_STATS_PORT=$SC_STATS ROUSE_METRICS_PORT=$SC_METRICS \
  ROUSE_DRAIN_QUIET_PERIOD=100ms \
  RUST_LOG=warn start sidecar "$ROUSE" sidecar
# Knative's queue-proxy, configured as Knative configures it for a revision with CC 0.
QUEUE=""
if KN_DIR=$("$ROOT/scripts/knative-serving-binaries.sh" 2>/dev/null); then
  QUEUE="$KN_DIR/queue"
  CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT=$KQ QUEUE_SERVING_TLS_PORT=$KQ_TLS USER_PORT=$BE \
    REVISION_TIMEOUT_SECONDS=300 SERVING_NAMESPACE=bench SERVING_CONFIGURATION=bench \
    SERVING_REVISION=bench-00001 SERVING_POD=bench-pod SERVING_POD_IP=127.0.0.1 \
    SERVING_LOGGING_CONFIG='{"level":"error","outputPaths":["stdout"],"errorOutputPaths":["stderr"],"encoding":"json"}' \
    SERVING_LOGGING_LEVEL=error \
    SERVING_READINESS_PROBE="{\"tcpSocket\":{\"port\":$BE,\"host\":\"127.0.0.1\"},\"successThreshold\":1}" \
    start knative_queue "$QUEUE"
else
  echo "Knative's queue-proxy not built (needs Go): its rows are left out" >&2
fi
for port in $BE $BE_H2 $BE_TLS $NG $NG_H2 $NG_TLS $HA $HA_H2 $HA_TLS $RO $RO_TLS $SC ${QUEUE:+$KQ}; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.05
  done
done
RSS_IDLE_ROUSE=$(awk '/VmRSS/ {print $2}' /proc/$PID_rouse/status)
RSS_IDLE_SIDECAR=$(awk '/VmRSS/ {print $2}' /proc/$PID_sidecar/status)
RSS_IDLE_KQ=0
if [ -n "$QUEUE" ]; then RSS_IDLE_KQ=$(awk '/VmRSS/ {print $2}' /proc/$PID_knative_queue/status); fi

# CPU ticks (user + system) of a process and its threads/children that serve traffic.
ticks() { # pids...
  local t=0
  for p in "$@"; do
    for q in $p $(pgrep -P "$p" || true); do
      t=$((t + $(awk '{print $14 + $15}' /proc/$q/stat 2>/dev/null || echo 0)))
    done
  done
  echo $t
}
rss() { # pid (sum with children)
  local r=0
  for q in $1 $(pgrep -P "$1" || true); do
    r=$((r + $(awk '/VmRSS/ {print $2}' /proc/$q/status 2>/dev/null || echo 0)))
  done
  echo $r
}
HZ=$(getconf CLK_TCK)

# The process whose CPU a target costs besides the backend (direct: the backend itself).
proxy_pid() {
  case $1 in
    direct) echo "$PID_backend" ;; nginx) echo "$PID_nginx" ;;
    haproxy) echo "$PID_haproxy" ;; rouse) echo "$PID_rouse" ;; sidecar) echo "$PID_sidecar" ;;
    knative-queue) echo "$PID_knative_queue" ;;
  esac
}
port_of() { # target mode
  case "$1/$2" in
    direct/h2c|direct/grpc) echo $BE_H2 ;; direct/tls) echo $BE_TLS ;; direct/*) echo $BE ;;
    nginx/h2c|nginx/grpc) echo $NG_H2 ;; nginx/tls) echo $NG_TLS ;; nginx/*) echo $NG ;;
    haproxy/h2c|haproxy/grpc) echo $HA_H2 ;; haproxy/tls) echo $HA_TLS ;; haproxy/*) echo $HA ;;
    rouse/tls) echo $RO_TLS ;; rouse/*) echo $RO ;; sidecar/*) echo $SC ;;
    knative-queue/*) echo $KQ ;;
  esac
}

to_us() { # wrk latency like 76.00us / 1.20ms / 2.00s
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

RESULTS="$WORK/results.tsv"
echo -e "round\ttarget\tmode\trps\tp50_us\tp99_us\tcpu_ms_per_1k\trss_kb" > "$RESULTS"

measure() { # round target mode
  local round=$1 target=$2 mode=$3 port pid t0 t1 out rps p50 p99 n
  port=$(port_of "$target" "$mode")
  pid=$(proxy_pid "$target")
  t0=$(ticks "$pid")
  case $mode in
    c1|c50)
      local c=${mode#c}
      out=$(taskset -c 0 wrk -t1 -c"$c" -d"${DUR}s" --latency -H "Host: bench" "http://127.0.0.1:$port/")
      rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
      p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
      p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
      n=$(awk '/requests in/ {print $1}' <<<"$out")
      if grep -q "Non-2xx" <<<"$out"; then
        echo "error: $target $mode answered non-2xx responses; not a valid measurement:" >&2
        echo "$out" >&2
        exit 1
      fi
      ;;
    h2c|tls|grpc)
      # No Host header here: over HTTP/2 it would contradict :authority, and nginx answers 400.
      local url="http://127.0.0.1:$port/" extra=()
      [ "$mode" = tls ] && url="https://127.0.0.1:$port/"
      if [ "$mode" = grpc ]; then
        url="http://127.0.0.1:$port/grpc.Bench/Unary"
        extra=(-d "$WORK/grpc.bin" -H "content-type: application/grpc" -H "te: trailers")
      fi
      out=$(taskset -c 0 h2load -c 10 -m 10 -D "$DUR" "${extra[@]}" "$url" 2>&1)
      rps=$(awk '/^finished in/ {print $4}' <<<"$out")
      n=$(awk '/^requests:/ {print $8}' <<<"$out")
      local failed
      failed=$(awk '/^requests:/ {print $10}' <<<"$out")
      # A stray failure at the end of a run is tolerated (nginx's grpc_pass shows the odd 502);
      # more than 0.1 % makes the measurement meaningless.
      if [ "${failed:-1}" -gt $(( ${n:-0} / 1000 )) ]; then
        echo "error: $target $mode had $failed failed requests; not a valid measurement:" >&2
        echo "$out" >&2
        exit 1
      fi
      # h2load reports min/max/mean of request time, not percentiles: the p50 column holds
      # the mean for h2c, and p99 is left empty.
      p50=$(to_us "$(awk '/^time for request:/ {print $6}' <<<"$out")")
      p99=0
      ;;
  esac
  t1=$(ticks "$pid")
  local cpu
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v n="${n:-0}" 'BEGIN { if (n>0) printf "%.3f", (b-a)/hz*1000/n*1000; else print 0 }')
  echo -e "$round\t$target\t$mode\t${rps:-0}\t${p50:-0}\t${p99:-0}\t$cpu\t$(rss "$pid")" >> "$RESULTS"
  printf '  round %s %-8s %-4s %12s req/s  p50 %8s us  p99 %8s us\n' "$round" "$target" "$mode" "${rps:-?}" "${p50:-?}" "${p99:-?}" >&2
}

echo "rouse benchmark, $MODE mode: $ROUNDS rounds x ${DUR}s, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    # Interleaved: every target once per mode per round, direct first as the round's baseline.
    targets="direct nginx haproxy rouse"
    # The sidecar forwards HTTP/2 clients over h2c to the app's one port, which the
    # HTTP/1.1-only backend does not speak: HTTP/1.1 rows only.
    case $mode in c1|c50) targets="$targets sidecar${QUEUE:+ knative-queue}" ;; esac
    for target in $targets; do
      measure "$round" "$target" "$mode"
    done
  done
done

python3 - "$RESULTS" "$MODE" "$RSS_IDLE_ROUSE" "${BENCH_MD:-}" "${BENCH_JSON:-}" "$RSS_IDLE_SIDECAR" "$RSS_IDLE_KQ" <<'PY'
import csv, json, statistics, sys, os, datetime
path, run_mode, rss_idle, md_out, json_out, rss_idle_sidecar, rss_idle_kq = sys.argv[1:8]
rows = list(csv.DictReader(open(path), delimiter="\t"))
for r in rows:
    for k in ("rps", "p50_us", "p99_us", "cpu_ms_per_1k", "rss_kb"):
        r[k] = float(r[k] or 0)
direct = {(r["round"], r["mode"]): r for r in rows if r["target"] == "direct"}
out = []
for mode in ("c1", "c50", "h2c", "tls", "grpc"):
    for target in ("direct", "nginx", "haproxy", "rouse", "sidecar", "knative-queue"):
        rs = [r for r in rows if r["mode"] == mode and r["target"] == target]
        if not rs:
            continue
        ratio = [r["rps"] / direct[(r["round"], mode)]["rps"] for r in rs if direct[(r["round"], mode)]["rps"]]
        added = [r["p50_us"] - direct[(r["round"], mode)]["p50_us"] for r in rs]
        out.append({
            "mode": mode, "target": target,
            "rps": statistics.median(r["rps"] for r in rs),
            "ratio_to_direct": statistics.median(ratio) if ratio else 0,
            "p50_us": statistics.median(r["p50_us"] for r in rs),
            "added_p50_us": statistics.median(added),
            "p99_us": statistics.median(r["p99_us"] for r in rs),
            "cpu_ms_per_1k": statistics.median(r["cpu_ms_per_1k"] for r in rs),
            "rss_mb": statistics.median(r["rss_kb"] for r in rs) / 1024,
        })
nginx_h2 = next((o["rps"] for o in out if o["mode"] == "h2c" and o["target"] == "nginx"), 0)
rouse_h2 = next((o["rps"] for o in out if o["mode"] == "h2c" and o["target"] == "rouse"), 0)
names = {"c1": "HTTP/1.1 c=1", "c50": "HTTP/1.1 c=50", "h2c": "h2c c=10 m=10",
         "tls": "h2 over TLS c=10 m=10", "grpc": "gRPC unary (h2c) c=10 m=10"}
lines = [
    f"Mode `{run_mode}`, {datetime.date.today()}, load average at start {os.getloadavg()[0]:.2f}; medians over rounds.",
    "",
    "| load | target | req/s | ÷ direct | p50 | +p50 vs direct | p99 | CPU ms / 1000 req | RSS |",
    "|---|---|---|---|---|---|---|---|---|",
]
for o in out:
    h2 = o["mode"] in ("h2c", "tls", "grpc")
    p50 = f"{'mean ' if h2 else ''}{o['p50_us']:.0f} µs"
    p99 = "—" if h2 else f"{o['p99_us']:.0f} µs"
    lines.append(
        f"| {names[o['mode']]} | {o['target']} | {o['rps']:,.0f} | {o['ratio_to_direct']:.2f} | "
        f"{p50} | {o['added_p50_us']:+.0f} µs | {p99} | "
        f"{o['cpu_ms_per_1k']:.0f} | {o['rss_mb']:.1f} MB |"
    )
lines += ["", f"rouse h2c req/s ÷ nginx h2c req/s: {rouse_h2 / nginx_h2:.2f}" if nginx_h2 else "",
          f"rouse RSS idle: gateway {int(rss_idle) / 1024:.1f} MB, sidecar {int(rss_idle_sidecar) / 1024:.1f} MB"
          + (f"; Knative's queue-proxy {int(rss_idle_kq) / 1024:.1f} MB" if int(rss_idle_kq) else "")]
# How often rouse led both nginx and HAProxy, round by round (the targets ask for the medians
# and how often it holds): at c=1 by a lower p50, at c=50 by more requests per second.
def lead(mode, better):
    rounds = sorted({r["round"] for r in rows if r["mode"] == mode})
    by = {(r["round"], r["target"]): r for r in rows if r["mode"] == mode}
    won = [k for k in rounds
           if all((k, t) in by for t in ("rouse", "nginx", "haproxy"))
           and all(better(by[(k, "rouse")], by[(k, t)]) for t in ("nginx", "haproxy"))]
    return len(won), len(rounds)
for mode, label, better in (("c1", "c=1 p50", lambda a, b: a["p50_us"] < b["p50_us"]),
                            ("c50", "c=50 req/s", lambda a, b: a["rps"] > b["rps"])):
    won, n = lead(mode, better)
    if n:
        lines.append(f"rouse ahead of both nginx and HAProxy ({label}): {won} of {n} rounds")
text = "\n".join(lines)
print(text)
if md_out:
    open(md_out, "w").write(text + "\n")
if json_out:
    json.dump({"mode": run_mode, "date": str(datetime.date.today()), "loadavg": os.getloadavg()[0],
               "results": out, "rouse_rss_idle_mb": int(rss_idle) / 1024,
               "sidecar_rss_idle_mb": int(rss_idle_sidecar) / 1024}, open(json_out, "w"), indent=2)
PY
