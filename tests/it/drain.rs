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
