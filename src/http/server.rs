//! The listener: accepts TCP connections and serves HTTP/1.1 and h2c (prior knowledge) on the
//! same port, telling them apart by a peek at the first bytes, and HTTP/1.1 or HTTP/2 over TLS
//! by ALPN; with graceful drain on shutdown.

use crate::http::body::{BoxError, Cut};
use crate::http::downstream::{self, Refusal, RequestBody, stopped};
use crate::http::headers::ClientAddr;
use crate::http::inline::{self, Inline};
use crate::http::upstream::Outgoing;
use crate::workers::Workers;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::socket::{self, MsgFlags};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Binds a listener; a failure names the address and the config key (or flag) that set it,
/// and for the common "address in use" says what to do.
pub async fn bind(addr: SocketAddr, key: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "; another process listens there: stop it, or give another address"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "; no interface of this machine has that address: pick one it has, or 0.0.0.0"
            }
            std::io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need privileges: choose a port from 1024 up"
            }
            _ => "",
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (`{key}`): {e}{hint}"),
        )
    })
}

/// What the handler knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's address formatted for forwarding headers, once per connection, and
    /// shared: each request counts one reference instead of copying two header values.
    pub client: Arc<ClientAddr>,
    /// True on the TLS listener.
    pub secure: bool,
    /// True on the cluster-local listener, the one that also serves cluster-local services.
    pub internal: bool,
    /// Closes an HTTP/1.1 connection at once (does nothing to an HTTP/2 one, whose other
    /// streams must go on).
    pub cut: Cut,
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// The body of its responses, which may carry a proxied response's fields as the backend
    /// wrote them ([`crate::http::h1::Carries`]).
    type Body: http_body::Body<Data = Bytes, Error = BoxError>
        + crate::http::h1::Carries
        + Send
        + 'static;

    /// True when the handler calls [`Outgoing::materialise`] before it reads or edits a
    /// request's fields other than its host, and would rather get an HTTP/1.1 request with its
    /// fields kept as the client wrote them ([`Outgoing::fields`]). Otherwise every request
    /// comes with its fields in its map. Asked once for each connection.
    fn keeps_fields(&self) -> bool {
        false
    }

    /// Answers one request.
    fn call(
        &self,
        req: Box<Outgoing>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// An HTTP/1.1 request head was refused (see [`downstream`]): returns the whole answer to
    /// send, after which the connection closes. A break in a body's chunks fails that body
    /// instead, which the handler answers.
    fn refused(&self, why: Refusal) -> Bytes;
}

/// Listener settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time to receive a complete request head. Also the longest an HTTP/1.1 connection waits
    /// idle between requests: hyper starts the same timer for the next head.
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection on which no request has started for this long is closed (GOAWAY;
    /// streams still open finish).
    pub idle_timeout: Duration,
    /// The listener is the cluster-local one.
    pub internal: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            internal: false,
        }
    }
}

/// A listener's client connections: how many may be open at once, how many are, and how often
/// the limit held new ones back. Shared with whoever reports them.
#[derive(Debug)]
pub struct Connections {
    /// Where the connections run: on the worker threads, if the process has them
    /// ([`crate::workers`]); otherwise on the runtime that serves the listener.
    workers: Option<Arc<Workers>>,
    limit: usize,
    permits: Arc<Semaphore>,
    waits: AtomicU64,
    /// The second of the last warning about the limit.
    warned: AtomicU64,
}

impl Connections {
    /// At most `limit` connections open at once (at least 1), run on the process's workers if
    /// it has them.
    pub fn new(limit: usize) -> Arc<Connections> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Connections {
            workers: crate::workers::installed().cloned(),
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            waits: AtomicU64::new(0),
            warned: AtomicU64::new(u64::MAX),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Times a new connection had to wait because the limit was reached.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// The most open at once.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// TLS for a listener.
#[derive(Clone)]
pub struct TlsListener {
    /// The rustls acceptor (certificates, ALPN).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Time allowed for a handshake.
    pub handshake_timeout: Duration,
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Http1,
    H2,
}

/// Tells HTTP/1.1 from h2c by peeking at the first bytes, without taking them off the socket.
///
/// hyper-util's auto-detecting builder reads the first 24 bytes itself and replays them. hyper's
/// first read then returns only those 24, and its second read grows the connection's 8 KiB read
/// buffer to 16 KiB with a copy, on every connection. A peek leaves the request whole for hyper's
/// first read. Returns `None` if the client closes first, or if what it sent is neither: a
/// complete first line that is not an HTTP/1.x request line is a broken HTTP/2 preface or
/// noise, and the connection is closed without an answer, as RFC 9113 §3.4 asks of an invalid
/// preface (an HTTP/1.1 `400` would reach an HTTP/2 client as garbage frames).
async fn sniff(stream: &TcpStream) -> std::io::Result<Option<Wire>> {
    let mut buf = [0u8; 64];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // A peek does not consume, so after one that sees only part of the preface the socket
        // still reads as ready. Returning WouldBlock from inside `try_io` clears that readiness,
        // unless more data has arrived since the peek, so the loop then waits for new bytes
        // instead of peeking in a spin.
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = socket::recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)
                .map_err(std::io::Error::from)?;
            if n > 0 && n < H2_PREFACE.len() && buf[..n] == H2_PREFACE[..n] {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return Ok(None),
            Ok(n) if n >= H2_PREFACE.len() && buf[..H2_PREFACE.len()] == *H2_PREFACE => {
                return Ok(Some(Wire::H2));
            }
            Ok(n) if may_be_http1(&buf[..n]) => return Ok(Some(Wire::Http1)),
            Ok(n) => {
                // Taken off the socket, so that the close is a FIN, not a reset for unread data.
                let mut sink = [0u8; 64];
                let _ = stream.try_read(&mut sink[..n]);
                return Ok(None);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                // A client that closed inside the preface can never finish it, and a closed
                // read side stays ready for good: waiting again would return at once, forever.
                if ready.is_read_closed() {
                    return Ok(None);
                }
                // Should readiness stay set for any other reason, the header read timeout and
                // the other tasks on this thread still get their turn.
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// False only when `head` holds a complete first line that is not an HTTP/1.x request line
/// (`METHOD target HTTP/1.x`); a line not yet complete is left to the HTTP/1.1 parser. A line
/// that ends in a bare LF counts as a line here, so that such a request gets its 400 from
/// [`Strict`] rather than a silent close.
fn may_be_http1(head: &[u8]) -> bool {
    // Empty lines before a request line are to be ignored (RFC 9112 §2.2).
    let mut head = head;
    while let Some(rest) = head
        .strip_prefix(b"\r\n")
        .or_else(|| head.strip_prefix(b"\n"))
    {
        head = rest;
    }
    match memchr::memchr(b'\n', head) {
        None => true,
        Some(end) => {
            let line = &head[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
        }
    }
}

/// A hyper HTTP/2 connection that can be asked to finish its open streams and close.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http2::Connection<I, S, Inline>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: ConnService,
    Inline: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::Body>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Drives the HTTP/2 connection `conn` to its end; once `stop` turns true, or no request has
/// started for the idle limit, asks it to finish gracefully first (GOAWAY, then the open
/// streams finish).
async fn run<C: Graceful>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    idle: Option<(Arc<AtomicU64>, Duration)>,
) -> Result<(), hyper::Error> {
    let mut conn = pin!(conn);
    // Idle: no request started for `limit` (the last start is noted by [`Noted`]).
    let idle = async {
        let Some((last, limit)) = idle else {
            return std::future::pending().await;
        };
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let since = last.load(Ordering::Relaxed);
            let now = crate::clock::now_ms();
            let due = since.saturating_add(limit_ms);
            if now >= due {
                return;
            }
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
    };
    tokio::select! {
        biased;
        r = conn.as_mut() => return r,
        () = stopped(&mut stop) => {}
        () = idle => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Awaits one step of setting up a connection for at most `limit`. On failure or timeout the
/// connection is dropped, and the reason only logged: nobody is there to answer.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    step: impl Future<Output = Result<T, E>>,
    peer: SocketAddr,
    what: &str,
) -> Option<T> {
    match tokio::time::timeout(limit, step).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "{what} failed");
            None
        }
        Err(_) => {
            debug!(%peer, "{what} timed out");
            None
        }
    }
}

/// The per-connection service `serve` builds around the [`Handler`], as the connection
/// functions below need it.
trait ConnService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Send
    + 'static
{
    /// The body of its responses.
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static;
}

impl<S, B> ConnService for S
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Send
        + 'static,
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    type Body = B;
}

/// A service that notes when each request starts, for the HTTP/2 idle timeout.
struct Noted<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S: ConnService> hyper::service::Service<Request<Incoming>> for Noted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> S::Future {
        self.last.store(crate::clock::now_ms(), Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// The HTTP/1.1 and HTTP/2 settings every connection of a listener shares.
struct Protocols {
    http1: downstream::Settings,
    /// HTTP/2's limit on a request's header list, in bytes.
    max_header_list: u32,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Protocols {
    fn new(settings: ServerSettings) -> Self {
        Protocols {
            http1: downstream::Settings {
                max_head: settings.max_header_bytes,
                head_timeout: settings.header_read_timeout,
                // Each handler says (`Handler::keeps_fields`).
                keep_fields: false,
            },
            max_header_list: u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX),
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }

    /// Serves one connection in the protocol it speaks, to its end.
    async fn serve<I, H>(
        &self,
        io: I,
        wire: Wire,
        handler: Arc<H>,
        info: ConnInfo,
        stop: watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Handler,
    {
        let peer = info.peer;
        match wire {
            Wire::Http1 => {
                let cut = info.cut.clone();
                let h = &*handler;
                let conn = downstream::serve(
                    Box::new(io),
                    |req| h.call(req, info.clone()),
                    |why| h.refused(why),
                    downstream::Settings {
                        keep_fields: h.keeps_fields(),
                        ..self.http1
                    },
                    stop,
                    cut.clone(),
                );
                tokio::select! {
                    biased;
                    () = cut.fired() => {}
                    () = conn => {}
                }
            }
            // Boxed so that HTTP/2's larger state does not size every HTTP/1.1 connection's task.
            Wire::H2 => {
                let last = Arc::new(AtomicU64::new(crate::clock::now_ms()));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, info) = (handler.clone(), info.clone());
                    async move {
                        let req = Outgoing::boxed(req.map(RequestBody::Right));
                        let mut res = h.call(req, info).await;
                        // hyper writes the map only.
                        crate::http::h1::materialise(&mut res);
                        Ok::<_, Infallible>(res)
                    }
                });
                let svc = Noted {
                    inner: svc,
                    last: last.clone(),
                };
                // Each connection its own executor: its streams run in this task.
                let exec = Inline::new();
                let conn = http2::Builder::new(exec.clone())
                    .timer(TokioTimer::new())
                    .max_header_list_size(self.max_header_list)
                    .serve_connection(TokioIo::new(io), svc);
                let run = inline::drive(exec, run(conn, stop, Some((last, self.idle_timeout))));
                if let Err(e) = Box::pin(run).await {
                    debug!(%peer, error = %e, "client connection ended with an error");
                }
            }
        }
    }

    /// Serves a plain TCP connection: HTTP/1.1 or h2c with prior knowledge on the same port.
    async fn serve_tcp<H: Handler>(
        &self,
        stream: TcpStream,
        handler: Arc<H>,
        info: ConnInfo,
        stop: watch::Receiver<bool>,
    ) {
        let peer = info.peer;
        // A client that connects and sends nothing is held no longer than one that sends half
        // a request head.
        let first = within(
            self.header_read_timeout,
            sniff(&stream),
            peer,
            "first bytes",
        );
        let Some(Some(wire)) = first.await else {
            return;
        };
        self.serve(stream, wire, handler, info, stop).await;
    }

    /// Serves a TLS connection in the protocol ALPN agreed; without ALPN that is HTTP/1.1, since
    /// HTTP/2 over TLS requires ALPN (RFC 9113, section 3.3).
    async fn serve_tls<H: Handler>(
        &self,
        stream: TcpStream,
        tls: TlsListener,
        handler: Arc<H>,
        info: ConnInfo,
        stop: watch::Receiver<bool>,
    ) {
        let peer = info.peer;
        let handshake = tls.acceptor.accept(stream);
        let Some(s) = within(tls.handshake_timeout, handshake, peer, "TLS handshake").await else {
            return;
        };
        let wire = match s.get_ref().1.alpn_protocol() {
            Some(b"h2") => Wire::H2,
            _ => Wire::Http1,
        };
        self.serve(s, wire, handler, info, stop).await;
    }
}

/// An accepted client connection and what serving it takes.
struct Accepted<H> {
    protocols: Arc<Protocols>,
    handler: Arc<H>,
    peer: SocketAddr,
    secure: bool,
    internal: bool,
    stop: watch::Receiver<bool>,
    tls: Option<TlsListener>,
    /// Its place under the listener's connection limit.
    permit: OwnedSemaphorePermit,
}

impl<H: Handler> Accepted<H> {
    /// Serves the connection to its end, on the runtime that polls this.
    async fn serve(self, stream: TcpStream) {
        let Accepted {
            protocols: p,
            handler: h,
            peer,
            secure,
            internal,
            stop,
            tls,
            permit,
        } = self;
        // Held for the connection's life: its place under the limit. A WebSocket (or any
        // upgrade) taken over from it is still this client's connection, so the place is
        // kept until its tunnel ends too.
        let _permit = permit;
        let cut = Cut::default();
        let conn = ConnInfo {
            peer,
            client: Arc::new(ClientAddr::new(peer.ip())),
            secure,
            internal,
            cut: cut.clone(),
        };
        match tls {
            None => p.serve_tcp(stream, h, conn, stop).await,
            // The handshake runs here, not in the accept loop, so a slow client cannot hold
            // up others. Boxed, so that the TLS session's state is not part of every plain
            // connection's task.
            Some(t) => Box::pin(p.serve_tls(stream, t, h, conn, stop)).await,
        }
        cut.tunnels_closed().await;
    }
}

/// Serves `listener` until `stop` turns true, then stops accepting, asks every connection to
/// finish its current exchange (HTTP/1.1: close after the response; HTTP/2: GOAWAY), and waits
/// for them up to `drain`. Returns the number of connections still open when it gave up.
///
/// At most `conns.limit()` connections are open at once. At the limit the loop stops accepting,
/// so new connections wait in the kernel's listen queue (and are refused once it is full)
/// while the open ones are served as before; memory stays bounded whatever clients do.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ServerSettings,
    stop: watch::Receiver<bool>,
    drain: Duration,
    tls: Option<TlsListener>,
    conns: Arc<Connections>,
) -> usize {
    let connections = TaskTracker::new();
    let accepting = Accepting {
        handler,
        settings,
        stop,
        tls,
        conns: conns.clone(),
        connections: connections.clone(),
    };
    match &conns.workers {
        None => accepting.run(listener).await,
        // On the workers' accepting thread, its socket moved to that thread's poller.
        Some(workers) => match listener.into_std() {
            Ok(listener) => {
                let accept = workers.accept(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accepting.run(listener).await,
                        Err(e) => warn!(error = %e, "cannot accept on the accepting thread"),
                    }
                });
                // Only a panic in the loop fails this; the listener is gone either way.
                let _ = accept.await;
            }
            Err(e) => warn!(error = %e, "cannot accept on the accepting thread"),
        },
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    let open = connections.len();
    warn!(open, "drain timeout reached with connections still open");
    open
}

/// A listener's accept loop and what it hands each connection.
struct Accepting<H> {
    handler: Arc<H>,
    settings: ServerSettings,
    stop: watch::Receiver<bool>,
    tls: Option<TlsListener>,
    conns: Arc<Connections>,
    /// Every connection accepted, for the drain to wait for.
    connections: TaskTracker,
}

impl<H: Handler> Accepting<H> {
    /// Accepts until `stop` turns true, then closes the listener.
    async fn run(self, listener: TcpListener) {
        let Accepting {
            handler,
            settings,
            mut stop,
            tls,
            conns,
            connections,
        } = self;
        let protocols = Arc::new(Protocols::new(settings));
        loop {
            let permit = match conns.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let waits = conns.waits.fetch_add(1, Ordering::Relaxed) + 1;
                    // Once a second at most: a listener at its limit waits at every accept.
                    let second = crate::clock::now_ms() / 1000;
                    if conns.warned.swap(second, Ordering::Relaxed) != second {
                        warn!(
                            limit = conns.limit,
                            waits,
                            "client connection limit reached (limits.max_connections); new connections wait until one closes"
                        );
                    }
                    tokio::select! {
                        biased;
                        () = stopped(&mut stop) => break,
                        p = conns.permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Typically EMFILE: back off briefly instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = Accepted {
                        protocols: protocols.clone(),
                        handler: handler.clone(),
                        peer,
                        secure: tls.is_some(),
                        internal: settings.internal,
                        stop: stop.clone(),
                        tls: tls.clone(),
                        permit,
                    };
                    match &conns.workers {
                        None => {
                            connections.spawn(conn.serve(stream));
                        }
                        // Taken off this runtime's poller and put on the worker's, where the
                        // connection stays.
                        Some(workers) => match stream.into_std() {
                            Ok(stream) => workers.spawn(connections.track_future(async move {
                                match TcpStream::from_std(stream) {
                                    Ok(stream) => conn.serve(stream).await,
                                    Err(e) => debug!(%peer, error = %e, "cannot move the connection to a worker"),
                                }
                            })),
                            Err(e) => debug!(%peer, error = %e, "cannot move the connection to a worker"),
                        },
                    }
                }
            }
        }
    }
}
