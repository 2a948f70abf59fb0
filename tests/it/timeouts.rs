//! Per-request time limits: none unless configured; `response_start` and `idle` answer 504 or
//! cut a stalled body; `exempt_streams` spares a response already streaming from `request`.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;

/// No time limit applies unless configured: the parsed config has none, and a backend that
/// takes seconds before its headers and again before its body is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_not_timed_out_by_default() {
    let a = Backend::start("slow").await;
    let cfg = Cfg::single(Rev::new("r").endpoint(a.addr));
    let t = &cfg.parse().services[0].timeouts;
    assert_eq!(
        (t.request, t.response_start, t.idle, t.exempt_streams),
        (None, None, None, false)
    );
    let gw = cfg.start().await;
    let began = tokio::time::Instant::now();
    let got = get(
        &h1_client(),
        gw.addr(),
        "x",
        "/?delay=3000&body_delay=3000",
        &[],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "slow");
    assert!(
        began.elapsed() >= Duration::from_secs(6),
        "both waits were waited for"
    );
}

#[tokio::test]
async fn configured_timeouts_answer_504() {
    let a = Backend::start("a").await;
    let timeouts = Timeouts::new().response_start("300ms").idle("300ms");
    let gw = Cfg::new()
        .service(Svc::single(Rev::new("r").endpoint(a.addr)).timeouts(timeouts))
        .start()
        .await;
    let c = h1_client();
    let got = get(&c, gw.addr(), "x", "/?delay=2000", &[]).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.header("rouse-error"), "response-start-timeout");
    // Headers in time but a body that stalls past the idle timeout: the stream is cut.
    let res = c
        .request(
            Request::get(format!("http://{}/?size=100&body_delay=2000", gw.addr()))
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    use http_body_util::BodyExt;
    assert!(
        res.into_body().collect().await.is_err(),
        "stalled body must fail, not hang"
    );
    // A request within the limits is unaffected.
    assert_eq!(
        get(&c, gw.addr(), "x", "/?delay=50", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_streams_lets_a_started_body_outlive_the_request_timeout() {
    let a = Backend::start("a").await;
    // Headers at once, the body 500 ms later: past the 300 ms request timeout.
    for (exempt, whole) in [(true, true), (false, false)] {
        let timeouts = Timeouts::new().request("300ms").exempt_streams(exempt);
        let gw = Cfg::new()
            .service(Svc::single(Rev::new("r").endpoint(a.addr)).timeouts(timeouts))
            .start()
            .await;
        let res = h1_client()
            .request(
                http::Request::get(format!("http://{}/?size=100&body_delay=500", gw.addr()))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(res.into_body()).await;
        assert_eq!(body.is_ok(), whole, "exempt_streams: {exempt}");
    }
}

/// The revision's in-flight count, once it has come down to `n` (checked every 20 ms, for up to
/// 10 s).
async fn in_flight_reaches(gw: &Gateway, n: f64) {
    let series = "rouse_revision_in_flight{service=\"s\",revision=\"r\"}";
    for _ in 0..500 {
        if metric(&metrics(gw).await, series) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never came to {n}: {}", metrics(gw).await);
}

/// A gateway whose one revision has one slot, behind `idle` and `request` limits.
async fn one_slot(a: &Backend, idle: &str, request: &str) -> Gateway {
    Cfg::new()
        .admin()
        .service(
            Svc::single(Rev::new("r").cc(1).endpoint(a.addr))
                .timeouts(Timeouts::new().idle(idle).request(request)),
        )
        .start()
        .await
}

/// A client that asks for a large body and never reads it must not keep the endpoint's only
/// slot: `idle` fires while the client is not reading, the upstream exchange is closed (the
/// backend stops writing), the slot goes to the next request, and the stalled client's
/// connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_slot_at_the_idle_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let gw = one_slot(&a, "500ms", "60s").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(gw.addr()).await.unwrap();
    stalled
        .write_all(b"GET /?size=100000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = a.seen.clone();
    wait_until("the stalled request at the backend", || {
        seen.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    // The next request waits for the slot and gets it once the idle limit has passed.
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    in_flight_reaches(&gw, 0.0).await;
    assert_eq!(
        a.seen.in_flight.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the backend is no longer writing the abandoned body"
    );
    // The stalled connection was closed: what it can still read ends well short of 100 MB.
    let mut n = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => n += k,
            Err(_) => panic!("the stalled connection is still open after {n} bytes"),
        }
    }
    assert!(n < 100_000_000, "{n} bytes");
}

/// A client that reads slowly but steadily is still cut at the `request` limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_is_cut_at_the_request_limit() {
    let a = Backend::start("a").await;
    let gw = one_slot(&a, "5s", "1s").await;
    let mut res = download(gw.addr(), 100_000_000).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.body_mut();
    let (mut n, mut failed) = (0u64, false);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        match http_body_util::BodyExt::frame(body).await {
            Some(Ok(f)) => n += f.into_data().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => {
                failed = true;
                break;
            }
            None => break,
        }
        // 16 KiB per 100 ms at most: far slower than the body could go.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed,
        "the stream was not cut ({n} bytes in {:?})",
        started.elapsed()
    );
    assert!(n < 100_000_000, "{n} bytes");
    in_flight_reaches(&gw, 0.0).await;
}

/// The same over HTTP/2, where a client that grants no flow-control window stalls one stream:
/// the slot is freed and the stream reset, and the connection's other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_with_no_window_loses_its_slot_at_the_idle_limit() {
    let a = Backend::start("a").await;
    let gw = one_slot(&a, "500ms", "60s").await;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr()).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let authority = gw.addr().to_string();
    let req = |path: &str| {
        Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let stalled = send.send_request(req("/?size=100000000")).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    in_flight_reaches(&gw, 1.0).await;
    in_flight_reaches(&gw, 0.0).await;
    // Another request, on another connection, gets the slot.
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    drop(stalled);
}

/// `timeouts.request` over HTTP/1.1: a backend slower than it is cut, 504 `request-timeout`.
#[tokio::test]
async fn a_slow_answer_past_the_request_limit_is_a_504_request_timeout() {
    let a = Backend::start("a").await;
    let gw = Cfg::new()
        .service(
            Svc::single(Rev::new("r").endpoint(a.addr)).timeouts(Timeouts::new().request("500ms")),
        )
        .start()
        .await;
    let got = get(&h1_client(), gw.addr(), "x", "/?delay=5000", &[]).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.body);
    assert_eq!(got.header("rouse-error"), "request-timeout");
    assert_eq!(got.version, http::Version::HTTP_11);
}
