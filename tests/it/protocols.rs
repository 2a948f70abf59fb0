//! HTTP/1.1 and h2c: both on the one cleartext port, told apart by their first bytes; each
//! request sent on in the revision's protocol (`http1`, `h2c` or `auto`) whatever the client
//! spoke; and HTTP/1.1's details kept: pipelining, `Expect: 100-continue`, chunked trailers,
//! HTTP/1.0 answers.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use std::time::Duration;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_through_to_h2c_revision() {
    let a = Backend::start("h2").await;
    let gw = Cfg::new()
        .service(
            Svc::new("s")
                .host("grpc.local")
                .only(Rev::new("r").protocol("h2c").endpoint(a.addr)),
        )
        .start()
        .await;
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
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_auto_follows_the_client() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").protocol("auto").endpoint(a.addr))
        .start()
        .await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        *a.seen.last_version.lock().unwrap(),
        Some(http::Version::HTTP_11)
    );
    // Over HTTP/2 the host is the authority; a `host` header that differed would be refused.
    let host = gw.addr().to_string();
    let got = get(&h2_client(), gw.addr(), &host, "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        *a.seen.last_version.lock().unwrap(),
        Some(http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn protocol_is_told_from_first_bytes_that_trickle_in_and_silent_clients_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("one").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .header_read_timeout("400ms")
        .start()
        .await;

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
    // after them. A gateway with the default 30 s header read timeout shows "at once": a
    // listener that waited for the timeout would fail the 5 s guard below by far.
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    let mut gone = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"PRI * HT").await.unwrap();
        s.shutdown().await.unwrap();
        gone.push(s);
    }
    for mut s in gone {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
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

#[tokio::test]
async fn http10_backend_answers_reach_http11_clients_as_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = serve_each(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold")
            .await;
    })
    .await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr)).start().await;
    let out = raw(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.ends_with("old"), "{out}");
}

#[tokio::test]
async fn pipelined_http11_requests_are_all_answered() {
    let a = Backend::start("p").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    // Three requests in one write, the first one slow: each is forwarded and answered on the
    // one connection (HTTP/1.1 keeps them in order).
    let out = raw(
        gw.addr(),
        b"GET /one?delay=200 HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(a.requests(), 3);
    for path in ["/one", "/two", "/three"] {
        assert!(
            !a.headers_at(path).is_empty(),
            "{path} never reached the backend"
        );
    }
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let be = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"POST /?count=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("100 Continue arrives without the body being sent")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut b = vec![0u8; 1024];
        loop {
            let n = s.read(&mut b).await.unwrap();
            rest.push_str(&String::from_utf8_lossy(&b[..n]));
            if n == 0 || rest.ends_with("\r\n\r\n5") {
                break;
            }
        }
    })
    .await;
    assert!(rest.contains("200 OK") && rest.ends_with('5'), "{rest}");
    assert!(
        be.last_headers().get("expect").is_none(),
        "Expect is answered by rouse, not forwarded"
    );
}

#[tokio::test]
async fn http11_chunked_trailers_pass_through() {
    let be = Backend::start("t").await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
    let out = raw(
        gw.addr(),
        b"GET /?trailers=1 HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{out}");
    assert!(lower.contains("with trailers"), "{out}");
    assert!(
        lower.contains("\r\nx-checksum: abc123\r\n"),
        "trailer missing:\n{out}"
    );
    assert_eq!(
        be.headers_at("/").get("te").unwrap(),
        "trailers",
        "TE: trailers reaches the backend"
    );
}

/// An invalid HTTP/2 preface, or any first line that is not an HTTP/1.x request line, closes
/// the connection without an answer (RFC 9113 §3.4; h2spec 3.5/2): an HTTP/1.1 `400` would
/// reach an HTTP/2 client as garbage frames. A malformed HTTP/1.1 request still gets its 400.
#[tokio::test]
async fn an_invalid_preface_closes_the_connection_without_an_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("one").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr)).start().await;
    for first in [
        &b"INVALID CONNECTION PREFACE\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ"[..],
        &b"GET /\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the connection is closed");
        assert!(
            read.is_ok() && out.is_empty(),
            "{:?} got an answer: {}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(&out)
        );
    }
    let out = raw(gw.addr(), b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(a.requests(), 0);
    // Empty lines before the request line are ignored, as RFC 9112 §2.2 asks.
    let out = raw(
        gw.addr(),
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// An HTTP/2 client connection on which no request starts for `limits.idle_timeout` is closed
/// with GOAWAY; a stream still running then finishes first.
#[tokio::test]
async fn an_idle_http2_client_connection_is_closed_and_its_open_stream_finishes() {
    let a = Backend::start("one").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .idle_timeout("300ms")
        .start()
        .await;
    let mut h2 = h2_conn(gw.addr()).await;
    let req = || {
        Request::get(format!("http://{}/?delay=800", gw.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // A request that outlasts the idle timeout: the GOAWAY comes while it runs, and it
    // still completes.
    let slow = h2.send_request(req());
    let t0 = tokio::time::Instant::now();
    let got = collect(slow.await.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(t0.elapsed() >= Duration::from_millis(800));
    wait_until("the idle connection closed", || h2.is_closed()).await;
    assert!(
        h2.ready().await.is_err(),
        "no new stream on a closed connection"
    );
}

/// Response trailers reach an HTTP/1.1 client only if it said it takes them (`TE: trailers`):
/// without it, the body comes whole and the trailer fields are dropped.
#[tokio::test]
async fn http11_trailers_are_dropped_for_a_client_that_did_not_ask_for_them() {
    let be = Backend::start("t").await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
    let out = raw(
        gw.addr(),
        b"GET /?trailers=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{out}");
    assert!(lower.contains("with trailers"), "the body is whole: {out}");
    assert!(
        !lower.contains("\r\nx-checksum: abc123\r\n"),
        "no trailer field: {out}"
    );
}

/// A request rouse answers on its own (here 404 for a host it does not serve, and 503 for a
/// revision that holds no one) gets no `100 Continue` first: a client waiting for it never
/// has to send its body.
#[tokio::test]
async fn no_100_continue_when_rouse_answers_first() {
    let be = Backend::start("a").await;
    let gw = Cfg::new()
        .service(
            Svc::new("s").host("a.test").only(
                Rev::new("r")
                    .endpoint(be.addr)
                    .cc(1)
                    .queue(Queue::new().max_requests(0)),
            ),
        )
        .start()
        .await;
    // The only slot is taken, and nobody may wait for it.
    let c = h1_client();
    let addr = gw.addr();
    let busy = tokio::spawn(async move { get(&c, addr, "a.test", "/?delay=5000", &[]).await });
    wait_until("the slot taken", || {
        be.seen.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    for (host, status) in [("other.test", "404"), ("a.test", "503")] {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        // The body is never sent: the answer comes without it, and it is the first thing.
        let out = send_to_end(
            &mut s,
            format!(
                "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{host}: {out}"
        );
        assert!(!out.contains("100 Continue"), "{host}: {out}");
    }
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);
    assert_eq!(be.requests(), 1);
}

/// A client that leaves in the middle of a response gives its slot back at once, and the
/// backend connection that carried it is closed, not pooled for the next request.
#[tokio::test]
async fn a_client_leaving_mid_response_frees_the_slot_and_the_connection_is_not_reused() {
    use http_body_util::BodyExt;
    let be = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr).cc(1))
        .admin()
        .start()
        .await;
    let mut res = download(gw.addr(), 100_000_000).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Some of it, then gone.
    let first = res.body_mut().frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(res);
    wait_for_gauge(
        &gw,
        "rouse_revision_in_flight{service=\"s\",revision=\"r\"}",
        0.0,
    )
    .await;
    // The backend's side was torn down too: its stream ended with the client.
    let seen = be.seen.clone();
    wait_until("the backend's response dropped", || {
        seen.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    // The only slot is free again, and the next request goes on a new backend connection.
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        be.seen
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the abandoned connection was not reused"
    );
}

/// A client's own `X-Forwarded-Proto` (from a load balancer in front) is kept; without one,
/// rouse sets what the client spoke.
#[tokio::test]
async fn x_forwarded_proto_from_the_client_is_kept() {
    let be = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
    let c = h1_client();
    get(&c, gw.addr(), "x", "/lb", &[("x-forwarded-proto", "https")]).await;
    get(&c, gw.addr(), "x", "/direct", &[]).await;
    assert_eq!(be.headers_at("/lb")["x-forwarded-proto"], "https");
    assert_eq!(be.headers_at("/direct")["x-forwarded-proto"], "http");
}
