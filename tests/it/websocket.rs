//! WebSocket through rouse: the upgrade is split and balanced like any request, the tunnel
//! holds its concurrency slot and counts in flight until closed, outlives the request timeout
//! but not the idle timeout, and waits through a cold start.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that answers each text message with "<name>:<message>".
pub(crate) async fn ws_backend(name: &'static str) -> SocketAddr {
    serve_each(move |s| async move {
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
    })
    .await
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

/// A gateway (with admin) whose service `s` has `timeouts` and sends everything to `backend`.
async fn with_timeouts(timeouts: Timeouts, backend: SocketAddr) -> Gateway {
    Cfg::new()
        .admin()
        .service(Svc::single(Rev::new("r").endpoint(backend)).timeouts(timeouts))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_split_and_in_flight_until_close() {
    let (a, b) = (ws_backend("a").await, ws_backend("b").await);
    let gw = Cfg::new()
        .admin()
        .service(Svc::halves(
            Rev::new("ra").endpoint(a),
            Rev::new("rb").endpoint(b),
        ))
        .start()
        .await;
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
    let gw = Cfg::single(Rev::new("r").cc(1).endpoint(a))
        .admin()
        .start()
        .await;
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
    let gw = with_timeouts(Timeouts::new().request("300ms"), a).await;
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
    let gw = with_timeouts(Timeouts::new().idle("200ms"), a).await;
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
    let gw = Cfg::single(Rev::new("r").endpoint(a)).admin().start().await;
    let rev = gw.proxy().table().revisions()[0].clone();
    rev.set_endpoint_addrs(&[]);
    let addr = gw.addr();
    let client = tokio::spawn(async move {
        let mut ws = ws_connect(addr, "x").await;
        ws_echo(&mut ws, "woke").await
    });
    wait_until("the upgrade to be held", || rev.held() == 1).await;
    rev.set_endpoint_addrs(&[a]);
    assert_eq!(client.await.unwrap(), "a:woke");
}

#[tokio::test]
async fn websocket_to_an_h2c_revision_is_refused_clearly() {
    let a = ws_backend("a").await;
    let gw = Cfg::single(Rev::new("r").protocol("h2c").endpoint(a))
        .start()
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

/// A backend that declines the upgrade (426 here) is answered as any response: the client gets
/// the 426, nothing is tunnelled, the slot is freed, and the connection serves the next request.
#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_answer() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr).cc(1))
        .admin()
        .start()
        .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"GET /?status=426 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 426"), "{first}");
    wait_for_gauge(
        &gw,
        "rouse_revision_in_flight{service=\"s\",revision=\"r\"}",
        0.0,
    )
    .await;
    let rest = send_to_end(
        &mut s,
        b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert_eq!(a.requests(), 2);
}

/// A client that half-closes a tunnel (shuts down its sending side) still gets what the
/// backend sends after that, until the backend closes.
#[tokio::test]
async fn a_half_closed_tunnel_still_carries_the_backends_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that switches, reads until the client's end of input, then says goodbye.
    let backend = serve_each(|mut s| async move {
        if head_in(&mut s, &mut Vec::new()).await.is_none() {
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n",
            )
            .await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = s
            .write_all(format!("bye after {} bytes", got.len()).as_bytes())
            .await;
    })
    .await;
    let gw = Cfg::single(Rev::new("r").endpoint(backend)).start().await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the backend's answer after the half-close")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "bye after 5 bytes");
}
