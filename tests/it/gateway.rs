//! The standalone gateway end to end: routing, splits, balancing, forwarding, errors, metrics.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use std::time::Duration;

fn revision_yaml(name: &str, cc: u32, eps: &[&Backend]) -> String {
    let list: Vec<String> = eps.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "      - {{ name: {name}, container_concurrency: {cc}, endpoints: [{}] }}\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_weights_and_zero_percent_gets_nothing() {
    let weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0];
    let mut backends = Vec::new();
    for i in 0..weights.len() {
        backends.push(Backend::start(&format!("r{i}")).await);
    }
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic:\n",
    );
    for (i, w) in weights.iter().enumerate() {
        yaml += &format!("      - {{ revision: r{i}, percent: {w}, tag: t{i} }}\n");
    }
    yaml += "    revisions:\n";
    for (i, b) in backends.iter().enumerate() {
        yaml += &revision_yaml(&format!("r{i}"), 0, &[b]);
    }
    let gw = gateway(&yaml).await;
    let c = h1_client();
    let n = 1000;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let c = c.clone();
        let addr = gw.addr();
        tasks.push(tokio::spawn(
            async move { get(&c, addr, "x", "/", &[]).await },
        ));
        if tasks.len() >= 50 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap().status, StatusCode::OK);
            }
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    for (i, (b, w)) in backends.iter().zip(weights).enumerate() {
        let pct = b.requests() as f64 * 100.0 / n as f64;
        if w == 0 {
            assert_eq!(b.requests(), 0, "0% revision r{i} received requests");
        } else {
            assert!(
                (pct - f64::from(w)).abs() <= 5.0,
                "r{i}: weight {w}% got {pct:.1}%"
            );
        }
    }
    // A tag reaches a 0% revision, and only that one.
    let before: Vec<usize> = backends.iter().map(Backend::requests).collect();
    let got = get(&c, gw.addr(), "x", "/", &[("rouse-tag", "t8")]).await;
    assert_eq!(got.body, "r8");
    assert_eq!(backends[8].requests(), before[8] + 1);
    // An unknown tag falls through to the split.
    let got = get(&c, gw.addr(), "x", "/", &[("rouse-tag", "nope")]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(backends[7].requests() + backends[9].requests(), 0);
}

#[tokio::test]
async fn routes_by_host_path_prefix_and_headers() {
    let (a, b, c3, d) = (
        Backend::start("v1").await,
        Backend::start("v2").await,
        Backend::start("v3").await,
        Backend::start("other").await,
    );
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
services:
  - name: hello
    hosts: ["hello.example.com", "hello"]
    routes:
      - path: /api
        set_headers: {{ x-route: api }}
        traffic: [{{ revision: v2, percent: 100 }}]
      - path: /api/special
        headers: {{ x-canary: "yes", x-team: blue }}
        traffic: [{{ revision: v3, percent: 100, set_headers: {{ x-rev: v3 }} }}]
    traffic:
      - {{ revision: v1, percent: 100 }}
    revisions:
{}{}{}  - name: other
    hosts: ["other.example.com"]
    traffic: [{{ revision: o, percent: 100 }}]
    revisions:
{}"#,
        revision_yaml("v1", 0, &[&a]),
        revision_yaml("v2", 0, &[&b]),
        revision_yaml("v3", 0, &[&c3]),
        revision_yaml("o", 0, &[&d]),
    );
    let gw = gateway(&yaml).await;
    let cl = h1_client();
    let at = gw.addr();
    assert_eq!(get(&cl, at, "hello.example.com", "/", &[]).await.body, "v1");
    assert_eq!(get(&cl, at, "HELLO:8080", "/x", &[]).await.body, "v1");
    assert_eq!(get(&cl, at, "hello", "/api/x", &[]).await.body, "v2");
    assert_eq!(b.last_headers().get("x-route").unwrap(), "api");
    // A client's Connection header cannot strip a header the route sets.
    let sneaky = [("connection", "x-route")];
    assert_eq!(get(&cl, at, "hello", "/api/x", &sneaky).await.body, "v2");
    assert_eq!(b.last_headers().get("x-route").unwrap(), "api");
    // Longest prefix wins only when every header matches.
    let special = [("x-canary", "yes"), ("x-team", "blue")];
    assert_eq!(
        get(&cl, at, "hello", "/api/special/1", &special).await.body,
        "v3"
    );
    assert_eq!(c3.last_headers().get("x-rev").unwrap(), "v3");
    let partial = [("x-canary", "yes")];
    assert_eq!(
        get(&cl, at, "hello", "/api/special/1", &partial).await.body,
        "v2"
    );
    assert_eq!(
        get(&cl, at, "other.example.com", "/api", &[]).await.body,
        "other"
    );
    // Unknown host: 404 naming the host; nothing reaches a backend.
    let before = a.requests() + b.requests() + c3.requests() + d.requests();
    let got = get(&cl, at, "nobody.example.com", "/", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(
        got.body
            .contains("no service matches host \"nobody.example.com\""),
        "{}",
        got.body
    );
    assert_eq!(got.header("rouse-error"), "no-service");
    assert_eq!(
        a.requests() + b.requests() + c3.requests() + d.requests(),
        before
    );
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_requests_total{service=\"hello\",revision=\"v1\",code=\"2xx\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "rouse_unrouted_requests_total{reason=\"no_service\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_is_never_exceeded_under_64_clients() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 4, &[&a, &b])
    );
    let gw = gateway(&yaml).await;
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, addr) = (c.clone(), gw.addr());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..4 {
                if get(&c, addr, "x", "/?delay=20", &[]).await.status == StatusCode::OK {
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
async fn backend_503_passes_through_and_is_not_retried() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a, &b])
    );
    let gw = gateway(&yaml).await;
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
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{dead}\", \"{}\"] }}\n",
        live.addr
    );
    let gw = gateway(&yaml).await;
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
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{dead}\"] }}\n"
    );
    let gw = gateway(&yaml).await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("rouse-error"), "connect-failed");
    assert!(got.body.contains(&dead.to_string()), "{}", got.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_not_timed_out_by_default() {
    let a = Backend::start("slow").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
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
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    timeouts: {{ response_start: 300ms, idle: 300ms }}\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
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

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_stripping() {
    let a = Backend::start("a").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_through_to_h2c_revision() {
    let a = Backend::start("h2").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"grpc.local\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, protocol: h2c, endpoints: [\"{}\"] }}\n",
        a.addr
    );
    let gw = gateway(&yaml).await;
    // One client connection carrying 50 concurrent streams, addressed by :authority.
    let send = h2_conn(gw.addr()).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("http://grpc.local/x?delay=10")
                .body(Full::new(Bytes::new()))
                .unwrap();
            collect(send.send_request(req).await.unwrap()).await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.version, Version::HTTP_2);
        assert_eq!(got.body, "h2");
    }
    assert_eq!(*a.seen.last_version.lock().unwrap(), Some(Version::HTTP_2));
    assert_eq!(a.requests(), 50);
    // All 50 streams shared one upstream connection.
    assert_eq!(
        a.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn h2c_client_to_http1_revision() {
    let a = Backend::start("one").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
    let mut send = h2_conn(gw.addr()).await;
    let req = Request::get("http://svc.local/h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = collect(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(*a.seen.last_version.lock().unwrap(), Some(Version::HTTP_11));
    assert_eq!(a.last_headers().get("host").unwrap(), "svc.local");
}

#[tokio::test]
async fn protocol_is_told_from_first_bytes_that_trickle_in_and_silent_clients_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let a = Backend::start("one").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nlimits: {{ header_read_timeout: 400ms }}\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;

    // The h2c preface split in two segments: the answer is an HTTP/2 SETTINGS frame.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .expect("an HTTP/2 server speaks first after the preface")
        .unwrap();
    assert_eq!(frame[3], 0x4, "frame type SETTINGS: {frame:?}");

    // HTTP/1.1 a byte at a time.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    for b in b"GET /trickle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A client that sends nothing, and one that stops inside the preface, are closed once
    // the header read timeout passes.
    for first in [&b""[..], &b"PRI * HT"[..]] {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(first).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection is closed, not left open");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
    }

    // Clients that close inside the preface are let go at once, and do not leave the listener
    // busy: this test's single thread runs the gateway too, so a spin would stall the request
    // after them.
    let mut gone = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"PRI * HT").await.unwrap();
        s.shutdown().await.unwrap();
        gone.push(s);
    }
    for mut s in gone {
        let mut buf = [0u8; 16];
        // Well inside the 400 ms header read timeout.
        let r = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
            .await
            .expect("closed at once, not at the header read timeout");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the gateway still answers")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert_eq!(a.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways() {
    let a = Backend::start("big").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
    let size: u64 = 100 << 20;
    // Download: counted as it arrives, never collected.
    let res = download(gw.addr(), size).await;
    assert_eq!(res.headers()["content-length"], size.to_string().as_str());
    assert_eq!(count_body(&mut res.into_body()).await, size);
    // Upload: a streamed body of 100 MiB, counted by the backend.
    assert_eq!(upload(gw.addr(), 100).await, size.to_string());
}

#[tokio::test]
async fn queue_bounds_answer_503_with_retry_after() {
    let a = Backend::start("a").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, container_concurrency: 1, endpoints: [\"{}\"], queue: {{ max_requests: 1, max_wait: 400ms }} }}\n",
        a.addr
    );
    let gw = gateway(&yaml).await;
    let c = h1_client();
    let addr = gw.addr();
    let busy = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, addr, "x", "/?delay=1500", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, addr, "x", "/", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
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

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let a = Backend::start("a").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n{}",
        revision_yaml("r", 0, &[&a])
    );
    let gw = gateway(&yaml).await;
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
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream: {{ pool_idle_timeout: 30s }}\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{addr}\"] }}\n"
    );
    let gw = gateway(&yaml).await;
    stale_connections_are_retried(gw.addr(), &conns).await;
}

#[tokio::test]
async fn http10_backend_answers_reach_http11_clients_as_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold")
                    .await;
            });
        }
    });
    let yaml = format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{addr}\"] }}\n"
    );
    let gw = gateway(&yaml).await;
    let out = raw(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.ends_with("old"), "{out}");
}
