//! The response body rouse sends to clients: either a short body of its own (errors, admin) or
//! an upstream body streamed frame by frame, never buffered.
//!
//! An upstream body carries the request's [`Completion`]: the endpoint [`Lease`], the pooled
//! connection and the start time. They are released when the body ends (or is dropped because
//! the client went away), which is what makes a streaming response or an upgraded connection
//! count as in flight for as long as it really is. The body also enforces the idle and total
//! timeouts once headers have been sent, by failing the stream (the only way left to signal it).

use crate::revision::{Active, Lease};
use crate::upstream::Pooled;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
#[derive(Debug)]
pub struct ProxyBody(Kind);

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Upstream),
}

#[derive(Debug)]
struct Upstream {
    inner: Incoming,
    done: Option<Completion>,
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

/// What happens when a proxied exchange ends.
#[derive(Debug)]
pub struct Completion {
    lease: Option<Lease>,
    _active: Active,
    conn: Option<Pooled>,
    start: Instant,
    status: u16,
    clean: bool,
}

impl Completion {
    /// Ties a lease (and an HTTP/1.1 connection to return) to a response of `status`; the
    /// request stays counted as active for autoscaling until this drops.
    pub fn new(
        lease: Lease,
        conn: Option<Pooled>,
        start: Instant,
        status: u16,
        active: Active,
    ) -> Completion {
        Completion {
            lease: Some(lease),
            _active: active,
            conn,
            start,
            status,
            clean: false,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            // Return the connection before the slot, so a request woken by the freed slot finds
            // a warm connection.
            if let Some(conn) = self.conn.take()
                && self.clean
            {
                lease.endpoint().pool.put(conn);
            }
            lease
                .revision()
                .metrics
                .record(self.status, self.start.elapsed().as_secs_f64());
        }
    }
}

impl ProxyBody {
    /// A complete body of rouse's own.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody(Kind::Full(Some(b.into())))
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody(Kind::Full(None))
    }

    /// Streams an upstream body; `idle` and `deadline` limit it after headers are sent.
    pub fn upstream(
        inner: Incoming,
        done: Completion,
        idle: Option<Duration>,
        deadline: Option<Instant>,
    ) -> ProxyBody {
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
        let mut up = Upstream {
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

impl Upstream {
    fn finish(&mut self, clean: bool) {
        if let Some(mut d) = self.done.take() {
            d.clean = clean;
        }
    }
}

impl Body for ProxyBody {
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
