//! Overload: one endpoint that serves 100 requests a second (`container_concurrency: 1`, 10 ms
//! each) offered ten times that, open loop, for a minute (`OVERLOAD_SECONDS`), through the
//! release binary. Once with shedding (`queue.target_wait: 1s`, the default) and once without
//! (`0s`: a first-in first-out queue bounded by `max_requests: 1000` and `max_wait: 10s`).
//! Prints, per mode, the requests served and refused, how long each waited for its answer, and
//! rouse's RSS before and after. Run with `cargo bench --bench overload`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A backend that takes 10 ms per request.
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one mode's run saw.
struct Outcome {
    served: Vec<Duration>,
    refused: Vec<Duration>,
    other: usize,
    rss_before: u64,
    rss_after: u64,
}

async fn run(backend: SocketAddr, target_wait: &str, seconds: u64) -> Outcome {
    let (listen, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("rouse-overload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("overload.yaml");
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
        container_concurrency: 1
        endpoints: ["{backend}"]
        queue: {{ max_requests: 1000, max_wait: 10s, target_wait: {target_wait} }}
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_before = rss_kib(child.id());
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2000)
        .build_http();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Open loop: one request a millisecond, whatever happened to the ones before.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tick.tick().await;
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let req = Request::get(format!("http://{listen}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let status = match client.request(req).await {
                Ok(res) => {
                    let status = res.status();
                    let _ = res.into_body().collect().await;
                    Some(status)
                }
                Err(_) => None,
            };
            let _ = tx.send((status, sent.elapsed()));
        });
    }
    drop(tx);
    let (mut served, mut refused, mut other) = (Vec::new(), Vec::new(), 0);
    while let Some((status, took)) = rx.recv().await {
        match status {
            Some(StatusCode::OK) => served.push(took),
            Some(StatusCode::SERVICE_UNAVAILABLE) => refused.push(took),
            _ => other += 1,
        }
    }
    let rss_after = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    served.sort();
    refused.sort();
    Outcome {
        served,
        refused,
        other,
        rss_before,
        rss_after,
    }
}

fn main() {
    let seconds: u64 = std::env::var("OVERLOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let be = backend().await;
        println!(
            "10x overload for {seconds} s: 1000 requests/s offered to an endpoint that serves 100/s"
        );
        println!();
        println!(
            "| mode | served | served: p50 / p99 | refused 503 | refused: p50 / p99 | refused after more than 100 ms | other | rouse RSS before → after |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (mode, target) in [("shedding (target_wait 1s)", "1s"), ("FIFO only (target_wait 0s)", "0s")] {
            let o = run(be, target, seconds).await;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let late = o.refused.iter().filter(|d| **d > Duration::from_millis(100)).count();
            println!(
                "| {mode} | {} | {:.0} / {:.0} ms | {} | {:.1} / {:.1} ms | {late} | {} | {} → {} kB |",
                o.served.len(),
                ms(percentile(&o.served, 0.5)),
                ms(percentile(&o.served, 0.99)),
                o.refused.len(),
                ms(percentile(&o.refused, 0.5)),
                ms(percentile(&o.refused, 0.99)),
                o.other,
                o.rss_before,
                o.rss_after,
            );
        }
    });
}
