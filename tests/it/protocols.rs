//! Real protocol traffic through rouse: WebSocket, gRPC (HTTP/2 with trailers), 100-continue.

use crate::support::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

// ---------- WebSocket ----------

/// A WebSocket server that answers each text message with "<name>:<message>".
pub(crate) async fn ws_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && ws.send(Message::text(format!("{name}:{t}"))).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

pub(crate) async fn ws_connect(gw: SocketAddr, host: &str) -> Ws {
    let s = TcpStream::connect(gw).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(format!("ws://{host}/chat"), s)
        .await
        .expect("websocket handshake through rouse");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

pub(crate) async fn ws_echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => t.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

fn ws_service(revs: &[(&str, u32, SocketAddr)], extra: &str) -> String {
    let n = revs.len() as u32;
    let traffic: Vec<String> = revs
        .iter()
        .enumerate()
        .map(|(i, (r, _, _))| {
            let p = if i == 0 {
                100 - 100 / n * (n - 1)
            } else {
                100 / n
            };
            format!("{{ revision: {r}, percent: {p} }}")
        })
        .collect();
    let defs: String = revs
        .iter()
        .map(|(r, cc, a)| {
            format!("      - {{ name: {r}, container_concurrency: {cc}, endpoints: [\"{a}\"] }}\n")
        })
        .collect();
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n{extra}    traffic: [{}]\n    revisions:\n{defs}",
        traffic.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_split_and_in_flight_until_close() {
    let (a, b) = (ws_backend("a").await, ws_backend("b").await);
    let gw = gateway(&ws_service(&[("ra", 0, a), ("rb", 0, b)], "")).await;
    let mut seen = std::collections::HashMap::new();
    let mut open = Vec::new();
    for i in 0..40 {
        let mut ws = ws_connect(gw.addr(), "chat.local").await;
        let first = ws_echo(&mut ws, &format!("hello {i}")).await;
        let backend = first.split(':').next().unwrap().to_owned();
        assert_eq!(first, format!("{backend}:hello {i}"));
        // Every later message of a connection goes to the same backend.
        for j in 0..3 {
            assert_eq!(
                ws_echo(&mut ws, &format!("m{j}")).await,
                format!("{backend}:m{j}")
            );
        }
        *seen.entry(backend).or_insert(0) += 1;
        open.push(ws);
    }
    assert!(seen.get("a").copied().unwrap_or(0) >= 8, "{seen:?}");
    assert!(seen.get("b").copied().unwrap_or(0) >= 8, "{seen:?}");
    // Open websockets are in flight.
    let m = metrics(&gw).await;
    let in_flight = metric(
        &m,
        "rouse_revision_in_flight{service=\"s\",revision=\"ra\"}",
    ) + metric(
        &m,
        "rouse_revision_in_flight{service=\"s\",revision=\"rb\"}",
    );
    assert_eq!(in_flight, 40.0);
    for mut ws in open {
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    let mut after = 1.0;
    for _ in 0..50 {
        let m = metrics(&gw).await;
        after = metric(
            &m,
            "rouse_revision_in_flight{service=\"s\",revision=\"ra\"}",
        ) + metric(
            &m,
            "rouse_revision_in_flight{service=\"s\",revision=\"rb\"}",
        );
        if after == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(after, 0.0, "closed websockets leave in-flight");
    assert!(
        metric(
            &metrics(&gw).await,
            "rouse_requests_total{service=\"s\",revision=\"ra\",code=\"1xx\"}"
        ) >= 8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_holds_its_concurrency_slot_until_closed() {
    let a = ws_backend("a").await;
    let gw = gateway(&ws_service(&[("r", 1, a)], "")).await;
    let mut first = ws_connect(gw.addr(), "x").await;
    assert_eq!(ws_echo(&mut first, "one").await, "a:one");
    // The only slot is taken: a second websocket is held until the first closes.
    let addr = gw.addr();
    let second = tokio::spawn(async move {
        let mut ws = ws_connect(addr, "x").await;
        ws_echo(&mut ws, "second").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second websocket must wait for the slot"
    );
    assert_eq!(gw.proxy().table().revisions()[0].held(), 1);
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    assert_eq!(second.await.unwrap(), "a:second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_outlives_the_request_timeout() {
    let a = ws_backend("a").await;
    let gw = gateway(&ws_service(
        &[("r", 0, a)],
        "    timeouts: { request: 300ms }\n",
    ))
    .await;
    let mut ws = ws_connect(gw.addr(), "x").await;
    // Well past the 300 ms request timeout, the tunnel keeps working.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ws_echo(&mut ws, &format!("t{i}")).await, format!("a:t{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_timeout_closes_the_tunnel() {
    let a = ws_backend("a").await;
    let gw = gateway(&ws_service(
        &[("r", 0, a)],
        "    timeouts: { idle: 200ms }\n",
    ))
    .await;
    let mut ws = ws_connect(gw.addr(), "x").await;
    assert_eq!(ws_echo(&mut ws, "hi").await, "a:hi");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.send(Message::text("late")).await;
        ws.next().await
    })
    .await
    .expect("closed tunnel is noticed");
    assert!(!matches!(next, Some(Ok(Message::Text(_)))), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_a_cold_start() {
    let a = ws_backend("a").await;
    let gw = gateway(&ws_service(&[("r", 0, a)], "")).await;
    let rev = gw.proxy().table().revisions()[0].clone();
    rev.set_endpoint_addrs(&[]);
    let addr = gw.addr();
    let client = tokio::spawn(async move {
        let mut ws = ws_connect(addr, "x").await;
        ws_echo(&mut ws, "woke").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rev.held(), 1);
    rev.set_endpoint_addrs(&[a]);
    assert_eq!(client.await.unwrap(), "a:woke");
}

#[tokio::test]
async fn websocket_to_an_h2c_revision_is_refused_clearly() {
    let a = ws_backend("a").await;
    let gw = gateway(&format!(
        "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, protocol: h2c, endpoints: [\"{a}\"] }}\n"
    ))
    .await;
    let s = TcpStream::connect(gw.addr()).await.unwrap();
    let err = tokio_tungstenite::client_async("ws://x/", s)
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(res) = err else {
        panic!("expected an HTTP error, got {err:?}")
    };
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("set its protocol to http1"), "{body}");
}

// ---------- gRPC (wire level over h2c) ----------

type GrpcBody = BoxBody<Bytes, Infallible>;

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Splits complete gRPC messages off the front of `buf`.
fn unframe(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = (&buf[1..5]).get_u32() as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// An echo service: each request message comes back as "<name>:<message>" as soon as it
/// arrives (bidirectional streaming), then trailers. `x-grpc-status` asks for an error status.
async fn grpc_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let status = req
                        .headers()
                        .get("x-grpc-status")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_else(|| "0".into());
                    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
                    tokio::spawn(async move {
                        let mut incoming = req.into_body();
                        let mut buf = BytesMut::new();
                        while let Some(Ok(f)) = incoming.frame().await {
                            if let Ok(d) = f.into_data() {
                                buf.extend_from_slice(&d);
                                for m in unframe(&mut buf) {
                                    let reply = format!("{name}:{}", String::from_utf8_lossy(&m));
                                    let _ = tx.send_data(frame(reply.as_bytes())).await;
                                }
                            }
                        }
                        let mut t = HeaderMap::new();
                        t.insert("grpc-status", status.parse().unwrap());
                        if status != "0" {
                            t.insert("grpc-message", "not found".parse().unwrap());
                        }
                        let _ = tx.send_trailers(t).await;
                    });
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body.boxed())
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn grpc_conn(gw: SocketAddr) -> hyper::client::conn::http2::SendRequest<GrpcBody> {
    let io = TokioIo::new(TcpStream::connect(gw).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A streaming call: returns the sender for request messages and the response.
async fn grpc_call(
    send: &mut hyper::client::conn::http2::SendRequest<GrpcBody>,
    status: &str,
) -> (
    http_body_util::channel::Sender<Bytes, Infallible>,
    Response<Incoming>,
) {
    let (tx, body) = Channel::<Bytes, Infallible>::new(4);
    let req = Request::post("http://grpc.local/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-grpc-status", status)
        .body(body.boxed())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    (tx, res)
}

/// Reads the next message or, at the end, the trailers.
async fn grpc_next(body: &mut Incoming, buf: &mut BytesMut) -> Result<String, HeaderMap> {
    loop {
        if let Some(m) = unframe(buf).into_iter().next() {
            return Ok(String::from_utf8_lossy(&m).into_owned());
        }
        let f = body
            .frame()
            .await
            .expect("stream ended without trailers")
            .unwrap();
        match f.into_data() {
            Ok(d) => buf.extend_from_slice(&d),
            Err(f) => return Err(f.into_trailers().unwrap()),
        }
    }
}

fn grpc_service(revs: &[(&str, u32, SocketAddr)]) -> String {
    ws_service(revs, "").replace(
        "container_concurrency",
        "protocol: h2c, container_concurrency",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_keeps_trailers_and_stays_on_its_backend() {
    let (a, b) = (grpc_backend("a").await, grpc_backend("b").await);
    let gw = gateway(&grpc_service(&[("ra", 0, a), ("rb", 0, b)])).await;
    let mut send = grpc_conn(gw.addr()).await;
    let mut per_backend = std::collections::HashMap::new();
    for call in 0..20 {
        let (mut tx, res) = grpc_call(&mut send, "0").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        let mut body = res.into_body();
        let mut buf = BytesMut::new();
        let mut backend = None;
        for i in 0..3 {
            // Each reply arrives before the next message is sent: true bidirectional streaming.
            tx.send_data(frame(format!("c{call}m{i}").as_bytes()))
                .await
                .unwrap();
            let reply = grpc_next(&mut body, &mut buf).await.unwrap();
            let (who, what) = reply.split_once(':').unwrap();
            assert_eq!(what, format!("c{call}m{i}"));
            assert_eq!(
                *backend.get_or_insert(who.to_owned()),
                who,
                "stream moved backends"
            );
        }
        drop(tx);
        let trailers = grpc_next(&mut body, &mut buf).await.unwrap_err();
        assert_eq!(trailers["grpc-status"], "0");
        *per_backend.entry(backend.unwrap()).or_insert(0) += 1;
    }
    // 20 streams on one client connection were balanced per stream across the 50/50 split.
    assert!(per_backend.len() == 2, "{per_backend:?}");
}

#[tokio::test]
async fn grpc_error_status_passes_through() {
    let a = grpc_backend("a").await;
    let gw = gateway(&grpc_service(&[("r", 0, a)])).await;
    let mut send = grpc_conn(gw.addr()).await;
    let (mut tx, res) = grpc_call(&mut send, "5").await;
    tx.send_data(frame(b"who")).await.unwrap();
    drop(tx);
    let mut body = res.into_body();
    let mut buf = BytesMut::new();
    assert_eq!(grpc_next(&mut body, &mut buf).await.unwrap(), "a:who");
    let trailers = grpc_next(&mut body, &mut buf).await.unwrap_err();
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_held_during_a_cold_start_succeeds() {
    let a = grpc_backend("a").await;
    let gw = gateway(&grpc_service(&[("r", 0, a)])).await;
    let rev = gw.proxy().table().revisions()[0].clone();
    rev.set_endpoint_addrs(&[]);
    let mut send = grpc_conn(gw.addr()).await;
    let call = tokio::spawn(async move {
        let (mut tx, res) = grpc_call(&mut send, "0").await;
        tx.send_data(frame(b"cold")).await.unwrap();
        drop(tx);
        let mut body = res.into_body();
        let mut buf = BytesMut::new();
        let reply = grpc_next(&mut body, &mut buf).await.unwrap();
        let trailers = grpc_next(&mut body, &mut buf).await.unwrap_err();
        (reply, trailers["grpc-status"].to_str().unwrap().to_owned())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rev.held(), 1);
    rev.set_endpoint_addrs(&[a]);
    assert_eq!(call.await.unwrap(), ("a:cold".to_owned(), "0".to_owned()));
}

// ---------- HTTP/1.1 details ----------

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let be = Backend::start("a").await;
    let gw = gateway(&single_revision("127.0.0.1:0", be.addr)).await;
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
    let gw = gateway(&single_revision("127.0.0.1:0", be.addr)).await;
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
