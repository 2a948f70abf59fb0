//! The upstream client: per-endpoint pools of keep-alive HTTP/1.1 connections, or one shared
//! HTTP/2 (h2c) connection, built on hyper's connection-level client.
//!
//! Why not hyper-util's pooled `Client`: rouse must know whether a request left the process.
//! hyper's `try_send_request` hands back a request that was never written (a pooled connection
//! the application had already closed), and a failed connect never touches the request, so
//! both can be retried safely, here on a fresh connection and by the caller on another
//! endpoint. Once any byte may have reached the backend the request is never retried.
//!
//! An HTTP/1.1 connection goes back to its pool only when its response body has been read to
//! the end (see [`crate::http::body`]); a response abandoned half-way closes its connection.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

/// Pool tuning for one endpoint.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Idle HTTP/1.1 connections kept at most.
    pub max_idle: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Time allowed for TCP connect (and the TLS handshake, if any).
    pub connect_timeout: Duration,
    /// TLS to the endpoint, if configured.
    pub tls: Option<Arc<crate::http::tls::Connector>>,
}

impl PoolSettings {
    /// True when connections made with `self` and `other` would differ (so a reload must
    /// replace the endpoints' pools rather than keep them). The idle cap is left out: it
    /// follows `container_concurrency`, and replacing endpoints for it would reset the very
    /// in-flight counts that enforce that limit.
    pub fn differs(&self, other: &PoolSettings) -> bool {
        self.idle_timeout != other.idle_timeout
            || self.connect_timeout != other.connect_timeout
            || self.tls.as_ref().map(|t| &t.source) != other.tls.as_ref().map(|t| &t.source)
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle: 256,
            idle_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(3),
            tls: None,
        }
    }
}

struct Idle {
    sender: Pooled,
    /// When it was returned.
    since: Instant,
    /// When it is too old to reuse: the pool's idle timeout, or sooner if the backend said
    /// it closes idle connections sooner (`Keep-Alive: timeout=`).
    expires: Instant,
}

/// The idle HTTP/1.1 connections of one endpoint, shared with the task that closes them when
/// they expire.
#[derive(Default)]
struct IdleSet {
    /// Most recently returned last, so reuse is LIFO (warm connections).
    conns: Mutex<Vec<Idle>>,
    /// True while a task is closing expired connections; set and cleared under the lock.
    reaping: AtomicBool,
}

/// Closes `set`'s connections as they expire, and ends once none is left (or the pool is gone).
async fn reap(set: Weak<IdleSet>) {
    loop {
        let next = {
            let Some(set) = set.upgrade() else { return };
            let mut conns = set.conns.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Dropping a sender closes its idle connection.
            conns.retain(|c| c.expires > now && !c.sender.is_closed());
            match conns.iter().map(|c| c.expires).min() {
                Some(t) => t,
                None => {
                    set.reaping.store(false, Ordering::Relaxed);
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Connections to one endpoint.
pub struct Pool {
    settings: PoolSettings,
    idle: Arc<IdleSet>,
    h2: Mutex<Option<http2::SendRequest<OutBody>>>,
    /// Single-flight gate for opening the h2 connection, so a burst of first requests shares
    /// one connection instead of each opening its own. Taken only when no usable connection
    /// exists, never on the per-request path.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A connection borrowed for one HTTP/1.1 exchange; returned with [`Pool::put`].
pub type Pooled = http1::SendRequest<OutBody>;

/// The body of a request sent upstream: the client's, or none, for a request replayed after its
/// client's (empty) body was spent on a connection that failed.
#[derive(Debug)]
pub enum OutBody {
    /// The client's request body, streamed, with where to record its failure.
    Client(Incoming, Option<Arc<BodyFault>>),
    /// No body.
    Empty,
}

/// Where a client's request body records how it failed. Over HTTP/1.1 the upstream client's
/// error carries the body's own as its cause; over HTTP/2 the body's failure only resets the
/// stream, and the error says no more than that. Either way the fault is the client's, and
/// this is how the proxy learns it.
#[derive(Debug, Default)]
pub struct BodyFault(std::sync::OnceLock<String>);

impl BodyFault {
    /// Why the client's body failed, if it did.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl http_body::Body for OutBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        match self.get_mut() {
            OutBody::Client(b, fault) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let (Poll::Ready(Some(Err(e))), Some(f)) = (&polled, fault) {
                    let _ = f.0.set(e.to_string());
                }
                polled
            }
            OutBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Client(b, _) => b.is_end_stream(),
            OutBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            OutBody::Client(b, _) => b.size_hint(),
            OutBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// A pooled connection idle this long may be closing as it is reused: an idempotent request
/// without a body sent on it keeps a copy of its head, to be replayed on a new connection if
/// the old one fails before any answer; any other request takes a new connection instead.
/// Connections reused sooner cost no copy.
const RISKY_IDLE: Duration = Duration::from_millis(250);

/// True for a request that may be sent twice: idempotent (RFC 9110 §9.2.2), no body, no
/// upgrade.
fn can_replay(req: &Request<OutBody>) -> bool {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(http::header::UPGRADE)
}

/// A copy of a request to replay, if it [can be replayed](can_replay).
fn replayable(req: &Request<OutBody>) -> Option<Request<OutBody>> {
    if !can_replay(req) {
        return None;
    }
    let mut copy = Request::new(OutBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request never left rouse and is handed back.
    Connect {
        /// The untouched request.
        req: Box<Request<OutBody>>,
        /// What went wrong.
        error: ConnectError,
    },
    /// The exchange failed after the request may have reached the backend.
    Failed(hyper::Error),
}

/// A failed connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TCP connect did not finish in time.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (certificate not trusted, wrong name, no TLS on the port).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(hyper::Error),
}

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            settings,
            idle: Arc::default(),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep serving.
        self.idle.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns a connection whose exchange finished cleanly; `keep_alive` is how long the
    /// backend said it keeps an idle connection, if it did.
    pub fn put(&self, sender: Pooled, keep_alive: Option<Duration>) {
        if sender.is_closed() {
            return;
        }
        let keep = keep_alive.map_or(self.settings.idle_timeout, |k| {
            k.min(self.settings.idle_timeout)
        });
        if keep.is_zero() {
            // The backend keeps no idle connection (`Keep-Alive: timeout=0`).
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.settings.max_idle {
            let now = Instant::now();
            idle.push(Idle {
                sender,
                since: now,
                expires: now + keep,
            });
            // Closed on time, not only when the endpoint is next used: an idle connection
            // holds a socket on both sides, and a backend may count it against its limits.
            if !self.idle.reaping.load(Ordering::Relaxed) {
                self.idle.reaping.store(true, Ordering::Relaxed);
                tokio::spawn(reap(Arc::downgrade(&self.idle)));
            }
        }
    }

    /// The warmest idle connection that has not expired, and how long it was idle.
    /// The most recently used idle connection that is still open; with `recent_only`, only
    /// one idle for less than [`RISKY_IDLE`] (the others stay pooled for requests that can be
    /// replayed).
    fn take_idle(&self, recent_only: bool) -> Option<(Pooled, Duration)> {
        let mut idle = self.lock_idle();
        let now = Instant::now();
        while let Some(c) = idle.last() {
            let idle_for = now.saturating_duration_since(c.since);
            if c.expires > now && !c.sender.is_closed() {
                if recent_only && idle_for >= RISKY_IDLE {
                    // The top of the stack is the most recently used: the rest are older.
                    return None;
                }
                let c = idle.pop()?;
                return Some((c.sender, idle_for));
            }
            idle.pop();
        }
        None
    }

    /// Number of idle HTTP/1.1 connections (for tests and metrics).
    pub fn idle_len(&self) -> usize {
        self.lock_idle().len()
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let t = self.settings.connect_timeout;
        let stream = tokio::time::timeout(t, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(t))??;
        // Small request/response heads must not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn connect_tls(
        &self,
        tls: &crate::http::tls::Connector,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let t = self.settings.connect_timeout;
        tokio::time::timeout(t, tls.connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout(t))?
            .map_err(ConnectError::Tls)
    }

    async fn connect_h1(&self, addr: SocketAddr) -> Result<Pooled, ConnectError> {
        let tcp = self.connect_tcp(addr).await?;
        match &self.settings.tls {
            None => h1_over(TokioIo::new(tcp), addr).await,
            Some(tls) => h1_over(TokioIo::new(self.connect_tls(tls, addr, tcp).await?), addr).await,
        }
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<OutBody>, ConnectError> {
        let current = || {
            let slot = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().filter(|s| !s.is_closed()).cloned()
        };
        if let Some(s) = current() {
            return Ok(s);
        }
        let _gate = self.h2_connecting.lock().await;
        if let Some(s) = current() {
            return Ok(s);
        }
        let tcp = self.connect_tcp(addr).await?;
        let sender = match &self.settings.tls {
            None => h2_over(TokioIo::new(tcp), addr).await?,
            Some(tls) => {
                h2_over(TokioIo::new(self.connect_tls(tls, addr, tcp).await?), addr).await?
            }
        };
        *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Sends an HTTP/1.1 request; on success also returns the connection, to be handed back
    /// with [`Pool::put`] once the response body has ended.
    pub async fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        // A pooled connection may turn out closed; then the request comes back unsent and goes
        // out once more on a fresh connection, which is never stale.
        let mut fresh = false;
        // A request that could not be replayed (a body, or not idempotent) never goes out on a
        // connection idle long enough to be closing under it: the backend may close it just as
        // the request is written, and then nothing can be done but a 502.
        let replayable_kind = can_replay(&req);
        loop {
            let pooled = if fresh {
                None
            } else {
                self.take_idle(!replayable_kind)
            };
            let mut replay = None;
            let mut sender = match pooled {
                Some((s, idle_for)) => {
                    if idle_for >= RISKY_IDLE {
                        replay = replayable(&req);
                    }
                    s
                }
                None => {
                    fresh = true;
                    match self.connect_h1(addr).await {
                        Ok(s) => s,
                        Err(error) => {
                            return Err(SendError::Connect {
                                req: Box::new(req),
                                error,
                            });
                        }
                    }
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    // A brand-new connection that is not usable: the backend closed it at once.
                    return Err(SendError::Connect {
                        req: Box::new(req),
                        error: ConnectError::Io(std::io::ErrorKind::ConnectionReset.into()),
                    });
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, sender)),
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(back), _) if !fresh => {
                        debug!(%addr, "pooled connection was closed; retrying on a new one");
                        req = back;
                        fresh = true;
                    }
                    // Sent, but the reused connection failed before any answer: most likely
                    // the backend closed it as idle just then. An idempotent request without a
                    // body goes out once more, on a fresh connection.
                    (None, Some(copy)) if e.error().is_incomplete_message() => {
                        debug!(%addr, error = %e.error(), "reused connection failed before an answer; replaying on a new one");
                        req = copy;
                        fresh = true;
                    }
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    /// Sends a request over the endpoint's shared HTTP/2 connection.
    pub async fn send_h2(
        &self,
        addr: SocketAddr,
        mut req: Request<OutBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut retried = false;
        loop {
            let mut sender = match self.h2_sender(addr).await {
                Ok(s) => s,
                Err(error) => {
                    return Err(SendError::Connect {
                        req: Box::new(req),
                        error,
                    });
                }
            };
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(res),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        // The connection went away before this stream started (GOAWAY/close).
                        *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        req = back;
                        retried = true;
                    }
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

/// The most an upstream HTTP/1.1 connection buffers from the backend. Body pieces handed to
/// the client are slices of this buffer, so while a client reads slowly, the whole buffer stays
/// allocated for it: hyper's default (about 400 KiB) made each slow reader cost half a
/// megabyte. 64 KiB still takes a backend's write in one read.
const UPSTREAM_READ_BUFFER: usize = 64 << 10;

/// An HTTP/1.1 handshake over any transport; the connection runs on its own task.
async fn h1_over<I>(io: I, addr: SocketAddr) -> Result<Pooled, ConnectError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(io)
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An HTTP/2 handshake over any transport; the connection runs on its own task.
async fn h2_over<I>(io: I, addr: SocketAddr) -> Result<http2::SendRequest<OutBody>, ConnectError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}
