//! Per-request time limits: none unless configured; `response_start` and `idle` answer 504 or
//! cut a stalled body; `exempt_streams` spares a response already streaming from `request`.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_not_timed_out_by_default() {
    let a = Backend::start("slow").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let started = tokio::time::Instant::now();
    let got = get(
        &h1_client(),
        gw.addr(),
        "x",
        "/?delay=10000&body_delay=10000",
        &[],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "slow");
    assert!(started.elapsed() >= Duration::from_secs(20));
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
