//! The upstream client: per-endpoint pools of keep-alive HTTP/1.1 connections (rouse's own,
//! [`crate::http::upstream`]), or one shared HTTP/2 (h2c) connection (hyper's).
//!
//! Why not hyper-util's pooled `Client`: rouse must know whether a request left the process.
//! A request none of which was written (a pooled connection the backend had already closed),
//! and a failed connect, never touch the request, so both can be retried safely, here on a
//! fresh connection and by the caller on another endpoint. Once any byte may have reached the
//! backend the request is retried only in the one case below ([`RISKY_IDLE`]).
//!
//! An HTTP/1.1 connection goes back to its pool only when its response body has been read to
//! the end (the body takes it home itself); a response abandoned half-way closes its
//! connection.

use crate::http::inline::Inline;
use crate::http::upstream::{self, Conn, Failed, Home, Io, UpBody};
use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    sender: Box<Conn>,
    /// When it will have been idle for [`RISKY_IDLE`]: set when it is returned, so that taking
    /// it compares two times rather than working out how long it was idle.
    risky_at: Instant,
    /// When it is too old to reuse: the pool's idle timeout, or sooner if the backend said
    /// it closes idle connections sooner (`Keep-Alive: timeout=`).
    expires: Instant,
}

/// The idle HTTP/1.1 connections of one endpoint, shared with the task that closes them when
/// they expire and with the response bodies that bring them back.
struct IdleSet {
    /// Most recently returned last, so reuse is LIFO (warm connections).
    conns: parking_lot::Mutex<Vec<Idle>>,
    /// True while a task is closing expired connections; set and cleared under the lock.
    reaping: AtomicBool,
    /// Idle connections kept at most.
    max_idle: usize,
    /// How long an idle connection is kept, unless the backend said less.
    idle_timeout: Duration,
}

impl std::fmt::Debug for IdleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleSet").finish_non_exhaustive()
    }
}

impl IdleSet {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Idle>> {
        // Not a poisoning lock: a panic while holding it cannot leave the Vec inconsistent.
        self.conns.lock()
    }
}

impl Home for IdleSet {
    /// Takes back a connection whose exchange finished cleanly.
    fn put(self: Arc<Self>, conn: Box<Conn>, keep_alive: Option<Duration>) {
        let keep = keep_alive.map_or(self.idle_timeout, |k| k.min(self.idle_timeout));
        if keep.is_zero() {
            // The backend keeps no idle connection (`Keep-Alive: timeout=0`).
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            let now = Instant::now();
            idle.push(Idle {
                sender: conn,
                risky_at: now + RISKY_IDLE,
                expires: now + keep,
            });
            // Closed on time, not only when the endpoint is next used: an idle connection
            // holds a socket on both sides, and a backend may count it against its limits.
            if !self.reaping.load(Ordering::Relaxed) {
                self.reaping.store(true, Ordering::Relaxed);
                tokio::spawn(reap(Arc::downgrade(&self)));
            }
        }
    }
}

/// Closes `set`'s connections as they expire, and ends once none is left (or the pool is gone).
async fn reap(set: Weak<IdleSet>) {
    loop {
        let next = {
            let Some(set) = set.upgrade() else { return };
            let mut conns = set.lock();
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

/// The most recently used idle connection of `set` that is still open at `now`, and whether
/// it was idle for [`RISKY_IDLE`] or more (see [`Pool::take_idle`]); expired and closed ones
/// on top of it are dropped.
fn take_from(set: &IdleSet, recent_only: bool, now: Instant) -> Option<(Box<Conn>, bool)> {
    let mut idle = set.lock();
    while let Some(c) = idle.last() {
        if c.expires > now && !c.sender.is_closed() {
            let risky = now >= c.risky_at;
            if recent_only && risky {
                // The top of the stack is the most recently used: the rest are older.
                return None;
            }
            let c = idle.pop()?;
            return Some((c.sender, risky));
        }
        idle.pop();
    }
    None
}

/// Connections to one endpoint.
pub struct Pool {
    settings: PoolSettings,
    /// One set per worker thread ([`crate::workers`]) and one for any other thread: a
    /// connection is registered with the poller of the worker that opened it and goes back to
    /// that worker's set, which that worker takes from first, so its readiness seldom has to
    /// cross threads. One set when there are no workers.
    idle: Box<[Arc<IdleSet>]>,
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

pub use crate::http::upstream::{BodyFault, Failure, OutBody, Outgoing};

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

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request never left rouse and is handed back.
    Connect {
        /// The untouched request.
        req: Box<Outgoing>,
        /// What went wrong.
        error: ConnectError,
    },
    /// The exchange failed after the request may have reached the backend.
    Failed(Failure),
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
        let set = || {
            Arc::new(IdleSet {
                conns: parking_lot::Mutex::default(),
                reaping: AtomicBool::new(false),
                max_idle: settings.max_idle,
                idle_timeout: settings.idle_timeout,
            })
        };
        Pool {
            idle: (0..crate::workers::installed().map_or(1, |w| w.len() + 1))
                .map(|_| set())
                .collect(),
            settings,
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The most recently used idle connection that is still open, whether it was idle for
    /// [`RISKY_IDLE`] or more, and the set it came from (where it goes back); with
    /// `recent_only`, only one idle for less (the others stay pooled for requests that can be
    /// replayed). `now` is the time, or one read a moment ago.
    ///
    /// This thread's own set first; only when it has none, another's, rather than open a
    /// connection more: a backend that serves one connection at a time must get its idle one
    /// back whichever worker the next request came in on.
    fn take_idle(
        &self,
        recent_only: bool,
        now: Instant,
    ) -> Option<(Box<Conn>, bool, &Arc<IdleSet>)> {
        let here = self.slot();
        let sets = self.idle.len();
        (0..sets).find_map(|k| {
            let set = &self.idle[(here + k) % sets];
            take_from(set, recent_only, now).map(|(c, risky)| (c, risky, set))
        })
    }

    /// The index of this thread's idle set: one per worker, and one for any other thread.
    fn slot(&self) -> usize {
        crate::workers::index().map_or(0, |i| (i + 1) % self.idle.len())
    }

    /// Number of idle HTTP/1.1 connections (for tests and metrics).
    pub fn idle_len(&self) -> usize {
        self.idle.iter().map(|s| s.lock().len()).sum()
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

    async fn connect_h1(&self, addr: SocketAddr) -> Result<Box<Conn>, ConnectError> {
        let tcp = self.connect_tcp(addr).await?;
        Ok(Conn::new(match &self.settings.tls {
            None => Io::Tcp(tcp),
            Some(tls) => Io::Tls(Box::new(self.connect_tls(tls, addr, tcp).await?)),
        }))
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
        // Connecting (TCP, TLS, the HTTP/2 handshake) is boxed apart: inline, its futures
        // made every request's send future tens of kilobytes, copied into place for each
        // request although the connection is almost always there already.
        Box::pin(self.h2_connect(addr, current)).await
    }

    /// Opens the endpoint's HTTP/2 connection, unless another request did while this one
    /// waited for its turn to.
    async fn h2_connect(
        &self,
        addr: SocketAddr,
        current: impl Fn() -> Option<http2::SendRequest<OutBody>>,
    ) -> Result<http2::SendRequest<OutBody>, ConnectError> {
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

    /// Sends an HTTP/1.1 request; the response body takes the connection back to the pool
    /// once it has been read to its end. `now` is a reading of the clock taken a moment ago,
    /// if the caller has one (a request that did not wait: its arrival), to judge pooled
    /// connections by; otherwise the clock is read.
    ///
    /// Written as a function returning an `async move` block rather than an `async fn`, which
    /// would keep its arguments twice in the future (as given, and again as locals): this future
    /// is part of what every request holds while it waits.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Box<Outgoing>,
        now: Option<Instant>,
    ) -> impl Future<Output = Result<Response<UpBody>, SendError>> {
        async move {
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
                    self.take_idle(!replayable_kind, now.unwrap_or_else(Instant::now))
                };
                let (conn, risky, home) = match pooled {
                    Some(pooled) => pooled,
                    None => {
                        fresh = true;
                        // Boxed: a connect is rare on a kept-alive pool, and its future (over
                        // 1 KB, for TLS) would otherwise make every request's larger.
                        match Box::pin(self.connect_h1(addr)).await {
                            // Home to this thread's set, whose poller it is registered with.
                            Ok(c) => (c, false, &self.idle[self.slot()]),
                            Err(error) => return Err(SendError::Connect { req, error }),
                        }
                    }
                };
                let home: Arc<dyn Home> = home.clone();
                match upstream::exchange(conn, req, home).await {
                    Ok(res) => return Ok(res),
                    Err(Failed {
                        failure,
                        back: Some(back),
                        unsent,
                    }) => {
                        if unsent && fresh {
                            // A brand-new connection that took nothing: the backend closed it at
                            // once. The request never left rouse.
                            let error = match failure {
                                Failure::Write(e) => ConnectError::Io(e),
                                _ => ConnectError::Io(std::io::ErrorKind::ConnectionReset.into()),
                            };
                            return Err(SendError::Connect { req: back, error });
                        }
                        if unsent {
                            debug!(%addr, "pooled connection was closed; retrying on a new one");
                        } else if risky && replayable_kind {
                            // Sent, but the reused connection failed before any answer: most
                            // likely the backend closed it as idle just then. An idempotent
                            // request without a body goes out once more, on a fresh connection.
                            debug!(%addr, error = %failure, "reused connection failed before an answer; replaying on a new one");
                        } else {
                            return Err(SendError::Failed(failure));
                        }
                        req = back;
                        fresh = true;
                    }
                    Err(Failed { failure, .. }) => return Err(SendError::Failed(failure)),
                }
            }
        }
    }

    /// Sends a request over the endpoint's shared HTTP/2 connection.
    ///
    /// Written as a function returning an `async move` block rather than an `async fn`, which
    /// would keep its arguments twice in the future (as given, and again as locals): this future
    /// is part of what every request holds while it waits.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn send_h2(
        &self,
        addr: SocketAddr,
        mut out: Box<Outgoing>,
    ) -> impl Future<Output = Result<Response<UpBody>, SendError>> {
        async move {
            // HTTP/2's head is written from the map alone.
            out.materialise();
            let Outgoing { mut req, hop, .. } = *out;
            if let Some(hop) = hop {
                hop.into_map(req.headers_mut());
            }
            let mut retried = false;
            loop {
                let mut sender = match self.h2_sender(addr).await {
                    Ok(s) => s,
                    Err(error) => {
                        let req = Box::new(Outgoing {
                            req,
                            hop: None,
                            fields: None,
                        });
                        return Err(SendError::Connect { req, error });
                    }
                };
                match sender.try_send_request(req).await {
                    Ok(res) => return Ok(res.map(|b| UpBody::Right(Box::new(b)))),
                    Err(mut e) => match e.take_message() {
                        Some(back) if !retried => {
                            // The connection went away before this stream started (GOAWAY/close).
                            *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            req = back;
                            retried = true;
                        }
                        _ => return Err(SendError::Failed(Failure::H2(e.into_error()))),
                    },
                }
            }
        }
    }
}

/// An HTTP/2 handshake over any transport; the connection runs on its own task.
async fn h2_over<I>(io: I, addr: SocketAddr) -> Result<http2::SendRequest<OutBody>, ConnectError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let exec = Inline::new();
    let (sender, conn) = http2::Builder::new(exec.clone())
        .handshake(io)
        .await
        .map_err(ConnectError::Handshake)?;
    // Each request's body and response run inside the connection's task.
    tokio::spawn(async move {
        if let Err(e) = crate::http::inline::drive(exec, conn).await {
            debug!(%addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}
