//! rouse's own HTTP/1.1 upstream connection, against backends that answer with scripted bytes:
//! every way a response can be framed, what makes a connection unfit for another request,
//! malformed answers, what goes on the wire to the backend, and a backend that answers while
//! the request body is still arriving.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that answers every request head with the same bytes, closing the connection
/// after each answer when `close` is set; it counts connections and keeps each request head.
struct Scripted {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn scripted(answer: Vec<u8>, close: bool) -> Scripted {
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (conns.clone(), heads.clone());
    let answer = Arc::new(answer);
    let addr = serve_each(move |mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        let (h, answer) = (h.clone(), answer.clone());
        async move {
            let mut buf = Vec::new();
            loop {
                let Some(end) = head_in(&mut s, &mut buf).await else {
                    return;
                };
                h.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                buf.drain(..end);
                if s.write_all(&answer).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    Scripted { addr, conns, heads }
}

/// Every framing a backend may use reaches the client whole, and the connection is used again
/// exactly when the answer allows it.
#[tokio::test]
async fn every_response_framing_reaches_the_client_and_reuse_follows_the_answer() {
    // (what the backend answers, whether it closes after it, connections for two requests)
    let cases: [(&str, bool, usize); 9] = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            false,
            1,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            false,
            1,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nx-trailer: t\r\n\r\n",
            false,
            1,
        ),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            false,
            1,
        ),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
            false,
            1,
        ),
        // The body runs to the connection's end, which cannot carry another request.
        ("HTTP/1.1 200 OK\r\n\r\nhello", true, 2),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nhello",
            true,
            2,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
            true,
            2,
        ),
        ("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello", true, 2),
    ];
    for (answer, close, conns) in cases {
        let be = scripted(answer.as_bytes().to_vec(), close).await;
        let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
        let c = h1_client();
        for i in 0..2 {
            let got = get(&c, gw.addr(), "x", "/", &[]).await;
            assert_eq!(got.status, StatusCode::OK, "{answer:?} #{i}: {}", got.body);
            assert_eq!(got.body, "hello", "{answer:?} #{i}");
            assert_eq!(got.version, http::Version::HTTP_11, "{answer:?}");
            // Hop-by-hop fields are the backend's own, never the client's.
            assert!(got.headers.get("connection").is_none(), "{answer:?}");
        }
        assert_eq!(be.heads.lock().unwrap().len(), 2, "{answer:?}");
        assert_eq!(be.conns.load(Ordering::SeqCst), conns, "{answer:?}");
    }
}

/// Bodies that must not be read: after `HEAD`, and in `204` and `304` answers, whatever their
/// `Content-Length` says, and an empty one; the connection carries the next request, and the
/// answer's own fields (kept as the backend wrote them until the client's writer takes them)
/// reach the client every time.
#[tokio::test]
async fn answers_without_a_body_leave_the_connection_ready() {
    for (method, answer) in [
        ("HEAD", "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        ("GET", "HTTP/1.1 204 No Content\r\n\r\n"),
        (
            "GET",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\n\r\n",
        ),
        (
            "HEAD",
            "HTTP/1.1 200 OK\r\nx-kept: head\r\ncontent-length: 1000\r\n\r\n",
        ),
        ("GET", "HTTP/1.1 204 No Content\r\nx-kept: 204\r\n\r\n"),
        (
            "GET",
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nx-kept: 304\r\n\r\n",
        ),
        (
            "GET",
            "HTTP/1.1 200 OK\r\nx-kept: empty\r\ncontent-length: 0\r\n\r\n",
        ),
    ] {
        let be = scripted(answer.as_bytes().to_vec(), false).await;
        let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
        let c = h1_client();
        for _ in 0..3 {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{}/", gw.addr()))
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = tokio::time::timeout(Duration::from_secs(5), c.request(req))
                .await
                .expect("answered")
                .unwrap();
            assert!(res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED);
            if let Some(at) = answer.find("x-kept: ") {
                let want = &answer[at + 8..at + answer[at..].find('\r').unwrap()];
                assert_eq!(res.headers()["x-kept"], want, "{method} {answer:?}");
            }
            if answer.contains("ETag") {
                assert_eq!(res.headers()["etag"], "\"v1\"", "{answer:?}");
            }
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty(), "{answer:?}");
        }
        assert_eq!(be.conns.load(Ordering::SeqCst), 1, "{method} {answer:?}");
    }
}

/// A response head rouse cannot trust is answered 502 `upstream-failed`, saying what was
/// wrong, and its connection is never used again.
#[tokio::test]
async fn malformed_answers_get_502_naming_the_fault_and_drop_the_connection() {
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(70 << 10)
    );
    let cases: Vec<(String, &str)> = vec![
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello".into(),
            "invalid Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello".into(),
            "invalid Content-Length",
        ),
        ("HTTP/1.1 2000 OK\r\n\r\n".into(), "malformed response head"),
        (
            "SSH-2.0-OpenSSH_9.2\r\n\r\n".into(),
            "malformed response head",
        ),
        (
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n".into(),
            "header name",
        ),
        (huge, "larger than 64 KiB"),
        (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n".into(),
            "asked for no upgrade",
        ),
    ];
    for (answer, why) in cases {
        let be = scripted(answer.into_bytes(), false).await;
        let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
        let c = h1_client();
        for _ in 0..2 {
            let got = get(&c, gw.addr(), "x", "/", &[]).await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{why}: {}", got.body);
            assert_eq!(got.header("rouse-error"), "upstream-failed", "{why}");
            assert!(got.body.contains(why), "{why}: {}", got.body);
        }
        assert_eq!(be.conns.load(Ordering::SeqCst), 2, "{why}: never reused");
    }
}

/// A backend that closes before answering at all is a 502 too, saying so.
#[tokio::test]
async fn a_backend_that_closes_unanswered_gets_a_502_that_says_so() {
    let be = scripted(Vec::new(), true).await;
    let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(
        got.body.contains("closed the connection before answering"),
        "{}",
        got.body
    );
}

/// A body cut short, or whose chunks break their framing, fails the client's stream (the
/// client never sees a truncated body as complete), and the connection is dropped.
#[tokio::test]
async fn a_broken_body_fails_the_clients_stream() {
    for (answer, close) in [
        ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", true),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello",
            true,
        ),
    ] {
        let be = scripted(answer.as_bytes().to_vec(), close).await;
        let gw = Cfg::single(Rev::new("r").endpoint(be.addr)).start().await;
        for _ in 0..2 {
            // A client of its own each time: rouse closes the connection of a broken stream.
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                h1_client().request(
                    Request::get(format!("http://{}/", gw.addr()))
                        .header("host", "x")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                ),
            )
            .await
            .expect("answered or closed");
            // A body broken before its first byte ends the connection before the head went
            // out (the server side writes the head with the first data); a later break, after
            // it. Either way the client must not be handed a whole-looking response.
            let Ok(res) = res else { continue };
            assert_eq!(res.status(), StatusCode::OK);
            let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
                .await
                .expect("the stream ends");
            assert!(
                body.is_err(),
                "{answer:?}: a broken body must not look whole"
            );
        }
        assert_eq!(
            be.conns.load(Ordering::SeqCst),
            2,
            "{answer:?}: never reused"
        );
    }
}

/// What reaches the backend: the request line with the path and query, the client's fields in
/// their order (repeated ones too), the forwarding fields, and the body framed as it must be:
/// by its length, or in chunks, with trailers.
#[tokio::test]
async fn the_backend_gets_the_clients_request_on_the_wire() {
    let be = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        false,
    )
    .await;
    let body_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = body_seen.clone();
    // A second backend that keeps each request whole (head and body), for the bodies.
    let whole = serve_each(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            // Enough for one request: its head and a body that is `hello`, or chunks of it and
            // their terminator.
            let whole = |a: &[u8]| {
                a.ends_with(b"hello")
                    || (a.windows(5).any(|w| w == b"hello") && a.ends_with(b"\r\n\r\n"))
            };
            while !whole(&all) {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => all.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&all).into_owned());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = Cfg::new()
        .service(
            Svc::new("a")
                .host("a")
                .only(Rev::new("r").endpoint(be.addr)),
        )
        .service(Svc::new("b").host("b").only(Rev::new("r").endpoint(whole)))
        .start()
        .await;
    let answer = raw(
        gw.addr(),
        b"GET /p/q?x=1&y=%20 HTTP/1.1\r\nHost: a\r\nX-Many: 1\r\nAccept: */*\r\nX-Many: 2\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = be.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("GET /p/q?x=1&y=%20 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nhost: a\r\n"), "{head}");
    assert!(head.contains("\r\nx-many: 1\r\nx-many: 2\r\n"), "{head}");
    assert!(head.contains("\r\naccept: */*\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
    assert!(!head.contains("content-length") && !head.contains("transfer-encoding"));

    // A body of known length goes out with that length.
    let answer = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A chunked one goes out chunked, its trailers included.
    let answer = raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = body_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].contains("\r\ncontent-length: 5\r\n"), "{}", seen[0]);
    assert!(seen[0].ends_with("\r\n\r\nhello"), "{}", seen[0]);
    assert!(!seen[0].contains("transfer-encoding"), "{}", seen[0]);
    assert!(
        seen[1].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        seen[1]
    );
    assert!(!seen[1].contains("content-length"), "{}", seen[1]);
    assert!(
        seen[1].ends_with("\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n"),
        "{}",
        seen[1]
    );
}

/// A backend that answers as soon as the head is in and echoes the body as it arrives: the
/// request body keeps flowing to it while its answer streams back, piece by piece (an exchange
/// that sent the whole body before reading any answer would never finish here).
#[tokio::test]
async fn a_backend_answering_while_the_body_arrives_gets_the_rest_of_it() {
    let addr = serve_each(|mut s| async move {
        let mut chunk = [0u8; 1024];
        let mut head = Vec::new();
        let Some(end) = head_in(&mut s, &mut head).await else {
            return;
        };
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        // Body bytes that came with the head are echoed first.
        let mut pending = head.split_off(end);
        let mut got = 0;
        loop {
            if !pending.is_empty() {
                got += pending.len();
                let piece = format!(
                    "{:x}\r\n{}\r\n",
                    pending.len(),
                    String::from_utf8_lossy(&pending)
                );
                let _ = s.write_all(piece.as_bytes()).await;
                pending.clear();
            }
            if got >= 10 {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => pending.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr)).start().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut read_until = async |s: &mut tokio::net::TcpStream, what: &[u8]| {
        while !seen.windows(what.len()).any(|w| w == what) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {:?} within 5 s: {}",
                        String::from_utf8_lossy(what),
                        String::from_utf8_lossy(&seen)
                    )
                })
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
    };
    // The first half comes back before the client sends the second.
    read_until(&mut s, b"12345").await;
    s.write_all(b"67890").await.unwrap();
    read_until(&mut s, b"67890").await;
    read_until(&mut s, b"\r\n0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}

/// A backend that refuses a request before reading its body (`413`, then closes its side
/// after draining) is heard: the client gets the `413`, not a 502.
#[tokio::test]
async fn an_answer_before_the_body_is_read_reaches_the_client() {
    let addr = serve_each(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!")
            .await;
        let _ = s.shutdown().await;
        // Drain what the proxy still sends, as servers do before they close, so no reset
        // overtakes the answer.
        let mut sink = [0u8; 65536];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    })
    .await;
    let gw = Cfg::single(Rev::new("r").endpoint(addr)).start().await;
    let c = h1_client();
    let req = Request::post(format!("http://{}/", gw.addr()))
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), send(&c, req))
        .await
        .expect("answered");
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.body);
    assert_eq!(got.body, "too big!");
}
