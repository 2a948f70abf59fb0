//! The forwarding path shared by the gateway roles: route → split → take an endpoint slot
//! (holding the request if none is free) → rewrite headers → send → stream the response back.
//!
//! The route table is read once per request from an `ArcSwap` snapshot, and nothing from it is
//! held across an `.await` except the `Arc<Revision>` that the request is committed to, so a
//! reload never waits for requests and requests never see half a config.

use crate::body::{Completion, ProxyBody};
use crate::config::Protocol;
use crate::error::{Dialect, ProxyError};
use crate::headers;
use crate::metrics::{Metrics, Unrouted};
use crate::revision::Revision;
use crate::router::{RouteTable, Timeouts};
use crate::server::{ConnInfo, Handler};
use crate::tunnel;
use crate::upstream::SendError;
use arc_swap::ArcSwap;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::time::Instant;
use tracing::debug;

/// The gateway's request handler.
#[derive(Debug)]
pub struct Proxy {
    table: ArcSwap<RouteTable>,
    metrics: Arc<Metrics>,
    /// When non-zero, cleartext requests are redirected to HTTPS on this port.
    redirect_https: AtomicU16,
    dialect: Dialect,
}

impl Proxy {
    /// A proxy serving `table`.
    pub fn new(table: RouteTable, metrics: Arc<Metrics>) -> Proxy {
        metrics.set_live(table.revisions().to_vec());
        Proxy {
            table: ArcSwap::from_pointee(table),
            metrics,
            redirect_https: AtomicU16::new(0),
            dialect: Dialect::Rouse,
        }
    }

    /// Follows `dialect`'s conventions for error bodies and forwarding headers.
    pub fn with_dialect(mut self, dialect: Dialect) -> Proxy {
        self.dialect = dialect;
        self
    }

    /// Redirects cleartext requests to HTTPS on `port` (`None` = serve them).
    pub fn set_https_redirect(&self, port: Option<u16>) {
        self.redirect_https
            .store(port.unwrap_or(0), Ordering::Relaxed);
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces the snapshot; requests already routed finish on the revisions they chose.
    pub fn swap(&self, table: RouteTable) {
        self.metrics.set_live(table.revisions().to_vec());
        self.table.store(Arc::new(table));
    }

    /// The metrics this proxy records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let https_port = self.redirect_https.load(Ordering::Relaxed);
        if https_port != 0 && !conn.secure {
            return redirect_to_https(&req, https_port);
        }
        let Some(host) = request_host(&req) else {
            self.metrics.unrouted(Unrouted::BadRequest);
            return ProxyError::MissingHost.into_response_in(self.dialect);
        };
        let upgrade = tunnel::requested(req.headers());
        // Connection-scoped headers go first, so a client's `Connection: x` cannot remove a
        // header that a route sets.
        headers::strip_hop_by_hop(req.headers_mut());
        let (rev, timeouts) = {
            let table = self.table.load();
            let Some(svc) = table.service(&host) else {
                self.metrics.unrouted(Unrouted::NoService);
                return ProxyError::NoService(host).into_response_in(self.dialect);
            };
            let route = svc.route(req.uri().path(), req.headers());
            for (k, v) in route.set_headers.iter() {
                req.headers_mut().insert(k.clone(), v.clone());
            }
            let arm = route.pick(req.headers());
            for (k, v) in arm.set_headers.iter() {
                req.headers_mut().insert(k.clone(), v.clone());
            }
            (arm.revision.clone(), svc.timeouts)
        };
        let deadline = timeouts.request.map(|d| start + d);
        let start_by = match (timeouts.response_start.map(|d| start + d), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if rev.is_cold()
            && let Some(p) = rev.settings().cold_start.placeholder.clone()
        {
            rev.poke();
            rev.metrics.record(p.status, start.elapsed().as_secs_f64());
            return placeholder(&p, rev.settings().cold_start.header);
        }
        // Boxed: the handler future lives inside the client connection for the whole request,
        // held ones included, so it must stay small; and a boxed future is not laid out twice
        // by the two branches below.
        let ctx = Ctx {
            client: conn.client,
            proto: if conn.secure { "https" } else { "http" },
            dialect: self.dialect,
            host,
            start,
            deadline,
            timeouts,
            upgrade,
        };
        let forwarding = Box::pin(forward(&rev, req, ctx));
        let result = match start_by {
            None => forwarding.await,
            Some(t) => match tokio::time::timeout_at(t, forwarding).await {
                Ok(r) => r,
                Err(_) => Err(timeout_error(timeouts, deadline, t)),
            },
        };
        match result {
            Ok(res) => res,
            Err(e) => {
                let e = match e {
                    // Report the configured limit, not the time waited.
                    ProxyError::RequestTimeout(_) => {
                        ProxyError::RequestTimeout(timeouts.request.unwrap_or_default())
                    }
                    e => e,
                };
                debug!(revision = %rev.name, error = %e, "request failed");
                rev.metrics
                    .record(e.status().as_u16(), start.elapsed().as_secs_f64());
                e.into_response_in(self.dialect)
            }
        }
    }
}

impl Handler for Proxy {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        self.handle(req, conn)
    }
}

fn timeout_error(t: Timeouts, deadline: Option<Instant>, fired: Instant) -> ProxyError {
    match (deadline, t.response_start) {
        (Some(d), _) if d <= fired => ProxyError::RequestTimeout(t.request.unwrap_or_default()),
        (_, Some(rs)) => ProxyError::ResponseStartTimeout(rs),
        _ => ProxyError::RequestTimeout(t.request.unwrap_or_default()),
    }
}

/// The host a request is addressed to: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    let h = req.headers().get(header::HOST)?.to_str().ok()?;
    (!h.is_empty()).then(|| h.to_owned())
}

/// Declared request body size, for the queue's byte bound.
fn declared_len(req: &Request<Incoming>) -> u64 {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What `forward` needs besides the revision and the request.
struct Ctx {
    client: crate::headers::ClientAddr,
    proto: &'static str,
    dialect: Dialect,
    host: String,
    start: Instant,
    deadline: Option<Instant>,
    timeouts: Timeouts,
    /// The protocol a client asked to upgrade to (WebSocket), if any.
    upgrade: Option<HeaderValue>,
}

async fn forward(
    rev: &Arc<Revision>,
    mut req: Request<Incoming>,
    ctx: Ctx,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Only Knative's stats tell activator-sent requests apart; the gateway skips the lookup.
    let proxied = ctx.dialect == Dialect::Knative && crate::knative::is_proxied(req.headers());
    let active = rev.begin(proxied);
    let protocol = rev.protocol.for_request(req.version());
    if ctx.upgrade.is_some() && protocol == Protocol::H2c {
        return Err(ProxyError::UpgradeOverH2c(rev.name.to_string()));
    }
    let acquired = rev.acquire(declared_len(&req), ctx.deadline).await?;
    // One settings snapshot for the whole request.
    let settings = rev.settings();
    let tls_upstream = settings.pool.tls.is_some();
    prepare(&mut req, protocol, tls_upstream, &ctx);
    let client_upgrade = ctx.upgrade.map(|proto| {
        tunnel::mark(req.headers_mut(), proto);
        hyper::upgrade::on(&mut req)
    });
    let mark_cold = acquired.cold && settings.cold_start.header;
    let mut lease = acquired.lease;
    let mut retried = false;
    loop {
        let ep = lease.endpoint().clone();
        // The send path (connect, handshake, exchange) is the largest state of this future;
        // boxing it keeps a request that is only waiting in the queue small.
        let sent = match protocol {
            Protocol::Http1 | Protocol::Auto => Box::pin(ep.pool.send_h1(ep.addr, req))
                .await
                .map(|(r, c)| (r, Some(c))),
            Protocol::H2c => Box::pin(ep.pool.send_h2(ep.addr, req))
                .await
                .map(|r| (r, None)),
        };
        match sent {
            Ok((mut res, conn)) => {
                let status = res.status().as_u16();
                let switching = status == 101 && client_upgrade.is_some();
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut res));
                let proto = res.headers().get(header::UPGRADE).cloned();
                // An upgraded connection never returns to the pool.
                let conn = if switching { None } else { conn };
                let done = Completion::new(lease, conn, ctx.start, status, active);
                let mut res = match (client_upgrade, upstream_upgrade) {
                    (Some(client), Some(upstream)) => {
                        let (mut parts, _) = res.into_parts();
                        headers::strip_hop_by_hop(&mut parts.headers);
                        if let Some(p) = proto {
                            tunnel::mark(&mut parts.headers, p);
                        }
                        tunnel::spawn(client, upstream, done, ctx.timeouts.idle);
                        Response::from_parts(parts, ProxyBody::empty())
                    }
                    _ => {
                        let deadline = ctx.deadline.filter(|_| !ctx.timeouts.exempt_streams);
                        respond(res, done, deadline, ctx.timeouts)
                    }
                };
                if mark_cold {
                    res.headers_mut()
                        .insert(COLD_START_HEADER, HeaderValue::from_static("true"));
                }
                return Ok(res);
            }
            Err(SendError::Failed(source)) => {
                return Err(ProxyError::Upstream {
                    endpoint: ep.addr,
                    source,
                });
            }
            Err(SendError::Connect { req: back, error }) => {
                ep.metrics.connect_errors.inc();
                ep.eject(settings.eject_for);
                debug!(endpoint = %ep.addr, %error, retried, "connect failed");
                if retried {
                    return Err(connect_error(ep.addr, error));
                }
                // The request never left rouse: give the slot back and take one elsewhere (the
                // failed endpoint is now ejected, so it is chosen again only if it is the last).
                retried = true;
                drop(lease);
                lease = match rev.acquire(0, ctx.deadline).await {
                    Ok(a) => a.lease,
                    Err(_) => return Err(connect_error(ep.addr, error)),
                };
                req = *back;
            }
        }
    }
}

fn connect_error(endpoint: SocketAddr, e: crate::upstream::ConnectError) -> ProxyError {
    match e {
        crate::upstream::ConnectError::Timeout(timeout) => {
            ProxyError::ConnectTimeout { endpoint, timeout }
        }
        other => ProxyError::Connect {
            endpoint,
            reason: other.to_string(),
        },
    }
}

/// 301 to the same host and path over HTTPS.
fn redirect_to_https(req: &Request<Incoming>, port: u16) -> Response<ProxyBody> {
    let Some(host) = request_host(req) else {
        return ProxyError::MissingHost.into_response();
    };
    let name = crate::config::strip_port(&host);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{name}{pq}")
    } else {
        format!("https://{name}:{port}{pq}")
    };
    let mut res = Response::new(ProxyBody::empty());
    *res.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::try_from(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Marks responses that waited for a cold revision.
const COLD_START_HEADER: HeaderName = HeaderName::from_static("rouse-cold-start");

fn placeholder(p: &crate::config::Placeholder, mark: bool) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(p.body.clone()));
    *res.status_mut() =
        http::StatusCode::from_u16(p.status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    for (k, v) in &p.headers {
        // Validation has checked every name and value.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            res.headers_mut().insert(k, v);
        }
    }
    if mark {
        res.headers_mut()
            .insert(COLD_START_HEADER, HeaderValue::from_static("true"));
    }
    res
}

fn respond(
    res: Response<Incoming>,
    done: Completion,
    deadline: Option<Instant>,
    timeouts: Timeouts,
) -> Response<ProxyBody> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The client's connection has its own version; an HTTP/1.0 backend must not make rouse
    // answer an HTTP/1.1 client as HTTP/1.0.
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, done, timeouts.idle, deadline),
    )
}

/// Rewrites a client request into the upstream request for `protocol`.
fn prepare(req: &mut Request<Incoming>, protocol: Protocol, tls: bool, ctx: &Ctx) {
    let host = ctx.host.as_str();
    let h = req.headers_mut();
    // rouse answers `Expect: 100-continue` itself when the body is first read.
    h.remove(header::EXPECT);
    match ctx.dialect {
        Dialect::Rouse => headers::add_forwarded(h, &ctx.client, ctx.proto, host),
        Dialect::Knative => headers::add_forwarded_knative(h, &ctx.client),
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        Protocol::Http1 | Protocol::Auto => {
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = Version::HTTP_11;
            // A route may have set Host; an HTTP/2 client sent none, only an authority.
            if !req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(host)
            {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        Protocol::H2c => {
            // The upstream authority: a route may have rewritten Host; otherwise the client's.
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(host);
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = authority.parse().ok();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
        }
    }
}
