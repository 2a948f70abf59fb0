//! Activator figures: how fast a held request moves once an endpoint is ready, what a cold start
//! through the process scaler adds to the backend's own boot, and how much memory 10 000 held
//! requests cost. Run with `cargo bench --bench activator`; prints a markdown table (the
//! figures in docs/benchmarks.md come from it).
//!
//! With `ROUSE_BENCH_BACKEND` set, this program is instead the backend the cold starts boot: an
//! HTTP/1.1 server on `PORT` that answers `ok`, so that its boot is short and steady and the
//! overhead rouse adds is not lost in an interpreter's start-up.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse::config::Config;
use rouse::roles::gateway::Gateway;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A backend that reports the instant each request arrives.
async fn timestamping_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Instant>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let _ = tx.send(Instant::now());
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Holds one request on a cold revision, publishes an endpoint, and times until the backend
/// sees the request. Repeated `n` times.
async fn ready_to_forwarded(n: usize) -> Vec<Duration> {
    let (backend, mut arrivals) = timestamping_backend().await;
    let cfg = Config::parse(&format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{backend}\"] }}\n"
    ))
    .unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    let rev = gw.proxy().table().revisions()[0].clone();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        rev.set_endpoint_addrs(&[]);
        let req = Request::get(format!("http://{}/", gw.addr()))
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let c = client.clone();
        let pending = tokio::spawn(async move { c.request(req).await.unwrap().status() });
        while rev.held() == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let ready = Instant::now();
        rev.set_endpoint_addrs(&[backend]);
        let arrived = arrivals.recv().await.unwrap();
        out.push(arrived - ready);
        assert!(pending.await.unwrap().is_success());
    }
    out
}

/// The backend the cold starts boot (see the module docs). Never returns; SIGTERM ends it.
fn backend_main() {
    let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// One cold start, three ways: the backend's own boot (spawned here, timed until its port
/// accepts a connection), a first request to a fresh gateway whose
/// revision is at zero (spawn, boot, readiness probe, forward, answer), and a second, warm
/// request on the same gateway.
struct ColdStart {
    boot: Duration,
    cold: Duration,
    warm: Duration,
}

impl ColdStart {
    /// What rouse adds to the backend's boot: the cold request, less the boot and less what the
    /// same request costs when warm.
    fn overhead(&self) -> Duration {
        self.cold.saturating_sub(self.boot + self.warm)
    }
}

async fn cold_starts(n: usize) -> Vec<ColdStart> {
    let exe = std::env::current_exe().unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = |addr: SocketAddr| {
        let c = client.clone();
        async move {
            let req = Request::get(format!("http://{addr}/"))
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = c.request(req).await.unwrap();
            assert!(res.status().is_success(), "{}", res.status());
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
        }
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let port = free_addr().port();
        let t0 = Instant::now();
        let mut child = Command::new(&exe)
            .env("ROUSE_BENCH_BACKEND", "1")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Tried back to back (a refused loopback connect takes tens of µs), not on tokio's
        // 1 ms timer, so the boot is measured finer than rouse's probe could see it.
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::task::yield_now().await;
        }
        let boot = t0.elapsed();
        let _ = child.kill();
        let _ = child.wait();

        let cfg = Config::parse(&format!(
            r#"listen: 127.0.0.1:0
services:
  - name: s
    hosts: ["*"]
    traffic: [{{ revision: r, percent: 100 }}]
    revisions:
      - name: r
        scale:
          max: 1
          process:
            command: ["{}"]
            env: {{ ROUSE_BENCH_BACKEND: "1" }}
            stop_grace: 1s
"#,
            exe.display()
        ))
        .unwrap();
        let gw = Gateway::start(cfg).await.unwrap();
        let t0 = Instant::now();
        get(gw.addr()).await;
        let cold = t0.elapsed();
        let t0 = Instant::now();
        get(gw.addr()).await;
        let warm = t0.elapsed();
        gw.shutdown().await;
        out.push(ColdStart { boot, cold, warm });
    }
    out
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn held_gauge(admin: SocketAddr) -> u64 {
    let Ok(mut s) = TcpStream::connect(admin).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let mut body = String::new();
    use tokio::io::AsyncReadExt;
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .find(|l| l.starts_with("rouse_revision_held_requests{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// How the held requests arrive.
#[derive(Clone, Copy)]
enum Clients {
    /// One HTTP/1.1 connection per request, as from that many separate clients.
    Http1,
    /// `conns` h2c connections carrying the requests as concurrent streams, as from an
    /// ingress proxy in front of the activator.
    H2c { conns: usize },
}

/// Starts the release binary with a revision whose backend never becomes ready, sends it `n`
/// requests the way `clients` says, and reads rouse's RSS once all are held.
async fn rss_with_held(n: usize, clients: Clients) -> (u64, u64, u64) {
    let (listen, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("rouse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("held.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen: "{listen}"
admin: "{admin}"
services:
  - name: s
    hosts: ["*"]
    traffic: [{{ revision: r, percent: 100 }}]
    revisions:
      - name: r
        queue: {{ max_requests: 20000, max_wait: 300s }}
        scale:
          max: 1
          process:
            command: ["sleep", "600"]
            boot_timeout: 300s
            stop_grace: 1s
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args(["gateway", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    while TcpStream::connect(listen).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pid, "VmRSS:");
    let mut conns = Vec::new();
    let mut streams = Vec::new();
    match clients {
        Clients::Http1 => {
            for _ in 0..n {
                let mut s = TcpStream::connect(listen).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                conns.push(s);
            }
        }
        Clients::H2c { conns: c } => {
            for _ in 0..c {
                let tcp = TcpStream::connect(listen).await.unwrap();
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .unwrap();
                streams.push(tokio::spawn(conn));
                for _ in 0..n / c {
                    let mut send = send.clone();
                    streams.push(tokio::spawn(async move {
                        let req = Request::get("http://x/")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let _ = send.send_request(req).await;
                        Ok(())
                    }));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_gauge(admin).await < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held_gauge(admin).await;
    let rss = rss_kib(pid, "VmRSS:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    drop(conns);
    for t in streams {
        t.abort();
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(held, n as u64, "not every request was held");
    (idle, rss, held)
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    if std::env::var_os("ROUSE_BENCH_BACKEND").is_some() {
        return backend_main();
    }
    // `cargo bench` passes harness flags such as --bench; nothing here takes options.
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut lat = ready_to_forwarded(500).await;
        lat.sort();
        let starts = cold_starts(50).await;
        let sorted = |f: &dyn Fn(&ColdStart) -> Duration| {
            let mut v: Vec<Duration> = starts.iter().map(f).collect();
            v.sort();
            v
        };
        let (boot, cold, overhead) = (
            sorted(&|c| c.boot),
            sorted(&|c| c.cold),
            sorted(&|c| c.overhead()),
        );
        let warm = sorted(&|c| c.warm);
        let (idle, rss, held) = rss_with_held(10_000, Clients::Http1).await;
        let (idle2, rss2, held2) = rss_with_held(10_000, Clients::H2c { conns: 100 }).await;
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| endpoint ready → held request at backend, p50 (500 cold starts) | {:.0} µs |",
            percentile(&lat, 0.5).as_secs_f64() * 1e6
        );
        println!(
            "| endpoint ready → held request at backend, p99 | {:.0} µs |",
            percentile(&lat, 0.99).as_secs_f64() * 1e6
        );
        println!(
            "| endpoint ready → held request at backend, max | {:.0} µs |",
            lat.last().unwrap().as_secs_f64() * 1e6
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| backend's own boot, spawn to accepting, p50 / p99 (50 cold starts) | {:.2} / {:.2} ms |",
            ms(percentile(&boot, 0.5)),
            ms(percentile(&boot, 0.99))
        );
        println!(
            "| first request to a revision at zero, sent to answered, p50 / p99 | {:.2} / {:.2} ms |",
            ms(percentile(&cold, 0.5)),
            ms(percentile(&cold, 0.99))
        );
        println!(
            "| the same request warm, p50 | {:.2} ms |",
            ms(percentile(&warm, 0.5))
        );
        println!(
            "| cold-start overhead over the backend's boot (cold − boot − warm), p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
            ms(percentile(&overhead, 0.5)),
            ms(percentile(&overhead, 0.99)),
            ms(*overhead.last().unwrap())
        );
        println!(
            "| RSS idle (release binary) | {:.1} MB |",
            idle as f64 / 1024.0
        );
        println!(
            "| RSS with {held} held requests, one HTTP/1.1 connection each | {:.1} MB ({:.1} KB per held request) |",
            rss as f64 / 1024.0,
            (rss - idle) as f64 / held as f64
        );
        println!(
            "| RSS with {held2} held requests, 100 h2c connections × 100 streams | {:.1} MB ({:.1} KB per held request) |",
            rss2 as f64 / 1024.0,
            (rss2 - idle2) as f64 / held2 as f64
        );
    });
}
