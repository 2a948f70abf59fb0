//! Concurrency limits: `container_concurrency` caps the requests each endpoint has at once;
//! the rest wait for a slot in a queue whose bounds answer 503 with `Retry-After`.

use crate::support::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_is_never_exceeded_under_64_clients() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Cfg::single(Rev::new("r").cc(4).endpoint(a.addr).endpoint(b.addr))
        .admin()
        .start()
        .await;
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, addr) = (c.clone(), gw.addr());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..4 {
                let got = get(&c, addr, "x", "/?delay=20", &[]).await;
                // Held because the endpoints were busy, not because the revision was cold.
                assert_eq!(got.header("rouse-cold-start"), "");
                if got.status == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 256, "every request succeeds by waiting for a slot");
    assert_eq!(a.requests() + b.requests(), 256);
    assert!(
        a.max_in_flight() <= 4 && b.max_in_flight() <= 4,
        "high-water marks {} and {} exceed container_concurrency 4",
        a.max_in_flight(),
        b.max_in_flight()
    );
    assert_eq!(a.max_in_flight(), 4, "the limit is used fully");
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "rouse_queue_wait_seconds_count{service=\"s\",revision=\"r\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(&m, "rouse_revision_in_flight{service=\"s\",revision=\"r\"}"),
        0.0
    );
    // With no more than cc × endpoints clients at once, pooled connections are reused rather
    // than opened per request.
    let conns = a.seen.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns <= 4,
        "pool opened {conns} connections to one cc=4 endpoint"
    );
}

#[tokio::test]
async fn queue_bounds_answer_503_with_retry_after() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(
        Rev::new("r")
            .cc(1)
            .endpoint(a.addr)
            .queue(Queue::new().max_requests(1).max_wait("400ms")),
    )
    .admin()
    .start()
    .await;
    let c = h1_client();
    let addr = gw.addr();
    let busy = spawn_get(&c, addr, "/?delay=1500");
    wait_for_gauge(
        &gw,
        "rouse_revision_in_flight{service=\"s\",revision=\"r\"}",
        1.0,
    )
    .await;
    let held = spawn_get(&c, addr, "/");
    wait_for_gauge(
        &gw,
        "rouse_revision_held_requests{service=\"s\",revision=\"r\"}",
        1.0,
    )
    .await;
    // Queue holds one: the next is refused at once.
    let full = get(&c, addr, "x", "/", &[]).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.header("retry-after"), "1");
    assert_eq!(full.header("rouse-error"), "queue-full");
    // The held one gives up after max_wait.
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(held.header("rouse-error"), "queue-timeout");
    assert_eq!(held.header("retry-after"), "1");
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        a.requests(),
        1,
        "refused requests never reached the backend"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_rejected_requests_total{service=\"s\",revision=\"r\",reason=\"queue_full\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "rouse_rejected_requests_total{service=\"s\",revision=\"r\",reason=\"queue_timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "rouse_revision_held_requests{service=\"s\",revision=\"r\"}"
        ),
        0.0
    );
}

/// Under sustained overload a revision that cannot add endpoints does not hold what it cannot
/// serve soon: a burst of three seconds' work for a queue with a 300 ms `target_wait` is served
/// in part, and the rest is answered 503 `overloaded` (with `Retry-After`) well before
/// `max_wait`, instead of waiting up to 30 s for the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_overload_is_answered_early_instead_of_held_to_max_wait() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(
        Rev::new("r")
            .cc(1)
            .endpoint(a.addr)
            .queue(Queue::new().max_wait("30s").target_wait("300ms")),
    )
    .admin()
    .start()
    .await;
    let c = h1_client();
    let addr = gw.addr();
    let burst: Vec<_> = (0..30)
        .map(|_| spawn_get(&c, addr, "/?delay=100"))
        .collect();
    let (mut served, mut shed) = (0, 0);
    for b in burst {
        let got = b.await.unwrap();
        match got.status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(got.header("rouse-error"), "overloaded", "{}", got.body);
                let retry: u64 = got.header("retry-after").parse().unwrap();
                assert!(retry >= 1, "retry-after {retry}");
                shed += 1;
            }
            other => panic!("{other}: {}", got.body),
        }
    }
    assert!(served >= 3 && shed >= 10, "{served} served, {shed} shed");
    // Drained: the next request is served.
    assert_eq!(get(&c, addr, "x", "/", &[]).await.status, StatusCode::OK);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_rejected_requests_total{service=\"s\",revision=\"r\",reason=\"overloaded\"}"
        ),
        f64::from(shed)
    );
}

/// `queue.max_requests: 0` never holds: a request that finds no free slot is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_zero_refuses_what_finds_no_free_slot() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(
        Rev::new("r")
            .cc(1)
            .endpoint(a.addr)
            .queue(Queue::new().max_requests(0)),
    )
    .admin()
    .start()
    .await;
    let c = h1_client();
    let addr = gw.addr();
    let busy = spawn_get(&c, addr, "/?delay=500");
    wait_for_gauge(
        &gw,
        "rouse_revision_in_flight{service=\"s\",revision=\"r\"}",
        1.0,
    )
    .await;
    let refused = get(&c, addr, "x", "/", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("rouse-error"), "queue-full");
    assert_eq!(
        refused.header("rouse-cold-start"),
        "",
        "an error is not a cold start"
    );
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    // With the slot free again, a request is served.
    assert_eq!(get(&c, addr, "x", "/", &[]).await.status, StatusCode::OK);
    assert_eq!(a.requests(), 2);
}
