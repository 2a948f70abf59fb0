//! The response body rouse sends to clients: either a short body of its own (errors, admin,
//! probes) or an upstream body streamed frame by frame, never buffered.
//!
//! An upstream body carries an [`Exchange`]: whatever must happen when the proxied exchange
//! ends (the proxy's is the endpoint lease, the pooled connection and the request's timing).
//! It ends when the body does, or when the body is dropped because the client went away, which
//! is what makes a streaming response count as in flight for as long as it really is. The body
//! is generic over it, so this module knows nothing of revisions and the request path pays no
//! allocation for it.
//!
//! A response with an idle or total time limit is streamed by a task of its own instead
//! ([`ProxyBody::timed`]): hyper polls a response body only when the client's connection can
//! take more, so a limit checked while polling would never fire for a client that stops
//! reading, and that client would keep the endpoint's slot for as long as it liked. The task
//! reads the upstream body and hands each frame on through a one-frame channel, whether or not
//! the client takes it; when a limit passes it drops the upstream body (closing or resetting
//! the upstream exchange), ends the exchange, and cuts the client's connection where that is
//! the only way to stop an HTTP/1.1 response (`cut`). The client sees the stream fail.

pub use crate::http::cut::{Cut, TunnelHold};
use crate::http::h1::{Carries, Verbatim};
use crate::http::upstream::UpBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What happens when a proxied exchange ends: `clean` is true when the upstream body was read
/// to its end (so an HTTP/1.1 connection can carry another exchange).
pub trait Exchange: Send + 'static {
    /// Ends the exchange.
    fn end(self, clean: bool);

    /// `bytes` more of the body went towards the client.
    fn sent(&mut self, _bytes: usize) {}
}

/// Bodies of rouse's own carry no exchange.
impl Exchange for () {
    fn end(self, _clean: bool) {}
}

/// A response body; `E` is what ends with a streamed upstream body.
#[derive(Debug)]
pub struct ProxyBody<E = ()>(Kind<E>);

/// Each kind with content is boxed: the response moves a dozen times on its way from the
/// exchange to the client's connection, and with a body of two words it is 128 bytes, which
/// a move copies in eight loads and stores where a larger one calls `memcpy` (about 30
/// instructions each time, some 300 a request).
#[derive(Debug)]
enum Kind<E> {
    /// Nothing, or nothing more.
    Empty,
    Full(Box<Bytes>),
    Upstream(Box<Streamed<E>>),
    Timed(Box<Relayed>),
}

#[derive(Debug)]
struct Streamed<E> {
    inner: UpBody,
    done: Option<E>,
    /// The backend's fields as it wrote them, taken from `inner` (see [`Carries`]).
    verbatim: Option<Verbatim>,
}

/// The client's side of a timed response: frames relayed by its task.
#[derive(Debug)]
struct Relayed {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    /// How the task ended, once it has ([`RUNNING`], [`CLEAN`], [`IDLE`], [`TOTAL`],
    /// [`FAILED`]).
    outcome: Arc<AtomicU8>,
    hint: SizeHint,
    verbatim: Option<Verbatim>,
}

const RUNNING: u8 = 0;
const CLEAN: u8 = 1;
const IDLE: u8 = 2;
const TOTAL: u8 = 3;
const FAILED: u8 = 4;

/// The stream outlived a timeout after its headers were sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamTimeout(&'static str);

/// Plain text, the content type of rouse's own short answers.
pub const PLAIN: &str = "text/plain; charset=utf-8";

/// A short response of rouse's own: `body` with `status` and `ctype`.
pub fn text<E>(
    status: StatusCode,
    body: impl Into<Bytes>,
    ctype: &'static str,
) -> Response<ProxyBody<E>> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// The time limits of a streamed response once its headers are sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Longest time nothing moves: no frame from upstream, or none taken by the client.
    pub idle: Option<Duration>,
    /// When the whole exchange must be over.
    pub deadline: Option<Instant>,
}

impl Limits {
    fn any(&self) -> bool {
        self.idle.is_some() || self.deadline.is_some()
    }

    /// The next moment a limit passes, given the last time something moved, and which.
    fn next(&self, moved: Instant) -> Option<(Instant, u8)> {
        let idle = self.idle.map(|d| (moved + d, IDLE));
        let total = self.deadline.map(|d| (d, TOTAL));
        match (idle, total) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl<E> ProxyBody<E> {
    /// A complete body of rouse's own.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody<E> {
        ProxyBody(Kind::Full(Box::new(b.into())))
    }

    /// An empty body.
    pub fn empty() -> ProxyBody<E> {
        ProxyBody(Kind::Empty)
    }

    /// Streams an upstream body, polled by the client's connection; `done` ends with it.
    pub fn upstream(mut inner: UpBody, done: E) -> ProxyBody<E>
    where
        E: Exchange,
    {
        let verbatim = inner.take_verbatim();
        // The box first, then what it holds written into it, rather than made on the stack
        // and copied in (over 128 bytes: a call to `memcpy`).
        let slot = Box::new_uninit();
        let mut up = Box::write(
            slot,
            Streamed {
                inner,
                done: Some(done),
                verbatim,
            },
        );
        // A body that is already complete (no content) must still free its slot and connection
        // even if the server never polls it.
        if up.inner.is_end_stream() {
            up.finish(true);
        }
        ProxyBody(Kind::Upstream(up))
    }

    /// Streams an upstream body under `limits`, through a task that enforces them whether or
    /// not the client reads (see the module comment). Without limits this is
    /// [`ProxyBody::upstream`]. `cut` is called when a limit ends the exchange, to close a
    /// client connection that nothing else would close.
    pub fn timed(
        mut inner: UpBody,
        done: E,
        limits: Limits,
        cut: impl FnOnce() + Send + 'static,
    ) -> ProxyBody<E>
    where
        E: Exchange,
    {
        if !limits.any() || inner.is_end_stream() {
            return ProxyBody::upstream(inner, done);
        }
        let hint = inner.size_hint();
        let verbatim = inner.take_verbatim();
        let (tx, frames) = mpsc::channel(1);
        let outcome = Arc::new(AtomicU8::new(RUNNING));
        tokio::spawn(relay(inner, done, limits, tx, outcome.clone(), cut));
        ProxyBody(Kind::Timed(Box::new(Relayed {
            frames,
            outcome,
            hint,
            verbatim,
        })))
    }
}

impl<E> Carries for ProxyBody<E> {
    fn take_verbatim(&mut self) -> Option<Verbatim> {
        match &mut self.0 {
            Kind::Upstream(up) => up.verbatim.take(),
            Kind::Timed(r) => r.verbatim.take(),
            Kind::Empty | Kind::Full(_) => None,
        }
    }
}

/// Bodies made whole elsewhere (tests' handlers) carry none.
impl Carries for http_body_util::combinators::BoxBody<Bytes, BoxError> {
    fn take_verbatim(&mut self) -> Option<Verbatim> {
        None
    }
}

/// Moves `inner` frame by frame into `tx` until it ends, the client goes away, or a limit
/// passes; ends `done` accordingly.
async fn relay<E: Exchange>(
    mut inner: UpBody,
    mut done: E,
    limits: Limits,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    outcome: Arc<AtomicU8>,
    cut: impl FnOnce(),
) {
    let mut moved = Instant::now();
    let fired = loop {
        let (at, which) = limits.next(moved).expect("a timed body has a limit");
        let frame = tokio::select! {
            f = inner.frame() => f,
            () = tokio::time::sleep_until(at) => break which,
            // The client went away: nobody is left to tell.
            () = tx.closed() => return done.end(false),
        };
        match frame {
            None => {
                outcome.store(CLEAN, Ordering::Release);
                return done.end(true);
            }
            Some(Err(e)) => {
                outcome.store(FAILED, Ordering::Release);
                let _ = tx.try_send(Err(e));
                return done.end(false);
            }
            Some(Ok(f)) => {
                let len = f.data_ref().map_or(0, Bytes::len);
                let last = inner.is_end_stream();
                // The upstream just moved; the client now has the idle limit to take it.
                moved = Instant::now();
                let (at, which) = limits.next(moved).expect("a timed body has a limit");
                tokio::select! {
                    sent = tx.send(Ok(f)) => if sent.is_err() { return done.end(false) },
                    () = tokio::time::sleep_until(at) => break which,
                }
                done.sent(len);
                if last {
                    outcome.store(CLEAN, Ordering::Release);
                    return done.end(true);
                }
                moved = Instant::now();
            }
        }
    };
    // A limit passed: the upstream exchange goes (dropping `inner` closes or resets it), the
    // slot is freed, and the client's stream fails: an HTTP/1.1 connection is closed at once
    // (`cut`), reading or not; an HTTP/2 stream fails when it is next polled.
    outcome.store(fired, Ordering::Release);
    drop(inner);
    done.end(false);
    drop(tx);
    cut();
}

impl<E: Exchange> Streamed<E> {
    fn finish(&mut self, clean: bool) {
        if let Some(d) = self.done.take() {
            d.end(clean);
        }
    }
}

impl<E: Exchange + Unpin> Body for ProxyBody<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(_) => match std::mem::replace(&mut this.0, Kind::Empty) {
                Kind::Full(b) => Poll::Ready(Some(Ok(Frame::data(*b)))),
                _ => Poll::Ready(None),
            },
            Kind::Upstream(up) => {
                if up.done.is_none() && up.inner.is_end_stream() {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut up.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(d), Some(data)) = (&mut up.done, frame.data_ref()) {
                            d.sent(data.len());
                        }
                        if up.inner.is_end_stream() {
                            up.finish(true);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        up.finish(false);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(None) => {
                        up.finish(true);
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Kind::Timed(r) => match r.frames.poll_recv(cx) {
                Poll::Ready(None) => match r.outcome.load(Ordering::Acquire) {
                    CLEAN => Poll::Ready(None),
                    IDLE => Poll::Ready(Some(Err(Box::new(StreamTimeout("idle timeout"))))),
                    TOTAL => Poll::Ready(Some(Err(Box::new(StreamTimeout("request timeout"))))),
                    FAILED => {
                        Poll::Ready(Some(Err(Box::new(StreamTimeout("upstream body failed")))))
                    }
                    // The task ended without a verdict (the runtime is shutting down): the
                    // body is not whole, so it must not look complete.
                    _ => Poll::Ready(Some(Err(Box::new(StreamTimeout("stream abandoned"))))),
                },
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Full(_) => false,
            Kind::Upstream(up) => up.inner.is_end_stream(),
            Kind::Timed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.len() as u64),
            Kind::Upstream(up) => up.inner.size_hint(),
            Kind::Timed(r) => r.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Materialising puts the backend's fields into the map before what rouse added, so that
    /// an added cookie joins the backend's rather than replacing them; it happens once.
    #[test]
    fn materialised_fields_come_before_the_added_ones() {
        let lines = Bytes::from_static(b"Set-Cookie: b=2\r\nX-A:  1 \r\nx-a: 2\r\n");
        let (_tx, frames) = mpsc::channel(1);
        let mut res = Response::new(ProxyBody::<()>(Kind::Timed(Box::new(Relayed {
            frames,
            outcome: Arc::new(AtomicU8::new(RUNNING)),
            hint: SizeHint::default(),
            verbatim: Some(Verbatim::new(lines, Some(7), false)),
        }))));
        res.headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        crate::http::h1::materialise(&mut res);
        let h = res.headers();
        let cookies: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["b=2", "a=1"]);
        let xa: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(h[header::CONTENT_LENGTH], "7");
        assert_eq!(h.len(), 5);
        assert!(res.body_mut().take_verbatim().is_none());
        crate::http::h1::materialise(&mut res);
        assert_eq!(res.headers().len(), 5, "a second call adds nothing");
    }
}
