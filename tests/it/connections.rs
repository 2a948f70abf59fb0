//! Client connections: at most `limits.max_connections` open at once per listener. At the
//! limit new connections wait in the listen queue and are served once one closes; the open
//! ones are not disturbed, and the waits are logged and counted.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive `GET /` on `s`: the whole response (chunked, as the backend streams
/// it).
async fn exchange(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n0\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Connects a client that sends a `GET` (with `Connection: close`) to a listener at its limit,
/// once the listener has counted that it waits.
async fn waiting_client(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_for_metric(
        gw,
        "rouse_connection_limit_waits_total{listener=\"http\"}",
        1.0,
    )
    .await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_new_clients_wait_for_a_free_place() {
    let a = Backend::start("a").await;
    let gw = Cfg::single(Rev::new("r").endpoint(a.addr))
        .admin()
        .max_connections(2)
        .start()
        .await;
    // Two keep-alive connections take both places, each with a request answered.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        assert!(exchange(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let m = wait_for_metric(&gw, "rouse_client_connections{listener=\"http\"}", 2.0).await;
    assert_eq!(
        metric(&m, "rouse_client_connections_limit{listener=\"http\"}"),
        2.0
    );
    // A third client is taken into the kernel's queue, not served...
    let mut third = waiting_client(&gw).await;
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "served beyond the limit"
    );
    // ...and served as soon as a place frees; the held connections still work meanwhile.
    assert!(exchange(&mut held[1]).await.starts_with("HTTP/1.1 200"));
    drop(held.remove(0));
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("the waiting client is served once a place frees")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// A WebSocket taken over from a connection is still that client's connection: it keeps its
/// place under the limit until the tunnel ends, so upgraded sessions cannot grow past
/// `limits.max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_keep_their_place_under_the_connection_limit() {
    use crate::websocket::{ws_backend, ws_connect, ws_echo};
    let backend = ws_backend("ws").await;
    let gw = Cfg::single(Rev::new("r").endpoint(backend))
        .admin()
        .max_connections(2)
        .start()
        .await;
    let mut a = ws_connect(gw.addr(), "x").await;
    let mut b = ws_connect(gw.addr(), "x").await;
    assert_eq!(ws_echo(&mut a, "one").await, "ws:one");
    assert_eq!(ws_echo(&mut b, "two").await, "ws:two");
    // Both HTTP exchanges are over; the two sessions still count.
    wait_for_metric(&gw, "rouse_client_connections{listener=\"http\"}", 2.0).await;
    // A third client waits for a place...
    let mut third = waiting_client(&gw).await;
    // ...which the end of a session gives it.
    drop(a);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("the waiting client is served once a session ends")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(ws_echo(&mut b, "still").await, "ws:still");
}

#[test]
fn a_limit_of_zero_is_refused_with_its_key_path() {
    let e = Cfg::single(Rev::new("r").endpoint("127.0.0.1:9"))
        .max_connections(0)
        .yaml();
    let err = Config::parse(&e).unwrap_err().to_string();
    assert!(
        err.contains("limits.max_connections: must be at least 1"),
        "{err}"
    );
}
