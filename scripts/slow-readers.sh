#!/usr/bin/env bash
# Memory of slow readers: N HTTP/1.1 clients (500 by default) each ask for a 10 MB body through
# the gateway and never read it (4 KiB receive buffers). Prints rouse's RSS idle, with all of
# them connected, and 10 s after they have left.
#
#   scripts/slow-readers.sh          # 500 clients
#   CLIENTS=100 scripts/slow-readers.sh
#
# Loopback only; stops everything it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${CLIENTS:-500}
cargo build --profile dist --locked -q
ROUSE="$ROOT/target/dist/rouse"
WORK=$(mktemp -d /tmp/rouse-slow.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
BE=18401; GW=18402
cat > "$WORK/backend.py" <<'PY'
import http.server, sys
CHUNK = b"x" * 65536
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        size = 10_000_000
        self.send_response(200)
        self.send_header("content-length", str(size))
        self.end_headers()
        try:
            left = size
            while left > 0:
                n = min(left, len(CHUNK))
                self.wfile.write(CHUNK[:n])
                left -= n
        except Exception:
            pass
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
srv.daemon_threads = True
srv.serve_forever()
PY
cat > "$WORK/clients.py" <<'PY'
import socket, sys, time
n, port, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
time.sleep(hold)
for s in socks:
    s.close()
PY
cat > "$WORK/gw.yaml" <<YAML
listen: "127.0.0.1:$GW"
watch_interval: 0s
services:
  - name: s
    hosts: ["*"]
    traffic: [{ revision: r, percent: 100 }]
    revisions: [{ name: r, endpoints: ["127.0.0.1:$BE"] }]
YAML
python3 "$WORK/backend.py" $BE & PIDS+=($!)
sleep 0.5
"$ROUSE" gateway --config "$WORK/gw.yaml" >"$WORK/gw.log" 2>&1 & RP=$!; PIDS+=($RP)
sleep 0.5
rss() { awk '/^VmRSS/ {print $2}' /proc/$RP/status; }
echo "rouse RSS idle:                    $(rss) kB"
python3 "$WORK/clients.py" "$N" $GW 8 & CP=$!; PIDS+=($CP)
sleep 6
echo "with $N slow readers connected:    $(rss) kB"
wait $CP || true
sleep 10
echo "10 s after they left:              $(rss) kB"
