//! Forwarding one routed request: count it as active, take an endpoint slot (held in the
//! revision's queue while none is free), rewrite the request for the upstream protocol, send
//! it (retrying once, elsewhere, only when the connection failed before anything was sent),
//! and stream the response back carrying the exchange's [`Completion`]; a `101` becomes a
//! tunnel.

use super::completion::{Body, Completion};
use super::router::Timeouts;
use crate::config::Protocol;
use crate::error::{Dialect, ProxyError};
use crate::http::body::{Cut, Limits};
use crate::http::client::{BodyFault, ConnectError, OutBody, Outgoing, SendError};
use crate::http::headers::{self, ClientAddr, Hop, Host};
use crate::http::tunnel;
use crate::http::upstream::UpBody;
use crate::observe::Record;
use crate::revision::{Acquired, Lease, Revision};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Response, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::debug;

/// Marks responses that waited for a cold revision.
pub const COLD_START_HEADER: HeaderName = HeaderName::from_static("rouse-cold-start");

/// Declared request body size, for the queue's byte bound.
fn declared_len(req: &Outgoing) -> u64 {
    // A route may have set a length in the map of a request whose lines have none.
    if let Some(n) = req.fields.as_ref().and_then(|f| f.length()) {
        return n;
    }
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What `forward` needs besides the revision and the request.
pub struct Ctx {
    /// The client's address, formatted for forwarding headers.
    pub client: Arc<ClientAddr>,
    /// `http` or `https`: how the client reached rouse.
    pub proto: &'static str,
    /// Whose forwarding-header conventions to follow.
    pub dialect: Dialect,
    /// Sent by an activator (counted apart in the revision's statistics).
    pub proxied: bool,
    /// The host the request is addressed to.
    pub host: Host,
    /// When the request arrived.
    pub start: Instant,
    /// The request's own deadline (`timeouts.request`).
    pub deadline: Option<Instant>,
    /// The service's timeouts.
    pub timeouts: Timeouts,
    /// The protocol a client asked to upgrade to (WebSocket), if any.
    pub upgrade: Option<HeaderValue>,
    /// A gRPC request: to the backend's gRPC port, if it has one of its own.
    pub grpc: bool,
    /// A slot already taken for a request that is not demand (`no_wake`): it is used, and
    /// the request is not counted as the revision's activity.
    pub lease: Option<Lease>,
}

/// Forwards `req` to `rev`: what `finish` makes of the result (the response to stream back,
/// or rouse's answer for an error), given the request's record unless the response's body
/// took it. `start_by` is the time limit up to the response's head; `cut` closes the client's
/// connection, when a time limit must stop an HTTP/1.1 response.
///
/// This future is what every held request keeps while it waits, so it keeps each thing once:
/// it is a function returning an `async move` block (an `async fn` keeps its arguments twice,
/// as given and again as locals); it waits for a slot with the request (boxed since the
/// listener, [`Outgoing`]) and its context in place, borrowed; and what follows the slot (the
/// rewrite, the exchange, a retry) runs in a future of its own, boxed once the slot is taken,
/// which the request and context move into. A request waiting for a slot holds none of that
/// later state.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn forward<'a, F>(
    rev: Arc<Revision>,
    req: Box<Outgoing>,
    mut ctx: Ctx,
    cut: Cut,
    mut record: Option<Box<Record>>,
    start_by: Option<Instant>,
    finish: F,
) -> impl Future<Output = Response<Body>> + Send + 'a
where
    F: FnOnce(
            &Arc<Revision>,
            Result<Response<Body>, ProxyError>,
            Option<Box<Record>>,
        ) -> Response<Body>
        + Send
        + 'a,
{
    async move {
        let taken = ctx.lease.take();
        // Not demand (`no_wake`): it must never wait or wake the revision, retries included.
        let quiet = taken.is_some();
        let active = match taken {
            Some(_) => rev.begin_quiet(),
            // Active since it arrived: the clock read then serves.
            None => rev.begin_at(ctx.proxied, ctx.start),
        };
        // gRPC for backends with a gRPC port of their own goes there, over h2c.
        let to_grpc = ctx.grpc && rev.settings().grpc_port.is_some();
        let protocol = match to_grpc {
            true => Protocol::H2c,
            false => rev.protocol.for_request(req.version()),
        };
        if ctx.upgrade.is_some() && protocol == Protocol::H2c {
            let e = ProxyError::UpgradeOverH2c(rev.name.to_string());
            return finish(&rev, Err(e), record);
        }
        // The time limit up to the response's head: an HTTP/1.1 connection's task wakes the
        // request at it (one timer for the connection, `Cut::wake_at`; this future must be
        // polled by that task, never spawned apart), and the request reads the clock when
        // polled; otherwise a timer of its own, boxed, and only with a time
        // limit: the common case keeps eight bytes for it.
        let (mut sleep, limit) = match start_by {
            Some(t) if cut.wake_at(t) => (None, Some(t)),
            t => (t.map(|t| Box::pin(tokio::time::sleep_until(t))), None),
        };
        let acquired = match taken {
            Some(lease) => Acquired {
                lease,
                waited: None,
                cold: false,
            },
            None => {
                if let Some(r) = &mut record {
                    r.holding(rev.is_cold());
                }
                match rev.acquire_now() {
                    Some(a) => a,
                    None => {
                        // Only a request that must wait pays for the wait's future, boxed:
                        // inline, it would make every request's forwarding larger than the
                        // allocator's cheap sizes.
                        // Its box taken before the future is made into it (see below).
                        let slot = Box::new_uninit();
                        let acquire =
                            Box::write(slot, rev.acquire(declared_len(&req), ctx.deadline));
                        let mut acquire = Box::into_pin(acquire);
                        match (Within {
                            fut: acquire.as_mut(),
                            sleep: sleep.as_mut().map(|s| s.as_mut()),
                            limit,
                        })
                        .await
                        {
                            Ok(Ok(a)) => a,
                            Ok(Err(e)) => return finish(&rev, Err(e), record),
                            Err(fired) => {
                                let e = timeout_error(ctx.timeouts, ctx.deadline, fired);
                                return finish(&rev, Err(e), record);
                            }
                        }
                    }
                }
            }
        };
        if let Some(r) = &mut record {
            r.acquired(acquired.waited, acquired.cold);
        }
        // For the answer when the limit runs out, after the context has moved on; taken here,
        // not before the wait, so that a held request does not keep them twice.
        let (timeouts, deadline) = (ctx.timeouts, ctx.deadline);
        // The box first, then the future made into it: made first, the future (over 800
        // bytes) was copied from the stack into its box.
        let slot = Box::new_uninit();
        let mut exchange = Box::into_pin(Box::write(
            slot,
            exchange(
                &rev,
                req,
                &mut ctx,
                cut,
                Taken {
                    acquired,
                    active,
                    quiet,
                    protocol,
                    to_grpc,
                },
                &mut record,
            ),
        ));
        let result = match (Within {
            fut: exchange.as_mut(),
            sleep: sleep.as_mut().map(|s| s.as_mut()),
            limit,
        })
        .await
        {
            Ok(r) => r,
            Err(fired) => Err(timeout_error(timeouts, deadline, fired)),
        };
        drop(exchange);
        finish(&rev, result, record)
    }
}

/// `fut`'s output, or the deadline if `sleep` (the request's time limit) ends first, or if
/// `limit` has passed when this is polled (the connection's task wakes it then). Both are
/// pinned where the caller keeps them, so this holds two references.
struct Within<'f, 's, F> {
    fut: std::pin::Pin<&'f mut F>,
    sleep: Option<std::pin::Pin<&'s mut tokio::time::Sleep>>,
    limit: Option<Instant>,
}

impl<F: Future> Future for Within<'_, '_, F> {
    type Output = Result<F::Output, Instant>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if let Some(l) = self.limit
            && Instant::now() >= l
        {
            return Poll::Ready(Err(l));
        }
        let Some(s) = &mut self.sleep else {
            return Poll::Pending;
        };
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(s.deadline())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the wait for a slot hands on to the exchange.
struct Taken {
    acquired: Acquired,
    active: crate::revision::Active,
    quiet: bool,
    protocol: Protocol,
    to_grpc: bool,
}

/// The time limit up to the response's head ran out at `fired`: which limit it was.
pub fn timeout_error(t: Timeouts, deadline: Option<Instant>, fired: Instant) -> ProxyError {
    match (deadline, t.response_start) {
        (Some(d), _) if d <= fired => ProxyError::RequestTimeout(t.request.unwrap_or_default()),
        (_, Some(rs)) => ProxyError::ResponseStartTimeout(rs),
        _ => ProxyError::RequestTimeout(t.request.unwrap_or_default()),
    }
}

/// Everything after the slot is taken: the request rewritten for the upstream, sent (once more
/// elsewhere if the connection failed before anything was sent), and the response made ready
/// to stream back.
///
/// The rewrite runs before the future is made, in the request's box, so that the future
/// keeps only what the exchange needs: that box, and the few fields of the context it reads.
/// Kept small, this future's box is one the allocator serves from its per-thread cache. The
/// context is borrowed from the forwarding, not moved (over 200 bytes, a call to `memcpy`).
fn exchange<'a>(
    rev: &'a Arc<Revision>,
    mut req: Box<Outgoing>,
    ctx: &mut Ctx,
    cut: Cut,
    taken: Taken,
    record: &'a mut Option<Box<Record>>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    let Taken {
        acquired,
        active,
        quiet,
        protocol,
        to_grpc,
    } = taken;
    // One settings snapshot for the rewrite and the cold mark, borrowed: it is dropped before
    // the exchange's future runs.
    let settings = rev.settings_now();
    req.hop = prepare(&mut req, protocol, settings.pool.tls.is_some(), ctx);
    let (start, deadline, timeouts) = (ctx.start, ctx.deadline, ctx.timeouts);
    let client_upgrade = ctx.upgrade.take().and_then(|proto| {
        tunnel::mark(req.headers_mut(), proto);
        crate::http::downstream::on_upgrade(&mut req.req)
    });
    // Only a request with a body can have it fail; where it records that goes into the body
    // in place.
    let fault =
        (!http_body::Body::is_end_stream(req.body())).then(|| Arc::new(BodyFault::default()));
    if let OutBody::Client(_, watch) = req.body_mut() {
        watch.clone_from(&fault);
    }
    let mark_cold = acquired.cold && settings.cold_start.header;
    let eject_for = settings.eject_for;
    drop(settings);
    let mut lease = acquired.lease;
    // The clock as the pool judges its idle connections by: a request that took its slot at
    // once arrived a moment ago, and that reading serves; one that waited reads it anew.
    let mut recent = acquired.waited.is_none().then_some(start);
    async move {
        let mut retried = false;
        loop {
            let ep = lease.endpoint().clone();
            let to = match to_grpc {
                true => ep.grpc.unwrap_or(ep.addr),
                false => ep.addr,
            };
            if let Some(r) = record {
                r.send(to, req.headers_mut());
            }
            // HTTP/1.1's send path (under 300 bytes, the request boxed and a connect boxed
            // apart) is kept in this future rather than in a second allocation; HTTP/2's
            // (hyper's client, tens of KB) is boxed apart.
            let sent = match protocol {
                Protocol::Http1 | Protocol::Auto => ep.pool.send_h1(to, req, recent).await,
                Protocol::H2c => {
                    // Made in its box, not on the stack and copied in (see above).
                    let slot = Box::new_uninit();
                    Box::into_pin(Box::write(slot, ep.pool.send_h2(to, req))).await
                }
            };
            match sent {
                Ok(mut res) => {
                    let status = res.status().as_u16();
                    let switching = status == 101 && client_upgrade.is_some();
                    // An upgraded connection is the tunnel's; it never returns to the pool.
                    let upstream_upgrade = switching
                        .then(|| crate::http::upstream::upgraded(res.body_mut()))
                        .flatten();
                    let proto = res.headers().get(header::UPGRADE).cloned();
                    let done =
                        Completion::new(lease, start, status, active).with_record(record.take());
                    let mut res = match (client_upgrade, upstream_upgrade) {
                        (Some(client), Some(upstream)) => {
                            let (mut parts, _) = res.into_parts();
                            headers::strip_hop_by_hop(&mut parts.headers);
                            if let Some(p) = proto {
                                tunnel::mark(&mut parts.headers, p);
                            }
                            tunnel::spawn(client, upstream, (done, cut.hold()), timeouts.idle);
                            Response::from_parts(parts, Body::empty())
                        }
                        _ => {
                            let limits = Limits {
                                idle: timeouts.idle,
                                deadline: deadline.filter(|_| !timeouts.exempt_streams),
                            };
                            respond(res, done, limits, cut)
                        }
                    };
                    if mark_cold {
                        crate::http::h1::materialise(&mut res);
                        res.headers_mut()
                            .insert(COLD_START_HEADER, HeaderValue::from_static("true"));
                    }
                    return Ok(res);
                }
                Err(SendError::Failed(source)) => {
                    let recorded = fault.as_ref().and_then(|f| f.reason()).map(str::to_owned);
                    if let Some(reason) =
                        recorded.or_else(|| source.h2().and_then(client_body_error))
                    {
                        return Err(ProxyError::ClientBody(reason));
                    }
                    return Err(ProxyError::Upstream {
                        endpoint: to,
                        source,
                    });
                }
                Err(SendError::Connect { req: back, error }) => {
                    ep.metrics.connect_errors.inc();
                    ep.eject(eject_for);
                    debug!(endpoint = %to, %error, retried, "connect failed");
                    if retried {
                        return Err(connect_error(to, error));
                    }
                    // The request never left rouse: give the slot back and take one elsewhere (the
                    // failed endpoint is now ejected, so it is chosen again only if it is the last).
                    retried = true;
                    recent = None;
                    drop(lease);
                    let again = match quiet {
                        true => (rev.held() == 0).then(|| rev.try_acquire()).flatten(),
                        false => rev.acquire(0, deadline).await.ok().map(|a| a.lease),
                    };
                    lease = match again {
                        Some(l) => l,
                        None => return Err(connect_error(to, error)),
                    };
                    req = back;
                }
            }
        }
    }
}

/// The client's fault behind a failed HTTP/2 exchange, if it was the request body that failed:
/// hyper's client reports an error of the body it was sending as a user error whose cause is
/// the body's own (hyper's, reading the client's request). A backend is not to blame for a
/// body that was malformed or cut short.
fn client_body_error(e: &hyper::Error) -> Option<String> {
    use std::error::Error as _;
    if !e.is_user() {
        return None;
    }
    let cause = e.source()?.downcast_ref::<hyper::Error>()?;
    Some(cause.to_string())
}

fn connect_error(endpoint: SocketAddr, e: ConnectError) -> ProxyError {
    match e {
        ConnectError::Timeout(timeout) => ProxyError::ConnectTimeout { endpoint, timeout },
        other => ProxyError::Connect {
            endpoint,
            reason: other.to_string(),
        },
    }
}

fn respond(res: Response<UpBody>, done: Completion, limits: Limits, cut: Cut) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The client's connection has its own version; an HTTP/1.0 backend must not make rouse
    // answer an HTTP/1.1 client as HTTP/1.0.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, Body::timed(body, done, limits, move || cut.fire()))
}

/// Rewrites a client request into the upstream request for `protocol`. The forwarding fields
/// of a request that came without any are kept aside for the HTTP/1.1 writer (the hop
/// returned); HTTP/2's, and those that join earlier hops', go into the map.
fn prepare(req: &mut Outgoing, protocol: Protocol, tls: bool, ctx: &mut Ctx) -> Option<Hop> {
    // HTTP/2's head is written from the map alone.
    if protocol == Protocol::H2c {
        req.materialise();
    }
    // Fields kept as the client wrote them hold its `Host`, and no `Expect` or forwarding
    // field (`Lines`).
    let kept = req.fields.is_some();
    let h = req.req.headers_mut();
    // One pass over the names instead of a hash lookup each (most requests have none of
    // these), which also tells whether the client sent forwarding fields of its own.
    let (mut expect, mut has_host, mut forwarded) = (false, kept, false);
    for k in h.keys() {
        expect |= k == header::EXPECT;
        has_host |= k == header::HOST;
        forwarded |= headers::is_forwarding_name(k.as_str().as_bytes());
    }
    // rouse answers `Expect: 100-continue` itself when the body is first read.
    if expect {
        h.remove(header::EXPECT);
    }
    let proto = match ctx.dialect {
        Dialect::Rouse => Some(ctx.proto),
        Dialect::Knative => None,
    };
    // The hop takes the host along (nothing after the rewrite reads it).
    let hop = match protocol {
        Protocol::Http1 | Protocol::Auto => {
            Hop::unless_forwarded(forwarded, &ctx.client, proto, &mut ctx.host)
        }
        Protocol::H2c => None,
    };
    let host = match &hop {
        Some(hop) => hop.host(),
        None => &ctx.host,
    };
    if hop.is_none() {
        match proto {
            Some(proto) => headers::add_forwarded(h, &ctx.client, proto, host),
            None => headers::add_forwarded_knative(h, &ctx.client),
        }
    }
    let pq = || {
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    match protocol {
        Protocol::Http1 | Protocol::Auto => {
            // Most targets are in origin form already (a path and query, no scheme or
            // authority), which is what an HTTP/1.1 upstream is sent: kept as they are.
            if req.uri().scheme().is_some() || req.uri().path_and_query().is_none() {
                *req.uri_mut() = Uri::from(pq());
            }
            *req.version_mut() = Version::HTTP_11;
            // A route may have set Host; an HTTP/2 client sent none, only an authority.
            if !has_host {
                req.headers_mut().insert(header::HOST, host.to_value());
            }
        }
        Protocol::H2c => {
            // The upstream authority: a route may have rewritten Host; otherwise the client's.
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(host.as_str());
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = authority.parse().ok();
            parts.path_and_query = Some(pq());
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
        }
    }
    hop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::downstream::parse_head;
    use bytes::BytesMut;

    fn kept(head: &str) -> Outgoing {
        let mut buf = BytesMut::from(head.as_bytes());
        let p = parse_head(&mut buf, 1 << 16, true).unwrap().unwrap();
        assert!(p.request.fields.is_some(), "{head:?}");
        *p.request
    }

    /// What `prepare` needs of the request's context, for a plain HTTP/1.1 request.
    fn ctx() -> Ctx {
        Ctx {
            client: Arc::new(ClientAddr::new(
                std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
            )),
            proto: "http",
            dialect: Dialect::Rouse,
            proxied: false,
            host: Host::from_field(bytes::Bytes::from_static(b"a.example")).unwrap(),
            start: Instant::now(),
            deadline: None,
            timeouts: Timeouts::default(),
            upgrade: None,
            grpc: false,
            lease: None,
        }
    }

    /// An HTTP/1.1 upstream gets the target in origin form: an absolute-form target is
    /// rewritten to its path and query (`/` when it has none), one in origin form (or `*`)
    /// goes as it came.
    #[test]
    fn an_http1_upstream_gets_the_target_in_origin_form() {
        for (head, want) in [
            (
                "GET http://a.example/p?q HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "/p?q",
            ),
            (
                "GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "/",
            ),
            ("GET /p?q HTTP/1.1\r\nHost: a.example\r\n\r\n", "/p?q"),
            ("OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n", "*"),
        ] {
            let mut buf = BytesMut::from(head.as_bytes());
            let mut req = parse_head(&mut buf, 1 << 16, true)
                .unwrap()
                .unwrap()
                .request;
            prepare(&mut req, Protocol::Http1, false, &mut ctx());
            assert_eq!(req.uri(), want, "{head:?}");
            assert!(req.uri().scheme().is_none() && req.uri().authority().is_none());
            assert_eq!(req.version(), Version::HTTP_11);
        }
    }

    /// The queue's byte bound counts a request's declared length: its own, kept with its
    /// lines, or else one a route set in its map.
    #[test]
    fn the_declared_length_is_the_lines_or_else_the_maps() {
        let with = kept("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(declared_len(&with), 7);
        let mut without = kept("POST / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(declared_len(&without), 0);
        without.set_field(&header::CONTENT_LENGTH, &HeaderValue::from_static("9"));
        assert!(
            without.fields.is_some(),
            "the lines hold no length to replace"
        );
        assert_eq!(declared_len(&without), 9);
    }
}
