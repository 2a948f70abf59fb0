//! The real binary: SIGTERM drains without losing a request; memory stays bounded while
//! streaming.

use crate::support::*;
use http::StatusCode;
use std::process::{Command, Stdio};
use std::time::Duration;

async fn free_port() -> std::net::SocketAddr {
    dead_addr().await
}

fn spawn(config: &std::path::Path) -> Proc {
    Proc(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let a = Backend::start("a").await;
    let (listen, admin) = (free_port().await, free_port().await);
    let cfg = write_config(
        "drain",
        &format!(
            "listen: \"{listen}\"\nadmin: \"{admin}\"\ndrain_timeout: 10s\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{}\"] }}\n",
            a.addr
        ),
    );
    let mut p = spawn(&cfg);
    wait_ready(listen).await;
    wait_ready(admin).await;
    let c = h1_client();
    assert_eq!(
        get(&c, admin, "a", "/readyz", &[]).await.status,
        StatusCode::OK
    );
    let mut tasks = Vec::new();
    for i in 0..30 {
        let c = c.clone();
        // Staggered lengths so some finish during the drain and some near its end.
        let path = format!("/?delay={}", 300 + i * 20);
        tasks.push(tokio::spawn(async move {
            get(&c, listen, "x", &path, &[]).await
        }));
    }
    // Let every request reach the backend, then ask rouse to stop.
    for _ in 0..100 {
        if a.requests() == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.requests(), 30);
    signal(p.0.id(), "-TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = get(&h1_client(), admin, "a", "/readyz", &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness fails while draining"
    );
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(
            got.status,
            StatusCode::OK,
            "in-flight request lost: {got:?}"
        );
        assert_eq!(got.body, "a");
    }
    let status = tokio::task::spawn_blocking(move || p.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "clean exit after drain");
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "listener closed"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_100_mib_keeps_proxy_memory_bounded() {
    let a = Backend::start("big").await;
    let listen = free_port().await;
    let cfg = write_config("stream", &single_revision(listen, a.addr));
    let p = spawn(&cfg);
    wait_ready(listen).await;
    let base = peak_rss_kib(p.0.id());
    let size: u64 = 100 << 20;
    assert_eq!(
        count_body(&mut download(listen, size).await.into_body()).await,
        size
    );
    let peak = peak_rss_kib(p.0.id());
    assert!(
        peak < base + 16 * 1024,
        "peak RSS grew from {base} KiB to {peak} KiB while streaming 100 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_and_a_stalled_reader_keep_memory_bounded() {
    let a = Backend::start("big").await;
    let listen = free_port().await;
    let cfg = write_config("gib", &single_revision(listen, a.addr));
    let p = spawn(&cfg);
    wait_ready(listen).await;
    let base = peak_rss_kib(p.0.id());
    // 1 GiB streamed up, counted by the backend.
    assert_eq!(upload(listen, 1024).await, (1u64 << 30).to_string());
    let after_upload = peak_rss_kib(p.0.id());
    assert!(
        after_upload < base + 8 * 1024,
        "peak RSS grew from {base} KiB to {after_upload} KiB for a 1 GiB upload"
    );
    // A reader that stops reading: rouse must stop reading from the backend too (backpressure),
    // not buffer the 256 MiB response.
    let res = download(listen, 256 << 20).await;
    let mut body = res.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = peak_rss_kib(p.0.id());
    assert!(
        stalled < base + 8 * 1024,
        "peak RSS grew from {base} KiB to {stalled} KiB while the client was not reading"
    );
    let n = first.into_data().unwrap().len() as u64 + count_body(&mut body).await;
    assert_eq!(n, 256 << 20, "the stalled response completes once read");
}

#[tokio::test]
async fn pipelined_http11_requests_are_all_answered() {
    let a = Backend::start("p").await;
    let gw = gateway(&single_revision("127.0.0.1:0", a.addr)).await;
    // Three requests in one write, the first one slow: each is forwarded and answered on the
    // one connection (HTTP/1.1 keeps them in order).
    let out = raw(
        gw.addr(),
        b"GET /one?delay=200 HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(a.requests(), 3);
    for path in ["/one", "/two", "/three"] {
        assert!(
            !a.headers_at(path).is_empty(),
            "{path} never reached the backend"
        );
    }
}
