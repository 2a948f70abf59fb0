//! Knative's readiness probe, sent by rouse to every rouse replica: `GET /healthz` for a
//! host of each rule, with `K-Network-Probe: probe` and `K-Network-Hash: override`, dialled
//! to the replica's pod IP on the listener that serves the rule. The Ingress's probe route
//! answers it with the hash of the spec that replica serves (set on the request, echoed by the
//! backend), so a reply carrying the new hash proves the replica serves the new spec.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

/// How long one probe may take, as Knative's prober allows.
const TIMEOUT: Duration = Duration::from_secs(1);
/// First pause after a "not yet", doubling up to [`MAX_PAUSE`]. Knative's prober starts at
/// 50 ms too but goes up to 30 s; rouse stops at 1 s so an Ingress turns Ready within a
/// second of being served.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The replica serves the spec (or its backend does not take part in the protocol).
    Ready,
    /// Not yet, and why.
    NotYet(String),
}

/// Probes `addr` for `host` once.
pub async fn once(addr: SocketAddr, host: &str, hash: &str) -> Outcome {
    match tokio::time::timeout(TIMEOUT, exchange(addr, host)).await {
        Err(_) => Outcome::NotYet(format!("{addr} did not answer within {TIMEOUT:?}")),
        Ok(Err(e)) => Outcome::NotYet(format!("{addr}: {e}")),
        Ok(Ok((status, got))) => judge(status, got.as_deref(), hash, addr),
    }
}

/// Knative's reading of a probe reply: 200 with the expected hash is ready; 200 with another
/// hash, 404 and 503 are "not yet"; 200 without the header and any other status count as ready
/// (a backend that does not echo cannot take part).
fn judge(status: StatusCode, got: Option<&str>, hash: &str, addr: SocketAddr) -> Outcome {
    match (status, got) {
        (StatusCode::OK, Some(h)) if h == hash => Outcome::Ready,
        (StatusCode::OK, Some(h)) => {
            Outcome::NotYet(format!("{addr} still serves the spec with hash {h}"))
        }
        (StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE, _) => {
            Outcome::NotYet(format!("{addr} answered {status}"))
        }
        _ => Outcome::Ready,
    }
}

async fn exchange(
    addr: SocketAddr,
    host: &str,
) -> Result<(StatusCode, Option<String>), Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Stopped however this exchange ends, the timeout's drop included.
    let conn = AbortOnDropHandle::new(tokio::spawn(conn));
    let req = Request::get("/healthz")
        .header(header::HOST, host)
        .header(header::USER_AGENT, "Knative-Ingress-Probe")
        .header("k-network-probe", "probe")
        .header("k-network-hash", "override")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await;
    drop(conn);
    let res = res?;
    let got = res
        .headers()
        .get("k-network-hash")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((res.status(), got))
}

/// Probes every `(addr, host)` until each has answered ready, pausing between tries of one
/// target from 50 ms up to 1 s. Runs until done or dropped.
pub async fn all(targets: Vec<(SocketAddr, String)>, hash: String) {
    let each = targets.into_iter().map(|(addr, host)| {
        let hash = hash.clone();
        async move {
            let mut pause = FIRST_PAUSE;
            loop {
                match once(addr, &host, &hash).await {
                    Outcome::Ready => return,
                    Outcome::NotYet(why) => {
                        tracing::debug!(%addr, %host, "ingress probe: {why}");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    });
    futures_util::future::join_all(each).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_knative_reads_them() {
        let a: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(judge(StatusCode::OK, Some("h1"), "h1", a), Outcome::Ready);
        assert!(matches!(
            judge(StatusCode::OK, Some("h0"), "h1", a),
            Outcome::NotYet(w) if w.contains("hash h0")
        ));
        assert!(matches!(
            judge(StatusCode::NOT_FOUND, None, "h1", a),
            Outcome::NotYet(_)
        ));
        assert!(matches!(
            judge(StatusCode::SERVICE_UNAVAILABLE, Some("h1"), "h1", a),
            Outcome::NotYet(_)
        ));
        assert_eq!(judge(StatusCode::OK, None, "h1", a), Outcome::Ready);
        assert_eq!(
            judge(StatusCode::BAD_GATEWAY, None, "h1", a),
            Outcome::Ready
        );
    }
}
