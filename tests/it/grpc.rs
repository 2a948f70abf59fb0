//! gRPC through rouse (wire level, over h2c): bidirectional streams stay on one backend and
//! keep their trailers, error statuses pass through, and a call waits through a cold start.

use crate::support::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

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
    serve_each(move |s| async move {
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
    })
    .await
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

/// Revision `name` speaking h2c to the one endpoint `addr`.
fn h2c(name: &str, addr: SocketAddr) -> Rev {
    Rev::new(name).protocol("h2c").endpoint(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_keeps_trailers_and_stays_on_its_backend() {
    let (a, b) = (grpc_backend("a").await, grpc_backend("b").await);
    let gw = Cfg::new()
        .admin()
        .service(Svc::halves(h2c("ra", a), h2c("rb", b)))
        .start()
        .await;
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
    let gw = Cfg::single(h2c("r", a)).admin().start().await;
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
    let gw = Cfg::single(h2c("r", a)).admin().start().await;
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
    wait_until("the call to be held", || rev.held() == 1).await;
    rev.set_endpoint_addrs(&[a]);
    assert_eq!(call.await.unwrap(), ("a:cold".to_owned(), "0".to_owned()));
}

/// A unary `grpc.health.v1.Health/Check` call made by tonic, a gRPC client of its own, through
/// rouse at `gw` with `:authority` `authority`; returns the status the client reports.
async fn tonic_call(gw: SocketAddr, authority: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gw}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    client
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }),
            http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            codec,
        )
        .await
        .expect_err("rouse answers this call itself, with a failure")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rouse_failures_reach_grpc_clients_as_statuses() {
    // A backend that accepts connections and never speaks: the HTTP/2 handshake hangs.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = Cfg::new()
        .admin()
        .service(
            Svc::new("dead")
                .host("dead.test")
                .only(h2c("down", refusing_addr())),
        )
        .service(
            Svc::new("slow")
                .host("slow.test")
                .timeouts(Timeouts::new().response_start("300ms"))
                .only(h2c("mute", silent_addr)),
        )
        .start()
        .await;
    // Refused connections: UNAVAILABLE, which gRPC clients may retry; the reason is kept.
    let s = tonic_call(gw.addr(), "dead.test").await;
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    assert!(s.message().contains("refused"), "{s:?}");
    assert_eq!(s.metadata().get("rouse-error").unwrap(), "connect-failed");
    // rouse's own deadline: DEADLINE_EXCEEDED.
    let s = tonic_call(gw.addr(), "slow.test").await;
    assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{s:?}");
    assert!(s.message().contains("response_start"), "{s:?}");
    // A host rouse does not serve: UNIMPLEMENTED, as for an unknown service.
    let s = tonic_call(gw.addr(), "nobody.test").await;
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
    assert!(s.message().contains("nobody.test"), "{s:?}");
    // The same failures still count by their code.
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "rouse_unrouted_requests_total{reason=\"no_service\"}"),
        1.0
    );
}

#[tokio::test]
async fn other_http2_clients_still_get_text_answers() {
    let gw = Cfg::single(h2c("down", refusing_addr())).start().await;
    // Over HTTP/2 the host is the authority; a `host` header that differed would be refused.
    let host = gw.addr().to_string();
    let got = get(
        &h2_client(),
        gw.addr(),
        &host,
        "/",
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("rouse-error"), "connect-failed");
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert!(got.body.contains("refused"), "{}", got.body);
}
