//! Routing: which service a host reaches, which route a path prefix and headers select, how
//! a split divides requests by percent, and how a tag reaches one revision whatever its share.

use crate::support::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_weights_and_zero_percent_gets_nothing() {
    let weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0];
    let mut backends = Vec::new();
    for i in 0..weights.len() {
        backends.push(Backend::start(&format!("r{i}")).await);
    }
    let mut svc = Svc::new("s").host("*");
    for (i, (w, b)) in weights.iter().zip(&backends).enumerate() {
        let name = format!("r{i}");
        svc = svc
            .traffic(Target::new(&name, *w).tag(&format!("t{i}")))
            .revision(Rev::new(&name).endpoint(b.addr));
    }
    let gw = Cfg::new().service(svc).start().await;
    let c = h1_client();
    let n = 1000;
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(spawn_get(&c, gw.addr(), "/"));
        if tasks.len() >= 50 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap().status, StatusCode::OK);
            }
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    // Each arm's count is binomial: within 5 standard deviations of n·p (a false alarm about
    // once in a million runs per arm), and never zero for a non-zero arm (0.99^1000: 4e-5).
    // The exact mapping from a draw to an arm is tested without chance in `split.rs`.
    for (i, (b, w)) in backends.iter().zip(weights).enumerate() {
        let got = b.requests() as f64;
        if w == 0 {
            assert_eq!(b.requests(), 0, "0% revision r{i} received requests");
        } else {
            let p = f64::from(w) / 100.0;
            let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
            assert!(
                got > 0.0 && (got - mean).abs() <= 5.0 * sd,
                "r{i}: weight {w}% got {got} of {n} (expected {mean} ± {:.1})",
                5.0 * sd
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
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("hello")
                .host("hello.example.com")
                .host("hello")
                .route(Route::new("/api").set_header("x-route", "api").to("v2"))
                .route(
                    Route::new("/api/special")
                        .header("x-canary", "yes")
                        .header("x-team", "blue")
                        .traffic(Target::new("v3", 100).set_header("x-rev", "v3")),
                )
                .split(&[("v1", 100)])
                .revision(Rev::new("v1").endpoint(a.addr))
                .revision(Rev::new("v2").endpoint(b.addr))
                .revision(Rev::new("v3").endpoint(c3.addr)),
        )
        .service(
            Svc::new("other")
                .host("other.example.com")
                .only(Rev::new("o").endpoint(d.addr)),
        )
        .start()
        .await;
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

#[tokio::test]
async fn cluster_local_services_rewritten_hosts_and_routes_without_default() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gw = Cfg::new()
        .listen_internal("127.0.0.1:0")
        .admin()
        .service(
            Svc::new("public")
                .host("pub.test")
                .route(Route::new("/api").rewrite_host("inner.test").to("a"))
                .revision(Rev::new("a").endpoint(a.addr)),
        )
        .service(
            Svc::new("local")
                .host("local.test")
                .visibility("cluster-local")
                .only(Rev::new("b").endpoint(b.addr)),
        )
        .start()
        .await;
    let internal = gw.internal_addr().unwrap();
    let cl = h1_client();
    // A cluster-local service is not there for the public listener, and is for the internal one.
    let got = get(&cl, gw.addr(), "local.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.header("rouse-error"), "no-service");
    assert_eq!(b.requests(), 0);
    assert_eq!(get(&cl, internal, "local.test", "/", &[]).await.body, "b");
    // The internal listener serves public services too.
    assert_eq!(get(&cl, internal, "pub.test", "/api", &[]).await.body, "a");
    // rewrite_host: the backend sees the new host over HTTP/1.1 and from an HTTP/2 client;
    // forwarding headers keep the client's.
    assert_eq!(
        get(&cl, gw.addr(), "pub.test", "/api/x", &[]).await.body,
        "a"
    );
    let seen = a.headers_at("/api/x");
    assert_eq!(seen["host"], "inner.test");
    assert_eq!(seen["x-forwarded-host"], "pub.test");
    let mut h2 = h2_conn(gw.addr()).await;
    let req = http::Request::get("http://pub.test/api/h2")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let got = collect(h2.send_request(req).await.unwrap()).await;
    assert_eq!(got.body, "a");
    assert_eq!(a.headers_at("/api/h2")["host"], "inner.test");
    // No default traffic: a path no route takes is 404, and says so.
    let before = a.requests();
    let got = get(&cl, gw.addr(), "pub.test", "/other", &[]).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.header("rouse-error"), "no-route");
    assert!(got.body.contains("matches path \"/other\""), "{}", got.body);
    assert_eq!(a.requests(), before);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "rouse_unrouted_requests_total{reason=\"no_route\"}"),
        1.0
    );
    // A cluster-local service needs the internal listener, a rewritten host must be a host.
    let issues = |yaml: &str| Config::parse(yaml).unwrap_err().to_string();
    let err = issues(
        "listen: 127.0.0.1:0\nservices:\n  - { name: s, hosts: ['*'], visibility: cluster-local, traffic: [{ revision: r, percent: 100 }], revisions: [{ name: r, endpoints: ['127.0.0.1:1'] }] }\n",
    );
    assert!(
        err.contains(
            "services[0].visibility: cluster-local services are served only on listen_internal"
        ),
        "{err}"
    );
    let err = issues(
        "listen: 127.0.0.1:0\nservices:\n  - { name: s, hosts: ['*'], routes: [{ path: /, rewrite_host: 'a b/c', traffic: [{ revision: r, percent: 100 }] }], revisions: [{ name: r, endpoints: ['127.0.0.1:1'] }] }\n",
    );
    assert!(
        err.contains("services[0].routes[0].rewrite_host: \"a b/c\" is not a host name"),
        "{err}"
    );
    let err = issues(
        "listen: 127.0.0.1:0\nservices:\n  - { name: s, hosts: ['*'], revisions: [{ name: r, endpoints: ['127.0.0.1:1'] }] }\n",
    );
    assert!(
        err.contains("services[0].traffic: empty"),
        "no routes and no traffic: {err}"
    );
}
