//! Readiness probes of an application (TCP connect, HTTP GET, gRPC health), run as Knative's
//! queue-proxy runs them: on demand, when a probe
//! request asks, never on a background timer, so a ready pod costs no CPU between probes.
//!
//! Concurrent callers share one run ([`Prober::check`]): the kubelet, activators and the
//! ingress prober can all ask at once, and the application sees one probe, not one per asker.
//! A probe with `periodSeconds: 0` is "aggressive": it retries every 50 ms (100 ms per attempt)
//! for up to 10 s, so a starting pod is seen ready within 50 ms of being so, without waiting a
//! kubelet period.

use bytes::{Buf, Bytes};
use http::Request;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often an aggressive probe retries.
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(50);
/// How long one aggressive attempt may take.
pub const AGGRESSIVE_ATTEMPT: Duration = Duration::from_millis(100);
/// How long an aggressive probe keeps retrying before it reports not ready.
pub const AGGRESSIVE_FOR: Duration = Duration::from_secs(10);

/// The `User-Agent` of HTTP probes, which applications already treat as the kubelet's.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.33";

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection is accepted.
    Tcp(SocketAddr),
    /// `GET path` answers with a status in `ready` (Kubernetes: 200–399).
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// `Host` header value (the probe's `host`, else the address).
        host: String,
        /// Path and query.
        path: String,
        /// Request headers besides `Host` and `Connection: close`; a later one replaces an
        /// earlier one of the same name.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The statuses that mean ready.
        ready: std::ops::Range<u16>,
    },
    /// `grpc.health.v1.Health/Check` answers `SERVING`.
    Grpc {
        /// Where to connect (h2c).
        addr: SocketAddr,
        /// The service name asked about ("" = the whole server).
        service: String,
    },
}

/// One probe with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What it checks.
    pub check: Check,
    /// `periodSeconds: 0`: retry quickly until ready, for up to 10 s.
    pub aggressive: bool,
    /// Time allowed for one attempt (not aggressive).
    pub timeout: Duration,
    /// Consecutive passes needed.
    pub success_threshold: u32,
}

impl Probe {
    /// Runs the probe to a verdict: one attempt, or (aggressive) attempts until it passes
    /// `success_threshold` times in a row or 10 s have gone by.
    pub async fn run(&self) -> bool {
        if !self.aggressive {
            let mut passes = 0;
            // Kubernetes' successThreshold counts kubelet periods; within one call the
            // attempts follow each other directly.
            while passes < self.success_threshold {
                if !matches!(
                    tokio::time::timeout(self.timeout, self.check.once()).await,
                    Ok(true)
                ) {
                    return false;
                }
                passes += 1;
            }
            return true;
        }
        let until = Instant::now() + AGGRESSIVE_FOR;
        let mut passes = 0;
        loop {
            let ok = matches!(
                tokio::time::timeout(AGGRESSIVE_ATTEMPT, self.check.once()).await,
                Ok(true)
            );
            passes = if ok { passes + 1 } else { 0 };
            if passes >= self.success_threshold {
                return true;
            }
            if Instant::now() + AGGRESSIVE_INTERVAL > until {
                return false;
            }
            tokio::time::sleep(AGGRESSIVE_INTERVAL).await;
        }
    }
}

impl Check {
    /// One attempt, without a time limit of its own.
    pub async fn once(&self) -> bool {
        match self {
            Check::Tcp(a) => TcpStream::connect(a).await.is_ok(),
            Check::Http {
                addr,
                host,
                path,
                headers,
                ready,
            } => http_get(*addr, host, path, headers)
                .await
                .is_ok_and(|status| ready.contains(&status)),
            Check::Grpc { addr, service } => grpc_health(*addr, service).await.unwrap_or(false),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Attempt = Result<bool, BoxError>;

/// Most of a probe reply's body that is read before hanging up.
const BODY_READ: usize = 64 << 10;

/// One `GET`; returns the status. The (small) body is read up to the server's close first:
/// hanging up mid-response makes many servers log a broken pipe for every probe.
async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<u16, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    // Kept, not dropped with the exchange, so that the server's close can be awaited below.
    let conn = tokio::spawn(conn.without_shutdown());
    let mut req = Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "close")
        .body(Full::new(Bytes::new()))?;
    for (k, v) in headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let res = send.send_request(req).await?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut read = 0;
    while read < BODY_READ {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, Buf::remaining),
            _ => break,
        }
    }
    drop(body);
    // Wait, briefly, for the server to close the connection as `Connection: close` asks: until
    // it does, the probe may still count as a request in flight on the server's side, and
    // requests sent the moment the probe passes would find it there (one over a concurrency
    // limit). A server that keeps the connection open is ready all the same.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Ok(Ok(parts)) = conn.await {
            let mut tcp = parts.io.into_inner();
            let mut scratch = [0u8; 256];
            while matches!(tcp.read(&mut scratch).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    Ok(status)
}

/// How long an HTTP probe waits for the server to close the connection after the answer.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 1 = SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `ServingStatus.SERVING`.
pub const SERVING: i32 = 1;

/// Frames a protobuf message as one gRPC message (uncompressed).
pub fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

async fn grpc_health(addr: SocketAddr, service: &str) -> Attempt {
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, PROBE_USER_AGENT)
        .body(Full::new(grpc_frame(&HealthCheckRequest {
            service: service.to_owned(),
        })))?;
    let res = send.send_request(req).await?;
    if !res.status().is_success() {
        return Ok(false);
    }
    let head_status = res.headers().get("grpc-status").cloned();
    let body = res.into_body().collect().await?;
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    if status.as_ref().map(|v| v.as_bytes()) != Some(b"0") {
        return Ok(false);
    }
    let mut data = body.to_bytes();
    if data.len() < 5 {
        return Ok(false);
    }
    data.advance(5);
    let msg = <HealthCheckResponse as prost::Message>::decode(data)?;
    Ok(msg.status == SERVING)
}

/// Runs a set of probes on demand and shares each run among the callers that asked during it.
#[derive(Debug)]
pub struct Prober {
    probes: Arc<[Probe]>,
    running: Mutex<Option<watch::Receiver<Option<bool>>>>,
    runs: AtomicU64,
    calls: AtomicU64,
}

impl Prober {
    /// A prober for `probes` (every one must pass).
    pub fn new(probes: Vec<Probe>) -> Prober {
        Prober {
            probes: probes.into(),
            running: Mutex::new(None),
            runs: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Probe runs started so far (callers that joined a run are not counted).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Checks asked for so far, whether they started a run or joined one.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// True if every probe passes. Joins the run in progress if there is one. The run itself
    /// is a task of its own, so a caller that goes away does not cancel it for the others.
    pub async fn check(self: &Arc<Self>) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rx = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match &*running {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *running = Some(rx.clone());
                    self.runs.fetch_add(1, Ordering::Relaxed);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let ok = me.run_all().await;
                        // Cleared before the verdict is sent: whoever asks after seeing it
                        // starts a fresh run rather than reusing an old answer.
                        *me.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        let _ = tx.send(Some(ok));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn run_all(&self) -> bool {
        match &*self.probes {
            [] => true,
            [one] => one.run().await,
            many => {
                let mut set = tokio::task::JoinSet::new();
                for p in many {
                    let p = p.clone();
                    set.spawn(async move { p.run().await });
                }
                let mut all = true;
                while let Some(r) = set.join_next().await {
                    all &= r.unwrap_or(false);
                }
                all
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that answers every connection's request with `200`, then either keeps the
    /// connection open or, 20 ms later, marks `closed` and closes it.
    async fn answering(close: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    if close {
                        // Still busy with the request for a moment, as a server is until its
                        // handler has returned.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        drop(s);
                    } else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                });
            }
        });
        (addr, closed)
    }

    fn http(addr: SocketAddr) -> Check {
        Check::Http {
            addr,
            host: addr.to_string(),
            path: "/".into(),
            headers: Vec::new(),
            ready: 200..400,
        }
    }

    #[tokio::test]
    async fn http_check_waits_for_the_close_and_is_ready_without_one() {
        // A server that closes, as `Connection: close` asks, has finished with the probe by the
        // time the check passes.
        let (closing, closed) = answering(true).await;
        assert!(http(closing).once().await);
        assert!(closed.load(std::sync::atomic::Ordering::SeqCst));
        // One that keeps the connection open is ready all the same, after the grace.
        let (open, _) = answering(false).await;
        let t0 = Instant::now();
        assert!(http(open).once().await);
        assert!(t0.elapsed() >= CLOSE_GRACE, "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_aggressive_probe_gives_up_after_ten_seconds() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = l.local_addr().unwrap();
        drop(l);
        let probe = Probe {
            check: Check::Tcp(gone),
            aggressive: true,
            timeout: Duration::from_secs(1),
            success_threshold: 1,
        };
        let t0 = Instant::now();
        assert!(!probe.run().await);
        let took = t0.elapsed();
        assert!(
            took >= AGGRESSIVE_FOR - AGGRESSIVE_INTERVAL
                && took <= AGGRESSIVE_FOR + AGGRESSIVE_ATTEMPT,
            "{took:?}"
        );
    }
}
