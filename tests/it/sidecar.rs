//! The sidecar as Knative's queue-proxy stand-in: probe replies, the breaker, stats on the
//! protobuf port, header rewrites, timeouts, drain, and the environment it is configured by.

use crate::support::*;
use crate::websocket::{ws_backend, ws_connect, ws_echo};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Settings as Knative would give them, for an app on `user`, every port ephemeral.
fn args(user: SocketAddr, cc: u32) -> SidecarArgs {
    let s = |v: &str| Some(v.to_owned());
    SidecarArgs {
        container_concurrency: Some(cc.to_string()),
        serving_port: s("0"),
        user_port: Some(user.port().to_string()),
        revision_timeout_seconds: s("30"),
        namespace: s("ns"),
        configuration: s("hello"),
        revision: s("hello-00001"),
        pod: s("hello-00001-pod"),
        pod_ip: s("127.0.0.1"),
        bind: s("127.0.0.1"),
        admin_port: s("0"),
        stats_port: s("0"),
        metrics_port: s("0"),
        drain_quiet_period: s("300ms"),
        ..SidecarArgs::default()
    }
}

async fn start(a: SidecarArgs) -> Sidecar {
    Sidecar::start(a.settings().expect("test settings are valid"))
        .await
        .expect("sidecar starts")
}

const QUEUE_PROBE: [(&str, &str); 2] = [
    ("k-network-probe", "queue"),
    ("user-agent", "kube-probe/1.30"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_replies_match_queue_proxy_and_never_reach_the_app() {
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    let (c, a) = (h1_client(), sc.addr());

    let ok = get(&c, a, "x", "/", &QUEUE_PROBE).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "queue"));
    // Any path, and an activator's probe (no kubelet agent) alike.
    let ok = get(&c, a, "x", "/some/path", &[("k-network-probe", "queue")]).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "queue"));

    let bad = get(&c, a, "x", "/", &[("k-network-probe", "activator")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body, "unexpected probe header value: \"activator\"\n");
    let kubelet = get(&c, a, "x", "/", &[("user-agent", "kube-probe/1.30")]).await;
    assert_eq!(kubelet.status, StatusCode::BAD_REQUEST, "{}", kubelet.body);

    let hash = get(
        &c,
        a,
        "x",
        "/healthz",
        &[("k-network-probe", "probe"), ("k-network-hash", "h-123")],
    )
    .await;
    assert_eq!(hash.status, StatusCode::OK);
    assert_eq!(hash.header("k-network-hash"), "h-123");
    assert_eq!(hash.body, "");

    assert_eq!(app.requests(), 0, "no probe reached the app");
    let text = get(&c, sc.metrics_addr(), "m", "/metrics", &[]).await.body;
    assert_eq!(
        metric(
            &text,
            "rouse_requests_total{service=\"hello\",revision=\"hello-00001\",code=\"2xx\"}"
        ),
        0.0,
        "probes are not requests"
    );

    // Traffic still goes through, and is counted.
    let got = get(&c, a, "x", "/", &[]).await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "app"));
    assert_eq!(app.requests(), 1);

    sc.drainer().begin();
    for h in [
        &QUEUE_PROBE[..],
        &[("user-agent", "kube-probe/1.30")],
        &[("user-agent", "Knative-Activator-Probe")],
        &[("k-network-probe", "probe")],
    ] {
        let got = get(&c, a, "x", "/", h).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{h:?}");
        assert_eq!(got.body, "shutting down\n", "{h:?}");
    }
    let got = get(&c, a, "x", "/", &[]).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "requests are served while draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggressive_probe_waits_for_the_app_and_concurrent_probes_share_one_run() {
    let at = dead_addr().await;
    let mut a = args(at, 0);
    a.readiness_probe = Some(format!(
        r#"{{"httpGet":{{"path":"/ready?delay=30","port":{},"httpHeaders":[{{"name":"x-probe","value":"1"}}]}},"periodSeconds":0,"successThreshold":1}}"#,
        at.port()
    ));
    let sc = start(a).await;
    let c = h1_client();
    let probes: Vec<_> = (0..20)
        .map(|_| {
            let (c, addr) = (c.clone(), sc.addr());
            tokio::spawn(async move { get(&c, addr, "x", "/", &QUEUE_PROBE).await })
        })
        .collect();
    // The app comes up once every probe is waiting.
    let prober = sc.prober();
    wait_until("20 probes waiting", || prober.calls() == 20).await;
    let app = Backend::start_on("app", at).await;
    for p in probes {
        let got = p.await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "queue"));
    }
    assert_eq!(sc.prober().runs(), 1, "20 concurrent probes, one run");
    assert_eq!(app.requests(), 1, "the app saw one probe request");
    let h = app.headers_at("/ready");
    assert!(h["user-agent"].to_str().unwrap().starts_with("kube-probe/"));
    assert_eq!(h["x-probe"], "1");
    // A later probe is a new run: no answer is cached.
    let got = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!((sc.prober().runs(), app.requests()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probe_answers_503() {
    let app = Backend::start("app").await;
    let mut a = args(app.addr, 0);
    a.readiness_probe = Some(format!(
        r#"{{"tcpSocket":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":1}}"#,
        app.addr.port()
    ));
    let sc = start(a).await;
    let c = h1_client();
    let got = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!(got.status, StatusCode::OK);
    let port = app.addr;
    drop(app);
    // The listener is gone once the backend's task has been dropped.
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(port).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.body);
    assert!(got.body.contains("readiness probe failed"), "{}", got.body);
}

/// Fires `n` concurrent GETs of `path` and returns (status, body, Retry-After) of each.
async fn burst(addr: SocketAddr, path: &str, n: usize) -> Vec<(StatusCode, String, String)> {
    let c = h1_client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, path) = (c.clone(), path.to_owned());
            tokio::spawn(async move {
                let g = get(&c, addr, "x", &path, &[]).await;
                (g.status, g.body.clone(), g.header("retry-after").to_owned())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_holds_the_limit_and_overflows_with_503_under_100_clients() {
    let app = Backend::start("app").await;
    // CC 2: two at the app, 10 × 2 waiting, the rest refused at once.
    let sc = start(args(app.addr, 2)).await;
    let results = burst(sc.addr(), "/?delay=300", 100).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let full: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok + full.len(), 100, "only 200 or 503: {results:?}");
    assert!(ok >= 22, "2 running + 20 queued all served, got {ok}");
    assert!(full.len() >= 50, "overflow refused, got {}", full.len());
    for (_, body, retry) in &full {
        assert_eq!(body, "pending request queue full\n");
        assert_eq!(retry, "1");
    }
    assert_eq!(app.max_in_flight(), 2, "the app never saw more than CC");
    assert_eq!(app.requests(), ok, "nothing refused reached the app");

    // CC 0: no limit and no queue.
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    let results = burst(sc.addr(), "/?delay=300", 100).await;
    assert!(results.iter().all(|r| r.0 == StatusCode::OK), "{results:?}");
    assert!(app.max_in_flight() > 2, "{}", app.max_in_flight());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bound_can_be_a_depth_or_a_wait_time() {
    let app = Backend::start("app").await;
    let mut a = args(app.addr, 1);
    a.queue_depth = Some("0".into());
    let sc = start(a).await;
    let results = burst(sc.addr(), "/?delay=300", 5).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == StatusCode::OK).count(),
        1,
        "{results:?}"
    );

    let mut a = args(app.addr, 1);
    a.queue_max_wait = Some("100ms".into());
    let sc = start(a).await;
    let results = burst(sc.addr(), "/?delay=400", 3).await;
    let waited_out: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(waited_out.len(), 2, "{results:?}");
    assert!(
        waited_out
            .iter()
            .all(|r| r.1 == "context deadline exceeded\n")
    );
}

async fn stat(addr: SocketAddr, accept: &str) -> Stat {
    let res = h1_client()
        .request(
            Request::get(format!("http://{addr}/metrics"))
                .header("accept", accept)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/protobuf");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Stat::decode(body).expect("a protobuf Stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_port_serves_protobuf_with_proxied_requests_apart() {
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    // Before the first period ends: an empty Stat naming the pod.
    let first = stat(sc.stats_addr(), "application/protobuf").await;
    assert_eq!(first.pod_name, "hello-00001-pod");
    assert_eq!(first.request_count, 0.0);

    let c = h1_client();
    let a = sc.addr();
    let mut calls = Vec::new();
    for i in 0..5 {
        let c = c.clone();
        let proxied = i < 2;
        calls.push(tokio::spawn(async move {
            let h: &[(&str, &str)] = if proxied {
                &[("k-proxy-request", "activator")]
            } else {
                &[]
            };
            get(&c, a, "x", "/?delay=100", h).await.status
        }));
    }
    for _ in 0..3 {
        get(&c, a, "x", "/", &QUEUE_PROBE).await;
    }
    for t in calls {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Every period is seen (polled faster than it turns over); the sums over periods are the
    // totals: 5 arrivals, 2 of them proxied, about 5 × 0.1 request-seconds.
    let mut seen: Vec<Stat> = Vec::new();
    let sum_of = |seen: &[Stat], f: fn(&Stat) -> f64| seen.iter().map(f).sum::<f64>();
    // Until the arrivals are all counted, and one period more (the area may lag a period).
    let mut after = 0;
    for _ in 0..200 {
        let s = stat(sc.stats_addr(), "text/plain").await;
        if seen
            .last()
            .is_none_or(|l| l.process_uptime != s.process_uptime)
        {
            seen.push(s);
            if sum_of(&seen, |s| s.request_count) >= 5.0 {
                after += 1;
            }
        }
        if after == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sum = |f: fn(&Stat) -> f64| sum_of(&seen, f);
    assert_eq!(sum(|s| s.request_count), 5.0, "{seen:?}");
    assert_eq!(sum(|s| s.proxied_request_count), 2.0, "{seen:?}");
    let area = sum(|s| s.average_concurrent_requests);
    assert!(
        (0.5..0.8).contains(&area),
        "request-seconds {area}: {seen:?}"
    );
    let proxied_area = sum(|s| s.average_proxied_concurrent_requests);
    assert!(
        (0.2..0.35).contains(&proxied_area),
        "proxied request-seconds {proxied_area}: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.pod_name == "hello-00001-pod"));

    // The Prometheus gauges are the latest Stat, under queue-proxy's names and labels: read
    // both within one reporting period and compare value for value.
    let labels = "{namespace_name=\"ns\",configuration_name=\"hello\",revision_name=\"hello-00001\",pod_name=\"hello-00001-pod\"}";
    // With a request in flight through a whole period, so that the values are not 0.
    let slow = {
        let c = c.clone();
        let a = sc.addr();
        tokio::spawn(async move { get(&c, a, "x", "/?delay=3000", &[]).await })
    };
    let mut busy = false;
    for _ in 0..100 {
        let s = stat(sc.stats_addr(), "text/plain").await;
        if s.average_concurrent_requests > 0.9 {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(busy, "no period with the request in flight");
    let mut compared = false;
    for _ in 0..5 {
        let before = stat(sc.stats_addr(), "text/plain").await;
        let text = get(&c, sc.metrics_addr(), "m", "/metrics", &[]).await.body;
        let after = stat(sc.stats_addr(), "text/plain").await;
        if before != after {
            continue; // a period ended in between
        }
        let gauge = |name: &str| metric(&text, &format!("{name}{labels}"));
        assert_eq!(gauge("kn_serving_queue_depth"), 1.0, "the one in flight");
        assert!(before.average_concurrent_requests > 0.9, "{before:?}");
        assert_eq!(gauge("queue_requests_per_second"), before.request_count);
        assert_eq!(
            gauge("queue_proxied_operations_per_second"),
            before.proxied_request_count
        );
        assert_eq!(
            gauge("queue_average_concurrent_requests"),
            before.average_concurrent_requests
        );
        assert_eq!(
            gauge("queue_average_proxied_concurrent_requests"),
            before.average_proxied_concurrent_requests
        );
        assert_eq!(gauge("process_uptime"), before.process_uptime);
        compared = true;
        break;
    }
    assert!(compared, "the stats changed under every read");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let got = get(&c, sc.stats_addr(), "s", "/other", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activator_rewrites_are_undone_and_forwarded_is_synthesized() {
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    let c = h1_client();
    let got = get(
        &c,
        sc.addr(),
        "hello.ns.svc.cluster.local",
        "/h1",
        &[
            ("k-original-host", "hello.example.com"),
            ("knative-serving-revision", "hello-00001"),
            ("knative-serving-namespace", "ns"),
            ("k-network-hash", "abc123"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let h = app.headers_at("/h1");
    assert_eq!(h["host"], "hello.example.com");
    for gone in [
        "k-original-host",
        "knative-serving-revision",
        "knative-serving-namespace",
        "k-network-hash",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the app");
    }
    assert_eq!(h["forwarded"], "for=192.0.2.1;proto=https");
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(
        *app.seen.last_version.lock().unwrap(),
        Some(Version::HTTP_11)
    );

    // An h2c client reaches the app over h2c; HTTP/1.1 clients over HTTP/1.1.
    let mut h2 = h2_conn(sc.addr()).await;
    let res = h2
        .send_request(
            Request::get(format!("http://{}/h2", sc.addr()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(collect(res).await.status, StatusCode::OK);
    assert_eq!(
        *app.seen.last_version.lock().unwrap(),
        Some(Version::HTTP_2)
    );
}

/// A 1000-byte response whose headers come at once and whose body comes `body_delay_ms` later.
async fn stream(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    body_delay_ms: u64,
) -> http::Response<hyper::body::Incoming> {
    c.request(
        Request::get(format!(
            "http://{addr}/?size=1000&body_delay={body_delay_ms}"
        ))
        .body(Full::new(Bytes::new()))
        .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_504_but_spare_streams_already_started() {
    let app = Backend::start("app").await;
    let with = |total: &str, start: Option<&str>, idle: Option<&str>| {
        let mut a = args(app.addr, 0);
        a.revision_timeout_seconds = Some(total.into());
        a.response_start_timeout_seconds = start.map(Into::into);
        a.idle_timeout_seconds = idle.map(Into::into);
        a
    };
    let (total, start_by, idle) = tokio::join!(
        start(with("1", None, None)),
        start(with("10", Some("1"), None)),
        start(with("10", None, Some("1"))),
    );
    let c = h1_client();
    let (slow_total, slow_start, silent_start, late_stream, stalled) = tokio::join!(
        get(&c, total.addr(), "x", "/?delay=1500", &[]),
        get(&c, start_by.addr(), "x", "/?delay=1500", &[]),
        // Nothing written for the 1 s idle limit, counted from arrival.
        get(&c, idle.addr(), "x", "/?delay=1500", &[]),
        // Headers at once, the body 1.5 s later: past the 1 s total, yet delivered whole.
        async {
            let res = stream(&c, total.addr(), 1500).await;
            let status = res.status();
            (
                status,
                res.into_body().collect().await.map(|b| b.to_bytes().len()),
            )
        },
        // A body that stalls for 2.5 s with a 1 s idle limit is cut.
        async {
            let res = stream(&c, idle.addr(), 2500).await;
            res.into_body().collect().await.is_err()
        },
    );
    for g in [&slow_total, &slow_start, &silent_start] {
        assert_eq!(g.status, StatusCode::GATEWAY_TIMEOUT, "{}", g.body);
        assert_eq!(g.body, "request timeout");
    }
    assert_eq!(late_stream.0, StatusCode::OK);
    assert_eq!(late_stream.1.unwrap(), 1000);
    assert!(
        stalled,
        "the idle timeout still applies to a started stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_outlives_the_total_timeout_and_counts_until_closed() {
    let ws_app = ws_backend("app").await;
    let mut a = args(ws_app, 0);
    a.revision_timeout_seconds = Some("1".into());
    let sc = start(a).await;
    let mut ws = ws_connect(sc.addr(), "x").await;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            ws_echo(&mut ws, &format!("m{i}")).await,
            format!("app:m{i}")
        );
    }
    assert_eq!(sc.revision().stats().active(), 1);
    drop(ws);
    for _ in 0..100 {
        if sc.revision().stats().active() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the closed websocket still counts as active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_app_connection_is_retried_before_any_byte_is_sent() {
    let (addr, conns) = closing_backend().await;
    let sc = start(args(addr, 0)).await;
    stale_connections_are_retried(sc.addr(), &conns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_loses_nothing_and_waits_for_websockets() {
    let app = Backend::start("app").await;
    let ws_app = ws_backend("ws").await;
    // The first sidecar drains under plain load; the second, in front of a websocket app,
    // shows an open websocket holding its drain.
    let sc = start(args(app.addr, 4)).await;
    let ws_sc = start(args(ws_app, 0)).await;
    let addr = sc.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            tokio::spawn(async move {
                let c = h1_client();
                while !stop.load(Ordering::SeqCst) {
                    let g = get(&c, addr, "x", "/?delay=5", &[]).await;
                    if g.status == StatusCode::OK {
                        served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drainer = sc.drainer().clone();
    let draining = tokio::spawn(sc.shutdown());
    wait_until("draining", || drainer.phase() == Phase::Draining).await;
    let before = served.load(Ordering::SeqCst);
    let probe = get(&h1_client(), addr, "x", "/", &QUEUE_PROBE).await;
    assert_eq!(probe.status, StatusCode::SERVICE_UNAVAILABLE);
    // Traffic keeps the drain going well past the 300 ms quiet period.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(drainer.phase(), Phase::Draining);
    // A long request is still running when the load stops.
    let long =
        tokio::spawn(async move { get(&h1_client(), addr, "x", "/long?delay=800", &[]).await });
    let seen = app.seen.clone();
    wait_until("the long request at the app", || {
        seen.headers_by_path.lock().unwrap().contains_key("/long")
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert!(
        served.load(Ordering::SeqCst) > before,
        "requests were served while draining"
    );
    let out = draining.await.unwrap();
    // The drain ended after the app had answered the long request, not before.
    assert_eq!(
        app.seen.in_flight.load(Ordering::SeqCst),
        0,
        "the drain ended with the long request still at the app"
    );
    assert_eq!(long.await.unwrap().status, StatusCode::OK);
    assert_eq!(out.active_left, 0);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "nothing lost");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // An open websocket holds a drain until it closes.
    let mut ws = ws_connect(ws_sc.addr(), "x").await;
    let ws_drainer = ws_sc.drainer().clone();
    let draining = tokio::spawn(ws_sc.shutdown());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ws_echo(&mut ws, "still").await, "ws:still");
    assert_eq!(ws_drainer.phase(), Phase::Draining);
    drop(ws);
    let out = tokio::time::timeout(Duration::from_secs(2), draining)
        .await
        .expect("drain ends once the websocket closes")
        .unwrap();
    assert_eq!(out.active_left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_drain_blocks_until_drained_or_calls_off_without_sigterm() {
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    let c = h1_client();
    let admin = sc.admin_addr();
    // No termination follows: after a second the drain is called off and probes pass again.
    let began = Instant::now();
    let hook = tokio::spawn({
        let c = c.clone();
        async move { get(&c, admin, "a", "/wait-for-drain", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    let got = hook.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.contains("called off"), "{}", got.body);
    assert!(began.elapsed() >= Duration::from_millis(900));
    let after = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!(after.status, StatusCode::OK);

    let nope = get(&c, admin, "a", "/other", &[]).await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND);

    // With a termination, the hook returns once the drain is done.
    let hook = tokio::spawn({
        let c = c.clone();
        async move { get(&c, admin, "a", "/wait-for-drain", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    let out = sc.shutdown().await;
    let got = hook.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "drained\n");
    assert_eq!(out.active_left, 0);
    assert!(began.elapsed() >= Duration::from_millis(250));
}

fn sidecar_cmd(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("sidecar")
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

#[test]
fn missing_and_bad_variables_are_each_named_and_nothing_starts() {
    let out = sidecar_cmd(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for var in [
        "CONTAINER_CONCURRENCY",
        "QUEUE_SERVING_PORT",
        "USER_PORT",
        "REVISION_TIMEOUT_SECONDS",
        "SERVING_NAMESPACE",
        "SERVING_CONFIGURATION",
        "SERVING_REVISION",
        "SERVING_POD",
        "SERVING_POD_IP",
    ] {
        assert!(
            err.contains(&format!("{var} is not set")),
            "{var} not named:\n{err}"
        );
    }
    let bad = [
        ("CONTAINER_CONCURRENCY", "-1"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("USER_PORT", "0"),
        ("REVISION_TIMEOUT_SECONDS", "5m"),
        ("SERVING_NAMESPACE", "ns"),
        ("SERVING_CONFIGURATION", "c"),
        ("SERVING_REVISION", "r"),
        ("SERVING_POD", "p"),
        ("SERVING_POD_IP", "10.0.0.1"),
        ("SERVING_READINESS_PROBE", "{\"httpGet\":"),
    ];
    let out = sidecar_cmd(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for says in [
        "CONTAINER_CONCURRENCY (--container-concurrency) = \"-1\": expected a whole number",
        "USER_PORT (--user-port) = \"0\": the app's port cannot be 0",
        "REVISION_TIMEOUT_SECONDS (--revision-timeout-seconds) = \"5m\": expected whole seconds",
    ] {
        assert!(err.contains(says), "{says:?} missing:\n{err}");
    }
    assert!(!err.contains("listening"), "{err}");
    // Flags win over the environment: the bad values given again as good flags are not
    // reported, and only the one still missing is (the same variables, without the pod and
    // the probe).
    let without: Vec<(&str, &str)> = bad
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "SERVING_POD" | "SERVING_READINESS_PROBE"))
        .collect();
    let out = sidecar_cmd(&without)
        .args([
            "--container-concurrency",
            "2",
            "--user-port",
            "8080",
            "--revision-timeout-seconds",
            "300",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SERVING_POD is not set"), "{err}");
    for gone in [
        "CONTAINER_CONCURRENCY",
        "USER_PORT",
        "REVISION_TIMEOUT_SECONDS",
    ] {
        assert!(
            !err.contains(gone),
            "{gone} reported though its flag is good:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_beside_a_real_app_process_drains_on_sigterm() {
    let app_addr = dead_addr().await;
    let _app = Proc(
        Command::new("python3")
            .arg(BACKEND_PY)
            .env("PORT", app_addr.port().to_string())
            .env("REVISION", "hello")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the test app"),
    );
    let ports: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(dead_addr().await.port().to_string());
        }
        v
    };
    let app_port = app_addr.port().to_string();
    let mut sidecar = Proc(
        sidecar_cmd(&[
            ("CONTAINER_CONCURRENCY", "2"),
            ("QUEUE_SERVING_PORT", &ports[0]),
            ("USER_PORT", &app_port),
            ("REVISION_TIMEOUT_SECONDS", "10"),
            ("SERVING_NAMESPACE", "ns"),
            ("SERVING_CONFIGURATION", "hello"),
            ("SERVING_REVISION", "hello-00001"),
            ("SERVING_POD", "hello-pod"),
            ("SERVING_POD_IP", "127.0.0.1"),
            ("ROUSE_BIND", "127.0.0.1"),
            ("ROUSE_ADMIN_PORT", &ports[1]),
            ("ROUSE_STATS_PORT", &ports[2]),
            ("ROUSE_METRICS_PORT", &ports[3]),
            ("ROUSE_DRAIN_QUIET_PERIOD", "500ms"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let c = h1_client();
    wait_ready(addr).await;
    // The aggressive default probe (TCP to the app) answers once the app process listens.
    let ready = get(&c, addr, "x", "/", &QUEUE_PROBE).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "queue")
    );
    let got = get(&c, addr, "x", "/?delay=50", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.starts_with("hello "), "{}", got.body);

    // A request in flight when SIGTERM comes is answered before the process exits.
    let in_flight = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, addr, "x", "/?delay=1200", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(sidecar.0.id(), "-TERM");
    let mut probe = get(&c, addr, "x", "/", &QUEUE_PROBE).await;
    for _ in 0..100 {
        if probe.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        probe = get(&c, addr, "x", "/", &QUEUE_PROBE).await;
    }
    assert_eq!(probe.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe.body, "shutting down\n");
    for _ in 0..5 {
        let got = get(&c, addr, "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "served while draining");
    }
    let exited = Instant::now();
    let long = in_flight.await.unwrap();
    assert_eq!(
        long.status,
        StatusCode::OK,
        "in flight at SIGTERM: {}",
        long.body
    );
    let status = loop {
        if let Some(s) = sidecar.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(5),
            "the sidecar did not exit after its quiet period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        exited.elapsed() >= Duration::from_millis(400),
        "exited before the quiet period: {:?}",
        exited.elapsed()
    );
}

/// A gRPC health server: service "ok" is SERVING, "down" is NOT_SERVING, any other is
/// answered with status NOT_FOUND, as grpc-health servers do.
async fn grpc_health_app() -> SocketAddr {
    use http_body_util::channel::Channel;
    serve_each(|s| async move {
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
            let mut body = req.into_body().collect().await.unwrap().to_bytes();
            let msg = HealthCheckRequest::decode(body.split_off(5)).unwrap();
            let (mut tx, out) = Channel::<Bytes, std::convert::Infallible>::new(2);
            tokio::spawn(async move {
                let status = match msg.service.as_str() {
                    "ok" => Some(SERVING),
                    "down" => Some(2),
                    _ => None,
                };
                if let Some(status) = status {
                    let _ = tx
                        .send_data(grpc_frame(&HealthCheckResponse { status }))
                        .await;
                }
                let mut t = http::HeaderMap::new();
                let code = if status.is_some() { "0" } else { "5" };
                t.insert("grpc-status", code.parse().unwrap());
                let _ = tx.send_trailers(t).await;
            });
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(out)
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_probe_needs_serving() {
    let app = grpc_health_app().await;
    let c = h1_client();
    for (service, want) in [
        ("ok", StatusCode::OK),
        ("down", StatusCode::SERVICE_UNAVAILABLE),
        ("unknown", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let mut a = args(app, 0);
        a.readiness_probe = Some(format!(
            r#"{{"grpc":{{"port":{},"service":"{service}"}},"periodSeconds":1}}"#,
            app.port()
        ));
        let sc = start(a).await;
        let got = get(&c, sc.addr(), "x", "/", &QUEUE_PROBE).await;
        assert_eq!(got.status, want, "service {service}: {}", got.body);
    }
}

/// The drop-in checks HTTP/1.1 framing as the gateway does: Content-Length beside
/// Transfer-Encoding is refused before the app sees anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_before_the_app_sees_it() {
    let app = Backend::start("app").await;
    let sc = start(args(app.addr, 0)).await;
    let out = raw(
        sc.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("send one of them"), "{out}");
    assert_eq!(app.requests(), 0);
    // A well-framed request on a new connection is served.
    let got = get(&h1_client(), sc.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(app.requests(), 1);
}

/// `SERVING_SERVICE` names the `service` label of rouse's own metrics; without it the
/// configuration does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_label_is_serving_service_else_the_configuration() {
    let app = Backend::start("app").await;
    for (service, label) in [(Some("shop"), "shop"), (None, "hello")] {
        let mut a = args(app.addr, 0);
        a.service = service.map(str::to_owned);
        let sc = start(a).await;
        assert_eq!(
            get(&h1_client(), sc.addr(), "x", "/", &[]).await.status,
            StatusCode::OK
        );
        let text = get(&h1_client(), sc.metrics_addr(), "m", "/metrics", &[])
            .await
            .body;
        let series =
            format!("rouse_revision_in_flight{{service=\"{label}\",revision=\"hello-00001\"}}");
        assert!(text.contains(&series), "{series} missing:\n{text}");
        let other = if label == "shop" { "hello" } else { "shop" };
        assert!(
            !text.contains(&format!("service=\"{other}\"")),
            "{other} in:\n{text}"
        );
    }
}

/// An aggressive probe passes only after `successThreshold` good answers in a row, and a JSON
/// array of probes (one per container) passes only when every one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_their_success_threshold_and_every_probe_of_an_array() {
    let app = Backend::start("app").await;
    let mut a = args(app.addr, 0);
    a.readiness_probe = Some(format!(
        r#"{{"httpGet":{{"path":"/ready","port":{}}},"periodSeconds":0,"successThreshold":3}}"#,
        app.addr.port()
    ));
    let sc = start(a).await;
    let got = get(&h1_client(), sc.addr(), "x", "/", &QUEUE_PROBE).await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "queue"));
    assert_eq!(app.requests(), 3, "three good answers in a row");

    let other = Backend::start("other").await;
    let dead = dead_addr().await;
    for (second, want) in [
        (other.addr, StatusCode::OK),
        (dead, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let mut a = args(app.addr, 0);
        a.readiness_probe = Some(format!(
            r#"[{{"tcpSocket":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":1}},{{"tcpSocket":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":1}}]"#,
            app.addr.port(),
            second.port()
        ));
        let sc = start(a).await;
        let got = get(&h1_client(), sc.addr(), "x", "/", &QUEUE_PROBE).await;
        assert_eq!(got.status, want, "second probe to {second}: {}", got.body);
    }
}
