//! Graceful shutdown of the real binary: on SIGTERM readiness fails at once, every in-flight
//! request is finished, and the process exits 0 with its listeners closed.

use crate::support::*;
use http::StatusCode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let a = Backend::start("a").await;
    let (listen, admin) = (dead_addr().await, dead_addr().await);
    let cfg = Cfg::single(Rev::new("r").endpoint(a.addr))
        .listen(listen)
        .admin_at(admin)
        .drain_timeout("10s");
    let mut p = run_binary(&cfg.write("drain"));
    wait_ready(listen).await;
    wait_ready(admin).await;
    let c = h1_client();
    assert_eq!(
        get(&c, admin, "a", "/readyz", &[]).await.status,
        StatusCode::OK
    );
    let mut tasks = Vec::new();
    // One long request keeps the drain going while the checks below run, on a loaded
    // machine too.
    {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            get(&c, listen, "x", "/?delay=4000", &[]).await
        }));
    }
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
        if a.requests() == 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.requests(), 31);
    signal(p.0.id(), "-TERM");
    // Readiness fails, and the listener closes, while the requests are still running.
    for _ in 0..200 {
        if get(&h1_client(), admin, "a", "/readyz", &[]).await.status
            == StatusCode::SERVICE_UNAVAILABLE
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = get(&h1_client(), admin, "a", "/readyz", &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness fails while draining"
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "listener closed"
    );
    assert!(
        tasks.iter().any(|t| !t.is_finished()) && p.0.try_wait().unwrap().is_none(),
        "the listener closed while requests were still running"
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
    // Once the last request is done the process exits, well before `drain_timeout` (10 s).
    let mut status = None;
    for _ in 0..300 {
        status = p.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = status.expect("still running 3 s after its last request ended");
    assert_eq!(status.code(), Some(0), "clean exit after drain");
}

/// In process: the drain gives up on a request longer than `drain_timeout` when that ends,
/// and reports it left behind (the binary then exits, which cuts it); a shorter one finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_up_to_drain_timeout_and_no_longer() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .drain_timeout("800ms")
        .start()
        .await;
    let c = h1_client();
    let short = spawn_get(&c, gw.addr(), "/?delay=300");
    let long = spawn_get(&c, gw.addr(), "/?delay=30000");
    wait_until("both requests at the backend", || a.requests() == 2).await;
    let report = gw.shutdown().await;
    assert_eq!(short.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        report.requests_left, 1,
        "the long one is left behind: {report:?}"
    );
    assert!(!long.is_finished(), "the long request was not answered");
}

/// In process: an HTTP/2 client gets GOAWAY on drain, its open stream finishes, and a
/// WebSocket session is waited for until it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_http2_gracefully_and_waits_for_websockets() {
    let a = Backend::start("a").await;
    let ws = crate::websocket::ws_backend("ws").await;
    let gw = Cfg::new()
        .service(Svc::new("s").host("x").only(Rev::new("r").endpoint(a.addr)))
        .service(
            Svc::new("chat")
                .host("chat.local")
                .only(Rev::new("w").endpoint(ws)),
        )
        .drain_timeout("10s")
        .start()
        .await;
    let mut h2 = h2_conn(gw.addr()).await;
    let stream = {
        let req = http::Request::get("http://x/?delay=600")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let f = h2.send_request(req);
        tokio::spawn(f)
    };
    let mut chat = crate::websocket::ws_connect(gw.addr(), "chat.local").await;
    wait_until("the stream at the backend", || a.requests() == 1).await;
    let draining = tokio::spawn(gw.shutdown());
    // The open stream is answered; then the connection takes no new stream.
    assert_eq!(stream.await.unwrap().unwrap().status(), StatusCode::OK);
    let refused = h2
        .send_request(
            http::Request::get("http://x/late")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(refused.is_err(), "a new stream after GOAWAY: {refused:?}");
    // The WebSocket still works while the drain waits for it...
    assert_eq!(
        crate::websocket::ws_echo(&mut chat, "still here").await,
        "ws:still here"
    );
    let mut draining = draining;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut draining)
            .await
            .is_err(),
        "the drain did not wait for the WebSocket"
    );
    // ...and the drain ends once it closes.
    chat.close(None).await.unwrap();
    drop(chat);
    let report = draining.await.unwrap();
    assert_eq!(report.requests_left, 0, "{report:?}");
    assert_eq!(a.requests(), 1);
}
