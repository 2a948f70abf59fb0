# A backend process for activator tests. Configured by environment:
#   PORT            port to listen on (set by rouse)
#   HOST            address to listen on (default 127.0.0.1; the local Kubernetes node gives each pod its own)
#   REVISION        name echoed in responses
#   BOOT_DELAY_MS   sleep before listening (a slow boot)
#   FAIL_BOOT       print a message to stderr and exit with this status instead of serving
#   FAIL_ONCE_FILE  fail the first boot only: fail (status 4) unless this file exists, creating it
#   WORKER_PID_FILE fork a worker that ignores SIGTERM and sleeps, and write its pid here
#   IGNORE_SIGTERM  the server itself ignores SIGTERM (a backend that hangs on shutdown)
#   PID_FILE        write the process id here first thing
#   STEAL_PORT_FILE on the first boot only (this file does not exist yet): before listening,
#                   start another program, in a session of its own, that listens on PORT and
#                   answers "intruder"; write its pid here; then try to listen (and fail)
# Requests: ?delay=MS sleeps before answering; /exit answers then exits with status 1;
# ?echo=NAME,... returns each named request header as x-echo-NAME. A request with
# K-Network-Probe: probe is answered 200 at once with its K-Network-Hash echoed, as Knative's
# backends answer the ingress's readiness probe.
# Every response carries x-pid, x-in-flight and x-max-in-flight (high-water mark).
import http.server, os, signal, sys, threading, time, urllib.parse

rev = os.environ.get("REVISION", "rev")
if os.environ.get("PID_FILE"):
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(str(os.getpid()))
if os.environ.get("FAIL_BOOT"):
    print("starting " + rev, flush=True)
    print("fatal: database unreachable", file=sys.stderr, flush=True)
    sys.exit(int(os.environ["FAIL_BOOT"]))
once = os.environ.get("FAIL_ONCE_FILE")
if once and not os.path.exists(once):
    open(once, "w").close()
    print("first boot fails", file=sys.stderr, flush=True)
    sys.exit(4)
steal = os.environ.get("STEAL_PORT_FILE")
if steal and not os.path.exists(steal):
    if os.fork() == 0:
        # Not this backend's: its own session and process group, as any other program.
        os.setsid()
        class Intruder(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "8")
                self.end_headers()
                self.wfile.write(b"intruder")
            def log_message(self, *args):
                pass
        srv = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Intruder)
        with open(steal + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(steal + ".tmp", steal)
        srv.serve_forever()
    while not os.path.exists(steal):
        time.sleep(0.01)
    # Long enough for a readiness probe to reach the intruder first.
    time.sleep(0.3)
time.sleep(int(os.environ.get("BOOT_DELAY_MS", "0")) / 1000)
if os.environ.get("WORKER_PID_FILE"):
    worker = os.fork()
    if worker == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    with open(os.environ["WORKER_PID_FILE"], "w") as f:
        f.write(str(worker))
if os.environ.get("IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

lock = threading.Lock()
state = {"now": 0, "max": 0}

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response, sent at once (no Nagle delay behind a small header write).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        self.handle_any()

    def handle_any(self):
        if self.headers.get("k-network-probe") == "probe":
            self.send_response(200)
            self.send_header("k-network-hash", self.headers.get("k-network-hash", ""))
            self.send_header("content-length", "0")
            self.end_headers()
            return
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            now, high = state["now"], state["max"]
        try:
            q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            time.sleep(int(q.get("delay", ["0"])[0]) / 1000)
            body = f"{rev} {os.getpid()}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.send_header("x-pid", str(os.getpid()))
            self.send_header("x-in-flight", str(now))
            self.send_header("x-max-in-flight", str(high))
            for name in filter(None, q.get("echo", [""])[0].split(",")):
                self.send_header("x-echo-" + name, self.headers.get(name, ""))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        finally:
            with lock:
                state["now"] -= 1
        if self.path.startswith("/exit"):
            os._exit(1)

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), H)
srv.daemon_threads = True
srv.serve_forever()
