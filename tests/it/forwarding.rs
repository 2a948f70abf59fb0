//! Forwarding a request to an endpoint and the answer back: the headers rouse adds and strips,
//! requests it refuses before forwarding, and what a client sees when an endpoint fails (a
//! refused connection, a stale pooled connection, an error status).

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn backend_503_passes_through_and_is_not_retried() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr).endpoint(b.addr))
        .start()
        .await;
    let c = h1_client();
    for i in 1..=20 {
        let got = get(&c, gw.addr(), "x", "/?status=503", &[]).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            got.body == "a" || got.body == "b",
            "backend's own body: {}",
            got.body
        );
        assert_eq!(got.header("rouse-error"), "");
        assert_eq!(
            a.requests() + b.requests(),
            i,
            "one backend request per client request"
        );
    }
}

#[tokio::test]
async fn connect_refused_endpoint_is_skipped() {
    let live = Backend::start("live").await;
    let dead = dead_addr().await;
    let gw = Cfg::single(Rev::new("r").endpoint(dead).endpoint(live.addr))
        .admin()
        .start()
        .await;
    let c = h1_client();
    for _ in 0..40 {
        let got = get(&c, gw.addr(), "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.body, "live");
    }
    assert_eq!(live.requests(), 40);
    let m = metrics(&gw).await;
    let errors = metric(
        &m,
        &format!(
            "rouse_upstream_connect_errors_total{{service=\"s\",revision=\"r\",endpoint=\"{dead}\"}}"
        ),
    );
    // Ejection keeps the dead endpoint out after its first refusal (within the 1 s window).
    assert!((1.0..=3.0).contains(&errors), "connect errors: {errors}");
}

#[tokio::test]
async fn only_dead_endpoints_give_502_naming_the_cause() {
    let dead = dead_addr().await;
    let gw = Cfg::single(Rev::new("r").endpoint(dead)).start().await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("rouse-error"), "connect-failed");
    assert!(got.body.contains(&dead.to_string()), "{}", got.body);
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_stripping() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let got = get(
        &h1_client(),
        gw.addr(),
        "Client.Example:81",
        "/p?q=1",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let h = a.last_headers();
    assert_eq!(
        h.get("host").unwrap(),
        "Client.Example:81",
        "client's Host is kept"
    );
    assert!(
        h.get("x-private").is_none(),
        "headers named in Connection are stripped"
    );
    assert!(h.get("connection").is_none() || h.get("connection").unwrap() != "x-private");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3, 127.0.0.1");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "Client.Example:81");
    assert_eq!(
        h.get("forwarded").unwrap(),
        "for=127.0.0.1;host=\"Client.Example:81\";proto=http"
    );
    assert_eq!(a.seen.last_uri.lock().unwrap().as_deref(), Some("/p?q=1"));
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let bad = raw(gw.addr(), b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let out = raw(gw.addr(), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let nohost = raw(gw.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        nohost.starts_with("HTTP/1.0 400") || nohost.starts_with("HTTP/1.1 400"),
        "{nohost}"
    );
    assert!(nohost.contains("no Host header"), "{nohost}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn stale_pooled_connection_is_retried_before_any_byte_is_sent() {
    let (addr, conns) = closing_backend().await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr))
        .pool_idle_timeout("30s")
        .start()
        .await;
    stale_connections_are_retried(gw.addr(), &conns).await;
}
