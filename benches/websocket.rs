//! WebSocket round trips: a client sends a message and waits for the echo, 5000 times in a row,
//! directly to the echo server and through rouse, in one run. `cargo bench --bench websocket`.

use futures_util::{SinkExt, StreamExt};
use rouse::config::Config;
use rouse::roles::gateway::Gateway;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trips(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://bench/echo", s)
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        let _ = ws.next().await.unwrap().unwrap();
        out.push(t.elapsed());
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let echo = echo_server().await;
        let cfg = Config::parse(&format!(
            "listen: 127.0.0.1:0\nservices:\n  - name: s\n    hosts: [\"*\"]\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions:\n      - {{ name: r, endpoints: [\"{echo}\"] }}\n"
        ))
        .unwrap();
        let gw = Gateway::start(cfg).await.unwrap();
        println!("| path | round trip p50 | p99 |");
        println!("|---|---|---|");
        // Interleaved, three rounds each; the last round of each is reported.
        let mut last = Vec::new();
        for _ in 0..3 {
            for (name, addr) in [("direct", echo), ("through rouse", gw.addr())] {
                let mut d = round_trips(addr, 5000).await;
                d.sort();
                last.push((name, pct(&d, 0.5), pct(&d, 0.99)));
            }
        }
        for (name, p50, p99) in &last[last.len() - 2..] {
            println!("| {name} | {p50:.0} µs | {p99:.0} µs |");
        }
    });
}
