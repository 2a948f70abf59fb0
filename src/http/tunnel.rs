//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once the backend answers
//! `101 Switching Protocols`, the client's and the backend's connections are spliced together
//! byte for byte.
//!
//! The backend ends a tunnel: when its side closes, so does the client's. A client that stops
//! sending only half-closes the tunnel, so the backend can still answer.
//!
//! The request's guard (the proxy's endpoint lease) moves into the tunnel task and is released
//! only when the tunnel closes, so an open WebSocket counts as in flight for
//! `container_concurrency`, autoscaling and drain. A tunnel has no total deadline (the request
//! timeout ends at the 101); only the idle timeout applies to it.

use crate::clock;
use crate::http::downstream::OnUpgrade;
use crate::http::upstream::Upgraded;
use http::header::{self, HeaderMap, HeaderValue};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

/// Puts the upgrade request back on headers that hop-by-hop stripping cleaned.
pub fn mark(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Splices the client's upgraded connection (once hyper hands it over) and the upstream one
/// until either side closes or nothing moves for `idle`; `done` is dropped when the tunnel
/// closes.
pub fn spawn<G: Send + 'static>(
    client: OnUpgrade,
    upstream: Upgraded,
    done: G,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let c = match client.await {
            Ok(c) => c,
            Err(e) => {
                debug!(client = ?e, "upgrade did not complete");
                return;
            }
        };
        let last = Arc::new(AtomicU64::new(clock::now_ms()));
        let (mut cr, mut cw) = tokio::io::split(Activity(c, last.clone()));
        let (mut ur, mut uw) = tokio::io::split(Activity(upstream, last.clone()));
        let up = async {
            let _ = tokio::io::copy(&mut cr, &mut uw).await;
            let _ = uw.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut ur, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        // The backend ends the session: once its side is done the tunnel is over, even if the
        // client keeps its socket open (a WebSocket server closes the TCP connection first).
        // A client that finishes sending only half-closes, and the backend's reply still flows.
        let session = async {
            tokio::pin!(up, down);
            tokio::select! {
                () = &mut down => {}
                () = &mut up => down.await,
            }
        };
        match idle {
            None => session.await,
            Some(limit) => {
                tokio::select! {
                    () = session => {}
                    () = idle_for(&last, limit) => debug!("tunnel idle timeout"),
                }
            }
        }
        drop(done);
    });
}

/// Resolves once `last` (ms) is older than `limit`.
async fn idle_for(last: &AtomicU64, limit: Duration) {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    loop {
        let since = clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= limit_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit_ms - since)).await;
    }
}

/// An I/O object that stamps the time of every byte moved.
struct Activity<T>(T, Arc<AtomicU64>);

impl<T> Activity<T> {
    fn touch(&self) {
        self.1.store(clock::now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
