//! The listener: accepts TCP connections and serves HTTP/1.1 and h2c (prior knowledge) on the
//! same port through hyper-util's auto-detecting builder, with graceful drain on shutdown.

use crate::body::ProxyBody;
use crate::headers::ClientAddr;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

/// What the handler knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's address formatted for forwarding headers, once per connection.
    pub client: ClientAddr,
    /// True on the TLS listener.
    pub secure: bool,
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Listener settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time to receive a complete request head.
    pub header_read_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
        }
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

async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            // The owner is gone: nobody can ask for a graceful stop any more, so stop now.
            return;
        }
    }
}

/// Serves `listener` until `stop` turns true, then stops accepting, asks every connection to
/// finish its current exchange (HTTP/1.1: close after the response; HTTP/2: GOAWAY), and waits
/// for them up to `drain`. Returns the number of connections still open when it gave up.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ServerSettings,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    tls: Option<TlsListener>,
) -> usize {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
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
                let conn = ConnInfo {
                    peer,
                    client: ClientAddr::new(peer.ip()),
                    secure: tls.is_some(),
                };
                let h = handler.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let (h, conn) = (h.clone(), conn.clone());
                    async move { Ok::<_, Infallible>(h.call(req, conn).await) }
                });
                let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
                tokio::spawn(async move {
                    let result = match tls {
                        None => {
                            let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            watcher.watch(c).await
                        }
                        Some(t) => {
                            // The handshake runs here, not in the accept loop, so a slow client
                            // cannot hold up others.
                            match tokio::time::timeout(t.handshake_timeout, t.acceptor.accept(stream)).await {
                                Ok(Ok(s)) => {
                                    let c = builder.serve_connection_with_upgrades(TokioIo::new(s), svc);
                                    watcher.watch(c).await
                                }
                                Ok(Err(e)) => {
                                    debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "client connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            warn!(open, "drain timeout reached with connections still open");
            open
        }
    }
}
