//! Forwarding a request to an endpoint and the answer back: the headers rouse adds and strips,
//! requests it refuses before forwarding, and what a client sees when an endpoint fails (a
//! refused connection, a stale pooled connection, an error status).

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    let dead = refusing_addr();
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
    let dead = refusing_addr();
    let gw = Cfg::single(Rev::new("r").endpoint(dead)).start().await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("rouse-error"), "connect-failed");
    assert!(got.body.contains(&dead.to_string()), "{}", got.body);
}

/// A request that may have reached the backend is never sent again, whatever its method: a
/// backend that reads it and closes without answering gets each request once, on one
/// connection, and the client gets 502 `upstream-failed` naming the endpoint.
#[tokio::test]
async fn a_request_the_backend_may_have_seen_is_never_retried() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    let (conns, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c2, h2) = (conns.clone(), heads.clone());
    let addr = serve_each(move |mut s| {
        c2.fetch_add(1, Ordering::SeqCst);
        let h2 = h2.clone();
        async move {
            if head_in(&mut s, &mut Vec::new()).await.is_none() {
                return;
            }
            h2.fetch_add(1, Ordering::SeqCst);
            // Closed unanswered.
        }
    })
    .await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr)).start().await;
    let c = h1_client();
    // A GET without a body is the one rouse could replay; on a new connection it does not.
    for (i, (method, body)) in [("GET", ""), ("POST", "body"), ("PUT", "body")]
        .into_iter()
        .enumerate()
    {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}/", gw.addr()))
            .header("host", "x")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let got = send(&c, req).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_GATEWAY,
            "{method}: {}",
            got.body
        );
        assert_eq!(got.header("rouse-error"), "upstream-failed", "{method}");
        assert!(got.body.contains(&addr.to_string()), "{}", got.body);
        assert_eq!(
            heads.load(Ordering::SeqCst),
            i + 1,
            "{method} was sent once"
        );
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        3,
        "one connection per request"
    );
}

/// An endpoint whose listen queue is full: the kernel drops its SYNs, so connecting neither
/// succeeds nor is refused. The listener and the connections that fill it live as long as the
/// returned value.
async fn silent_addr() -> (
    SocketAddr,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Never accepted: a few connections fill the queue (its length is the backlog plus one).
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(s);
        }
    }
    (addr, held, listener)
}

#[tokio::test]
async fn an_endpoint_that_never_answers_the_connect_is_a_504_after_one_retry() {
    let (silent, _held, _listener) = silent_addr().await;
    let gw = Cfg::single(Rev::new("r").endpoint(silent))
        .connect_timeout("300ms")
        .admin()
        .start()
        .await;
    let began = tokio::time::Instant::now();
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.body);
    assert_eq!(got.header("rouse-error"), "connect-timeout");
    assert!(got.body.contains(&silent.to_string()), "{}", got.body);
    // Tried twice (the retry after a failed connect), each bounded by connect_timeout.
    assert!(
        began.elapsed() >= Duration::from_millis(600),
        "{:?}",
        began.elapsed()
    );
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "rouse_requests_total{service=\"s\",revision=\"r\",code=\"5xx\"}"
        ),
        1.0,
        "{m}"
    );
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
async fn any_forwarding_field_a_client_sent_is_joined_not_repeated() {
    // Each forwarding field alone, in any case: the request's fields then go out from its map,
    // this hop's joined to the client's, and never a second field of the same name.
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let sent = [
        (
            "X-Forwarded-For",
            "10.1.2.3",
            "x-forwarded-for",
            "10.1.2.3, 127.0.0.1",
        ),
        ("x-forwarded-PROTO", "https", "x-forwarded-proto", "https"),
        (
            "X-Forwarded-Host",
            "lb.example",
            "x-forwarded-host",
            "lb.example",
        ),
        (
            "FORWARDED",
            "for=10.1.2.3",
            "forwarded",
            "for=10.1.2.3, for=127.0.0.1;host=\"x\";proto=http",
        ),
    ];
    for (name, value, lower, want) in sent {
        let head =
            format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\nConnection: close\r\n\r\n");
        let out = raw(gw.addr(), head.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{name}: {out}");
        let h = a.last_headers();
        let all: Vec<_> = h.get_all(lower).iter().collect();
        assert_eq!(all, [want], "{name}");
        // The other three are this hop's, once each.
        for other in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert_eq!(h.get_all(other).iter().count(), 1, "{name}: {other}");
        }
    }
}

/// A request with nothing for the proxy to read but its host reaches the backend with its
/// fields as the client wrote them (names' case, spacing, order), this hop's forwarding fields
/// once each and its length once, after them; a route that sets a field the client sent
/// replaces it rather than adding a second, and a request with a field the proxy reads goes
/// out from its map.
#[tokio::test]
async fn a_clients_fields_go_upstream_as_written_and_a_route_replaces_them() {
    use tokio::io::AsyncWriteExt;
    // A backend for each service, each kept to one connection (the pool reuses it).
    let backends = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let at = |i: usize| backends[i].local_addr().unwrap();
    let gw = Cfg::new()
        .service(
            Svc::new("plain")
                .host("plain")
                .only(Rev::new("p").endpoint(at(0))),
        )
        .service(
            Svc::new("routed")
                .host("routed")
                .route(Route::new("/").set_header("x-custom", "route").to("r"))
                .revision(Rev::new("r").endpoint(at(1))),
        )
        .start()
        .await;
    let mut client = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut upstream: [Option<tokio::net::TcpStream>; 2] = [None, None];
    let mut exchange = async |to: usize, head: &str| {
        client.write_all(head.as_bytes()).await.unwrap();
        if upstream[to].is_none() {
            upstream[to] = Some(backends[to].accept().await.unwrap().0);
        }
        let up = upstream[to].as_mut().unwrap();
        let got = read_head(up).await;
        up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        assert!(read_response(&mut client).await.ends_with("ok"));
        got
    };
    let fields = "Host: plain\r\nX-Custom:  as written \r\nContent-Length: 0\r\nUser-Agent: t\r\n";
    let got = exchange(0, &format!("POST /p?q HTTP/1.1\r\n{fields}\r\n")).await;
    let lines = "POST /p?q HTTP/1.1\r\nHost: plain\r\nX-Custom:  as written \r\nUser-Agent: t\r\n";
    assert!(got.starts_with(lines), "{got}");
    for (field, times) in [
        ("x-forwarded-for: 127.0.0.1\r\n", 1),
        ("x-forwarded-proto: http\r\n", 1),
        ("x-forwarded-host: plain\r\n", 1),
        ("content-length: 0\r\n", 1),
        ("Content-Length", 0),
    ] {
        assert_eq!(got.matches(field).count(), times, "{field:?} in {got}");
    }
    // A route's field replaces the client's.
    let got = exchange(
        1,
        "GET / HTTP/1.1\r\nHost: routed\r\nX-Custom: client\r\n\r\n",
    )
    .await;
    let custom: Vec<_> = got
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-custom:"))
        .collect();
    assert_eq!(custom, ["x-custom: route"], "{got}");
    // A field the proxy reads (here one it strips) sends the request out from its map.
    let got = exchange(
        0,
        "GET / HTTP/1.1\r\nHost: plain\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\n",
    )
    .await;
    assert!(got.contains("\r\nhost: plain\r\nx-a: 1\r\n"), "{got}");
    assert!(!got.to_ascii_lowercase().contains("keep-alive"), "{got}");
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

/// The new connection a resent request comes on; if none comes within 5 s, fails with what
/// the client was answered instead.
async fn resent_on(
    backend: &tokio::net::TcpListener,
    client: &mut tokio::net::TcpStream,
) -> (tokio::net::TcpStream, SocketAddr) {
    match tokio::time::timeout(Duration::from_secs(5), backend.accept()).await {
        Ok(accepted) => accepted.unwrap(),
        Err(_) => panic!(
            "the request was not resent on a new connection; the client got: {:?}",
            tokio::time::timeout(Duration::from_secs(5), read_response(client)).await
        ),
    }
}

/// The race the pool must survive: a backend closes its idle keep-alive connection just as
/// rouse hands that connection a request. Here it is made certain on one thread: the client's
/// request reaches rouse first and the backend's FIN right after, so rouse picks the pooled
/// connection (not yet known closed) and gives it the request, and only then does the
/// connection read its end. hyper hands the unsent request back, and rouse sends it on a new
/// connection: the client never sees the race.
#[tokio::test]
async fn a_request_handed_to_a_pooled_connection_that_closes_is_resent_on_a_new_one() {
    use tokio::io::AsyncWriteExt;
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Cfg::single(Rev::new("r").endpoint(backend.local_addr().unwrap()))
        .pool_idle_timeout("30s")
        .start()
        .await;
    let mut client = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    // Two requests on one upstream connection: it is pooled and reused.
    client.write_all(get("/one").as_bytes()).await.unwrap();
    let (mut first, _) = backend.accept().await.unwrap();
    for path in ["/one", "/two"] {
        if path == "/two" {
            client.write_all(get(path).as_bytes()).await.unwrap();
        }
        let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut first))
            .await
            .unwrap_or_else(|_| panic!("{path} did not come on the pooled connection"));
        assert!(head.starts_with(&format!("GET {path} ")), "{head}");
        first
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nold")
            .await
            .unwrap();
        assert!(read_response(&mut client).await.ends_with("old"));
    }
    // Let the connection settle back into the pool.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The request, then at once the backend's close; nothing yields in between.
    client.write_all(get("/three").as_bytes()).await.unwrap();
    drop(first);
    let (mut second, _) = resent_on(&backend, &mut client).await;
    let head = read_head(&mut second).await;
    assert!(head.starts_with("GET /three "), "{head}");
    second
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
        .await
        .unwrap();
    let res = read_response(&mut client).await;
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("new"),
        "{res}"
    );
}

/// The same race over h2c: the backend's connection closes just as rouse starts a stream on
/// it. The stream never started, hyper hands the request back, and rouse sends it on a new
/// connection.
#[tokio::test]
async fn an_h2c_request_caught_by_its_connection_closing_is_resent_on_a_new_one() {
    use tokio::io::AsyncWriteExt;
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Cfg::single(
        Rev::new("r")
            .endpoint(backend.local_addr().unwrap())
            .protocol("h2c"),
    )
    .start()
    .await;
    // Each backend connection answers with its number.
    let serve = |s: tokio::net::TcpStream, n: usize| {
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                    format!("conn {n}"),
                ))))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        })
    };
    let mut client = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    client.write_all(get("/one").as_bytes()).await.unwrap();
    let (s, _) = backend.accept().await.unwrap();
    let first = serve(s, 1);
    assert!(read_response(&mut client).await.ends_with("conn 1"));
    // The request, then at once the end of the backend's connection.
    client.write_all(get("/two").as_bytes()).await.unwrap();
    first.abort();
    let (s, _) = resent_on(&backend, &mut client).await;
    let _second = serve(s, 2);
    let res = read_response(&mut client).await;
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("conn 2"),
        "{res}"
    );
}

/// A POST cannot be sent twice, so it never goes out on a pooled connection idle long enough
/// to be closing as it is written: against [`closes_on_second_request`] (an idle close racing
/// the request, made certain), each POST after a pause gets a new connection and its answer,
/// where reusing the old one would give 502.
#[tokio::test]
async fn a_post_after_a_pause_takes_a_new_connection_rather_than_risk_a_closing_one() {
    let (addr, conns) = closes_on_second_request().await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr))
        .pool_idle_timeout("30s")
        .start()
        .await;
    let c = h1_client();
    for i in 0..3 {
        let req = Request::post(format!("http://{}/", gw.addr()))
            .header("host", "x")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let got = send(&c, req).await;
        assert_eq!(got.status, StatusCode::OK, "POST {i}: {}", got.body);
        // Past RISKY_IDLE (250 ms): the pooled connection is now one a backend may be closing.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        3,
        "each POST on a new connection"
    );
    // A GET after the same pause may use the pooled one: it can be replayed if that fails.
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
}

/// Requests that two parties could read differently: refused with 400 `bad-request`, and never
/// forwarded.
#[tokio::test]
async fn ambiguous_requests_are_refused_before_any_backend_sees_them() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .admin()
        .start()
        .await;
    let cases: [(&str, &[u8], &str); 7] = [
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            "more than one Host header",
        ),
        (
            "chunked twice, in two headers",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "chunked twice",
        ),
        (
            "chunked twice, in one list",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "chunked twice",
        ),
        (
            "a bare LF after the request line",
            b"GET / HTTP/1.1\nHost: a.test\r\n\r\n",
            "a line of the request ends in LF without CR; end every line with CRLF",
        ),
        (
            "a bare LF after a field",
            b"GET / HTTP/1.1\r\nHost: a.test\nX-Y: z\r\n\r\n",
            "ends in LF without CR",
        ),
        (
            "a bare LF ending the head",
            b"GET / HTTP/1.1\r\nHost: a.test\r\n\n",
            "ends in LF without CR",
        ),
        (
            "Content-Length beside Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "the request has both Content-Length and Transfer-Encoding; send one of them",
        ),
    ];
    for (what, req, says) in cases {
        let out = raw(gw.addr(), req).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        assert!(out.contains("rouse-error: bad-request"), "{what}: {out}");
        assert!(out.contains(says), "{what}: {out}");
        // One answer, and the connection closed after it (`raw` reads to the end).
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{what}: {out}");
    }
    assert_eq!(a.requests(), 0, "no refused request reached the backend");
    // A bare LF in a chunked body's framing fails the body, after its head went to the
    // handler: 400 `client-body`, as for any broken body.
    let out = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("rouse-error: client-body"),
        "{out}"
    );
    // A chunked body is not read as heads: its own LFs are data.
    let out = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nab\ncd\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "rouse_unrouted_requests_total{reason=\"bad_request\"}"),
        7.0,
        "the refused heads; the broken body is its revision's 4xx"
    );
}

/// Every request head on a keep-alive connection is checked, however the bytes are cut: a
/// request that breaks a rule after good ones is refused after their answers, with rouse's
/// words, and the ones before it are served whole.
#[tokio::test]
async fn a_broken_request_after_good_ones_on_one_connection_is_refused_after_their_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let good: &[u8] = b"POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\n\r\nab\n\ncd";
    let chunked: &[u8] = b"POST /two HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nx\ny\n\r\n0\r\n\r\n";
    let bad: &[u8] = b"GET /three HTTP/1.1\r\nHost: a.test\nX: 1\r\n\r\n";
    let whole = [good, chunked, bad].concat();
    // All at once (pipelined), then one byte at a time.
    for step in [whole.len(), 1] {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        for part in whole.chunks(step) {
            s.write_all(part).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        let statuses: Vec<&str> = out
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &out[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "step {step}: {out}");
        let third = &out[out.rfind("HTTP/1.1 400").unwrap()..];
        assert!(third.contains("rouse-error: bad-request"), "{third}");
        assert!(third.contains("ends in LF without CR"), "{third}");
        assert_eq!(
            out.matches("\r\n1\r\na\r\n0\r\n").count(),
            2,
            "both answers whole: {out}"
        );
    }
    assert_eq!(a.requests(), 4, "two good requests, twice");
}

/// A request that asks for an upgrade the backend declines leaves the connection HTTP/1.1, and
/// its next request is checked like any other; a switched connection is a tunnel and is not.
#[tokio::test]
async fn after_a_declined_upgrade_the_next_request_is_still_checked() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        .await
        .unwrap();
    let declined = read_response(&mut s).await;
    assert!(declined.starts_with("HTTP/1.1 200"), "{declined}");
    // The next request comes in a read of its own, after the answer.
    let out = send_to_end(&mut s, b"GET /x HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(a.requests(), 1);
}

/// RFC 9112 §3.2.2: for an absolute-form target the authority picks the service and becomes
/// the `Host` the backend sees; over HTTP/2 a `host` that disagrees with `:authority` is refused.
#[tokio::test]
async fn the_authority_decides_the_host_and_a_disagreeing_host_is_refused() {
    let (main, other) = (Backend::start("main").await, Backend::start("other").await);
    let gw = Cfg::new()
        .service(
            Svc::new("main")
                .host("main.test")
                .only(Rev::new("m").endpoint(main.addr)),
        )
        .service(
            Svc::new("other")
                .host("other.test")
                .only(Rev::new("o").endpoint(other.addr)),
        )
        .start()
        .await;
    let out = raw(
        gw.addr(),
        b"GET http://other.test/x HTTP/1.1\r\nHost: main.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!((main.requests(), other.requests()), (0, 1));
    assert_eq!(other.last_headers()["host"], "other.test");
    // HTTP/2: `:authority` other.test with `host: main.test`.
    let mut h2 = h2_conn(gw.addr()).await;
    let req = http::Request::get("http://other.test/x")
        .header("host", "main.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["rouse-error"], "bad-request");
    // Agreeing, they are served.
    let req = http::Request::get("http://other.test/x")
        .header("host", "OTHER.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), StatusCode::OK);
    assert_eq!((main.requests(), other.requests()), (0, 2));
}

/// A request body that breaks (a bad chunk size, a client that leaves mid-body) is the
/// client's fault: 400 `client-body` where anyone is left to hear it, counted as a 4xx, never
/// as a backend failure.
#[tokio::test]
async fn a_broken_request_body_is_the_clients_fault() {
    broken_bodies_are_the_clients_fault("http1").await;
}

/// A bad chunk (answered 400 `client-body`) and a client that leaves mid-body, through a
/// revision that speaks `protocol` to its backend: 4xx, never 5xx.
async fn broken_bodies_are_the_clients_fault(protocol: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").protocol(protocol).endpoint(a.addr))
        .admin()
        .start()
        .await;
    let out = raw(
        gw.addr(),
        b"POST /?count=1 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("rouse-error: client-body"), "{out}");
    // A client that promises 100 bytes, sends 10 and leaves.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"POST /?count=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    let m = wait_for_metric(
        &gw,
        "rouse_requests_total{service=\"s\",revision=\"r\",code=\"4xx\"}",
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "rouse_requests_total{service=\"s\",revision=\"r\",code=\"5xx\"}"
        ),
        0.0,
        "{m}"
    );
}

/// The same when the revision speaks h2c to its backend: the body's failure reaches the
/// upstream HTTP/2 stream as a reset, and is still the client's fault.
#[tokio::test]
async fn a_broken_request_body_is_the_clients_fault_over_an_h2c_upstream_too() {
    broken_bodies_are_the_clients_fault("h2c").await;
}

/// A backend that answers each connection's first request with `extra` headers, then keeps
/// the connection open until rouse closes it, and reports how long after its answer that was.
async fn idle_watching_backend(
    extra: &'static str,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_each(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{extra}\r\nok");
            let _ = s.write_all(answer.as_bytes()).await;
            let answered = tokio::time::Instant::now();
            // Whatever comes next, the connection's end is what is timed.
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = tx.send(answered.elapsed());
        }
    })
    .await;
    (addr, rx)
}

/// Idle pooled connections are closed when they expire, not only when the endpoint is next
/// used: after `upstream.pool_idle_timeout`, or sooner when the backend announces a shorter
/// `Keep-Alive: timeout=` (less a margin, so rouse lets go before the backend does).
#[tokio::test]
async fn idle_upstream_connections_are_closed_on_time() {
    // (the backend's extra headers, pool_idle_timeout, the least time before the close)
    for (extra, pool_idle, not_before) in [
        ("", "300ms", 300),
        // The pool would keep it 30 s; the backend's word shortens that to 0.5 s.
        ("keep-alive: timeout=1\r\n", "30s", 500),
    ] {
        let (addr, mut closed) = idle_watching_backend(extra).await;
        let gw = Cfg::single(Rev::new("r").endpoint(addr))
            .pool_idle_timeout(pool_idle)
            .start()
            .await;
        let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            got.headers.get("keep-alive").is_none(),
            "hop-by-hop, not forwarded"
        );
        // No further request: only a timer can close it.
        let after = tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the idle connection is closed without another request")
            .unwrap();
        assert!(
            after >= Duration::from_millis(not_before),
            "{extra:?}: closed {after:?} after the answer"
        );
    }
}

/// A backend that answers the first request on each connection and, as a backend closing an
/// idle keep-alive connection just then would, drops the connection on the second without
/// answering. Counts connections.
async fn closes_on_second_request() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let addr = serve_each(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = vec![0u8; 4096];
            // The first request (read to the end of its head, and its 2-byte body if any).
            if head_in(&mut s, &mut Vec::new()).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // The second: read, then closed unanswered.
            let _ = s.read(&mut buf).await;
        }
    })
    .await;
    (addr, conns)
}

/// An idempotent request without a body, sent on a pooled connection that the backend drops
/// before answering, is replayed once on a new connection; one with a body is not (the backend
/// may have acted on it), and gets 502.
#[tokio::test]
async fn a_bodiless_idempotent_request_is_replayed_when_a_reused_connection_drops_it() {
    use std::sync::atomic::Ordering;
    let (addr, conns) = closes_on_second_request().await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr)).start().await;
    let c = h1_client();
    assert_eq!(
        get(&c, gw.addr(), "x", "/", &[]).await.status,
        StatusCode::OK
    );
    // Idle long enough to be at risk, then reused: dropped, and replayed on a new connection.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = get(&c, gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // A POST with a body at once on the pooled connection from the replay (recent, so it is
    // used): dropped, and not replayed, since the backend may have acted on it.
    let post = http::Request::post(format!("http://{}/", gw.addr()))
        .header("host", "x")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    let got = send(&c, post).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.body);
    assert_eq!(got.header("rouse-error"), "upstream-failed");
    // A PUT with `Content-Length: 0` has no body either: replayed the same way. The first goes
    // out on a new connection and is answered; the second reuses it after the pause.
    let put = || {
        http::Request::put(format!("http://{}/", gw.addr()))
            .header("host", "x")
            .header("content-length", "0")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&c, put()).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = send(&c, put()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(conns.load(Ordering::SeqCst), 4);
}

/// The admin listener's endpoints, as docs/metrics.md lists them: `/metrics` in OpenMetrics
/// text ending with `# EOF`, `/healthz`, `/readyz`, and a 404 that names what exists.
#[tokio::test]
async fn the_admin_endpoints_answer_as_documented() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .admin()
        .start()
        .await;
    let (c, admin) = (h1_client(), gw.admin_addr().unwrap());
    let m = get(&c, admin, "a", "/metrics", &[]).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(
        m.header("content-type"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(m.body.ends_with("# EOF\n"), "{}", m.body);
    // Series of a revision exist at 0 before its first request.
    assert_eq!(
        metric(
            &m.body,
            "rouse_requests_total{service=\"s\",revision=\"r\",code=\"2xx\"}"
        ),
        0.0
    );
    let h = get(&c, admin, "a", "/healthz", &[]).await;
    assert_eq!((h.status, h.body.as_str()), (StatusCode::OK, "ok\n"));
    let r = get(&c, admin, "a", "/readyz", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ready\n"));
    let other = get(&c, admin, "a", "/nope", &[]).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert!(
        other.body.contains("/metrics, /healthz or /readyz"),
        "{}",
        other.body
    );
}

/// `upstream.max_idle_per_endpoint` caps the idle connections kept: after six at once, two
/// are kept, so the next six at once find two to reuse and open four. `container_concurrency`
/// sets the cap when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_kept_per_endpoint_are_capped() {
    for (cap, cc, reused) in [(Some(2), 0, 2), (None, 0, 6), (None, 3, 3)] {
        let a = Backend::start("a").await;
        let mut cfg = Cfg::single(Rev::new("r").endpoint(a.addr).cc(cc));
        if let Some(n) = cap {
            cfg = cfg.max_idle_per_endpoint(n);
        }
        let gw = cfg.start().await;
        let c = h1_client();
        // With container_concurrency 3, at most three run at once anyway.
        let batch = cc.max(6) as usize;
        for round in 0..2 {
            let all: Vec<_> = (0..batch)
                .map(|_| spawn_get(&c, gw.addr(), "/?delay=300"))
                .collect();
            for t in all {
                assert_eq!(t.await.unwrap().status, StatusCode::OK);
            }
            let conns = a.seen.connections.load(Ordering::SeqCst);
            let first = if cc > 0 { cc as usize } else { batch };
            let want = if round == 0 {
                first
            } else {
                2 * first - reused
            };
            assert_eq!(conns, want, "cap {cap:?}, cc {cc}, round {round}");
        }
    }
}
