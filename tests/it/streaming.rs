//! Streaming: large request and response bodies pass through as they arrive, never held
//! whole, so the proxy's memory stays bounded; a client that stops reading stops the backend
//! too (backpressure).

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways() {
    let a = Backend::start("big").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let size: u64 = 100 << 20;
    // Download: counted as it arrives, never collected.
    let res = download(gw.addr(), size).await;
    assert_eq!(res.headers()["content-length"], size.to_string().as_str());
    assert_eq!(count_body(&mut res.into_body()).await, size);
    // Upload: a streamed body of 100 MiB, counted by the backend.
    assert_eq!(upload(gw.addr(), 100).await, size.to_string());
}

/// The peak resident set size of process `pid` so far, in KiB.
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
    let listen = dead_addr().await;
    let cfg = Cfg::single(Rev::new("r").endpoint(a.addr)).listen(listen);
    let p = run_binary(&cfg.write("stream"));
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
    let listen = dead_addr().await;
    let cfg = Cfg::single(Rev::new("r").endpoint(a.addr)).listen(listen);
    let p = run_binary(&cfg.write("gib"));
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
