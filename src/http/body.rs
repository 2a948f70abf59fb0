//! The response body rouse sends to clients: either a short body of its own (errors, admin,
//! probes) or an upstream body streamed frame by frame, never buffered.
//!
//! An upstream body carries an [`Exchange`]: whatever must happen when the proxied exchange
//! ends (the proxy's is the endpoint lease, the pooled connection and the request's timing).
//! It ends when the body does, or when the body is dropped because the client went away, which
//! is what makes a streaming response count as in flight for as long as it really is. The body
//! is generic over it, so this module knows nothing of revisions and the request path pays no
//! allocation for it. The body also enforces the idle and total timeouts once headers have been
//! sent, by failing the stream (the only way left to signal it).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What happens when a proxied exchange ends: `clean` is true when the upstream body was read
/// to its end (so an HTTP/1.1 connection can carry another exchange).
pub trait Exchange: Send + 'static {
    /// Ends the exchange.
    fn end(self, clean: bool);
}

/// Bodies of rouse's own carry no exchange.
impl Exchange for () {
    fn end(self, _clean: bool) {}
}

/// A response body; `E` is what ends with a streamed upstream body.
#[derive(Debug)]
pub struct ProxyBody<E = ()>(Kind<E>);

#[derive(Debug)]
enum Kind<E> {
    Full(Option<Bytes>),
    Upstream(Streamed<E>),
}

#[derive(Debug)]
struct Streamed<E> {
    inner: Incoming,
    done: Option<E>,
    timer: Option<Timer>,
}

#[derive(Debug)]
struct Timer {
    sleep: Pin<Box<Sleep>>,
    idle: Option<Duration>,
    deadline: Option<Instant>,
}

impl Timer {
    fn next(&self) -> Option<Instant> {
        let idle = self.idle.map(|d| Instant::now() + d);
        match (idle, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

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

impl<E> ProxyBody<E> {
    /// A complete body of rouse's own.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody<E> {
        ProxyBody(Kind::Full(Some(b.into())))
    }

    /// An empty body.
    pub fn empty() -> ProxyBody<E> {
        ProxyBody(Kind::Full(None))
    }

    /// Streams an upstream body; `idle` and `deadline` limit it after headers are sent.
    pub fn upstream(
        inner: Incoming,
        done: E,
        idle: Option<Duration>,
        deadline: Option<Instant>,
    ) -> ProxyBody<E>
    where
        E: Exchange,
    {
        let timer = (idle.is_some() || deadline.is_some()).then(|| {
            let mut t = Timer {
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                idle,
                deadline,
            };
            if let Some(at) = t.next() {
                t.sleep.as_mut().reset(at);
            }
            t
        });
        let mut up = Streamed {
            inner,
            done: Some(done),
            timer,
        };
        // A body that is already complete (no content) must still free its slot and connection
        // even if the server never polls it.
        if up.inner.is_end_stream() {
            up.finish(true);
        }
        ProxyBody(Kind::Upstream(up))
    }
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
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => {
                if up.done.is_none() && up.inner.is_end_stream() {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut up.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(t) = &mut up.timer
                            && let Some(at) = t.next()
                        {
                            t.sleep.as_mut().reset(at);
                        }
                        if up.inner.is_end_stream() {
                            up.finish(true);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        up.finish(false);
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(None) => {
                        up.finish(true);
                        Poll::Ready(None)
                    }
                    Poll::Pending => {
                        let fired = up.timer.as_mut().and_then(|t| {
                            t.sleep.as_mut().poll(cx).is_ready().then(|| {
                                if t.deadline.is_some_and(|d| Instant::now() >= d) {
                                    "request timeout"
                                } else {
                                    "idle timeout"
                                }
                            })
                        });
                        match fired {
                            Some(why) => {
                                up.finish(false);
                                up.timer = None;
                                Poll::Ready(Some(Err(Box::new(StreamTimeout(why)))))
                            }
                            None => Poll::Pending,
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.inner.size_hint(),
        }
    }
}
