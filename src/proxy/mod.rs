//! The request path shared by every role, in the order a request meets it: this file takes
//! the request (host, redirect, timeouts, placeholder, the answer to a failure), [`router`] and
//! [`split`] pick the revision, [`forward`] takes a slot, rewrites and sends the request and
//! streams the response back, and [`completion`] ends the exchange.
//!
//! The route table is read once per request from an `ArcSwap` snapshot, and nothing from it is
//! held across an `.await` except the `Arc<Revision>` that the request is committed to, so a
//! reload never waits for requests and requests never see half a config.

pub mod completion;
pub mod forward;
pub mod quiet;
pub mod rollout;
pub mod router;
pub mod split;
pub mod sticky;

use self::completion::Body;
use self::forward::{COLD_START_HEADER, Ctx, forward};
use self::router::RouteTable;
use crate::clock;
use crate::error::{Answer, Code, Dialect, ProxyError, is_grpc};
use crate::http::body::ProxyBody;
use crate::http::client::{OutBody, Outgoing};
use crate::http::headers::{self, Host, strip_port};
use crate::http::server::{ConnInfo, Handler};
use crate::metrics::Metrics;
use crate::observe::{Observer, Record};
use crate::revision::Revision;
use crate::revision::gauges::LiveRevisions;
use arc_swap::ArcSwap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The gateway's request handler.
#[derive(Debug)]
pub struct Proxy {
    table: ArcSwap<RouteTable>,
    metrics: Arc<Metrics>,
    /// The revisions whose live gauges `/metrics` reports: the current table's.
    live: LiveRevisions,
    /// The table's rollouts, for their gauges.
    rollouts: rollout::LiveRollouts,
    /// Keeps the log of rouse's own 5xx answers readable under overload.
    throttle: Throttle,
    /// The port redirects to HTTPS name; 0 = there is no TLS listener.
    https_port: AtomicU16,
    /// Every cleartext request is redirected to HTTPS.
    redirect_all: AtomicBool,
    dialect: Dialect,
    /// A role's own step before routing, if it has one.
    front: Option<Arc<dyn Front>>,
    /// Counts table swaps, for whoever follows the set of revisions.
    swaps: tokio::sync::watch::Sender<u64>,
    /// The access log and tracer (both off unless configured).
    observer: Arc<Observer>,
}

/// What a [`Front`] decided about a request.
#[derive(Debug)]
pub enum Intercept {
    /// Answered here; the request goes no further.
    Answer(Box<Response<Body>>),
    /// Routed by its host, as it came.
    Pass,
    /// Routed by this host instead: `Host` (and the URI's authority) become it.
    Reroute(Host),
}

/// A step some roles put before routing (Knative's activator contract: its probes, and the
/// revision named by headers rather than the host). Synchronous: it reads and edits headers.
pub trait Front: Send + Sync + std::fmt::Debug + 'static {
    /// Looks at a request whose host (`host`) is known and checked.
    fn intercept(&self, req: &mut Request<OutBody>, host: &Host) -> Intercept;
}

impl Proxy {
    /// A proxy serving `table`.
    pub fn new(table: RouteTable, metrics: Arc<Metrics>) -> Proxy {
        let live = LiveRevisions::register(&metrics);
        live.publish(table.revisions().to_vec());
        let rollouts = rollout::LiveRollouts::register(&metrics);
        rollouts.publish(table.rollouts().to_vec());
        Proxy {
            rollouts,
            table: ArcSwap::from_pointee(table),
            metrics,
            live,
            throttle: Throttle::default(),
            https_port: AtomicU16::new(0),
            redirect_all: AtomicBool::new(false),
            dialect: Dialect::Rouse,
            front: None,
            swaps: tokio::sync::watch::channel(0).0,
            observer: Arc::new(Observer::off()),
        }
    }

    /// Writes an access log line and trace spans per request, as `observer` is set up to.
    pub fn with_observer(mut self, observer: Arc<Observer>) -> Proxy {
        self.observer = observer;
        self
    }

    /// The access log and tracer.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// Puts `front` before routing.
    pub fn with_front(mut self, front: Arc<dyn Front>) -> Proxy {
        self.front = Some(front);
        self
    }

    /// Follows `dialect`'s conventions for error bodies and forwarding headers.
    pub fn with_dialect(mut self, dialect: Dialect) -> Proxy {
        self.dialect = dialect;
        self
    }

    /// Names `port` in redirects to HTTPS, and redirects every cleartext request there when
    /// `all` (otherwise only those of services with `redirect_to_https`).
    pub fn set_https(&self, port: u16, all: bool) {
        self.https_port.store(port, Ordering::Relaxed);
        self.redirect_all.store(all, Ordering::Relaxed);
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces the snapshot; requests already routed finish on the revisions they chose.
    pub fn swap(&self, table: RouteTable) {
        self.live.publish(table.revisions().to_vec());
        self.rollouts.publish(table.rollouts().to_vec());
        self.table.store(Arc::new(table));
        self.swaps.send_modify(|n| *n += 1);
    }

    /// Changes each time the table is swapped.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// The metrics this proxy records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one request; `proxied` marks one that an activator sent (the front that knows
    /// the activator's conventions decides), counted apart in the revision's statistics.
    ///
    /// The request is routed when this is called, before the future is first polled: the
    /// future then holds only what the answer still needs (the forwarding, boxed), not the
    /// routing's request and locals, since it is part of what every request holds while it
    /// waits.
    pub fn serve(
        &self,
        mut req: Box<Outgoing>,
        conn: ConnInfo,
        proxied: bool,
    ) -> impl Future<Output = Response<Body>> {
        // The access log and the traces read the request's fields.
        if self.observer.observes() {
            req.materialise();
        }
        let mut record = self.observer.begin(
            req.method(),
            req.uri().path(),
            req.version(),
            req.headers(),
            conn.peer,
        );
        let head = req.method() == http::Method::HEAD;
        let routed = self.route(req, conn, proxied, head, &mut record);
        async move {
            match routed {
                Routed::Answer(res) => {
                    answered(record, &res, head);
                    *res
                }
                // The forwarding finishes the record it took.
                Routed::Forward(forwarding) => forwarding.await,
            }
        }
    }

    /// Routes one request: rouse's own answer, or the forwarding to a revision, which takes
    /// `record` along (it goes with a proxied response's body, or the forwarding finishes it
    /// with rouse's answer, which has no body to count when `head`). `record`, if any, is
    /// filled in on the way.
    fn route<'a>(
        &'a self,
        mut req: Box<Outgoing>,
        conn: ConnInfo,
        proxied: bool,
        head: bool,
        record: &mut Option<Box<Record>>,
    ) -> Routed<'a> {
        let start = Instant::now();
        let answer = Answer {
            dialect: self.dialect,
            // gRPC runs over HTTP/2 only, so HTTP/1.1 requests skip the header lookup.
            grpc: req.version() == Version::HTTP_2 && is_grpc(req.headers()),
        };
        let https_port = self.https_port.load(Ordering::Relaxed);
        // The cluster-local listener is never redirected: only public cleartext is.
        let public_cleartext = !conn.secure && !conn.internal;
        if https_port != 0 && public_cleartext && self.redirect_all.load(Ordering::Relaxed) {
            return Routed::Answer(Box::new(redirect_to_https(&mut req, https_port, answer)));
        }
        let mut host = match request_host(&mut req) {
            Ok(h) => h,
            Err(e) => {
                self.metrics.unrouted(e.code());
                return Routed::Answer(Box::new(e.into_response_as(answer)));
            }
        };
        if let Some(r) = record {
            r.host.clear();
            r.host.push_str(host.as_str());
        }
        if let Some(front) = &self.front {
            req.materialise();
            match front.intercept(&mut req, &host) {
                Intercept::Answer(res) => return Routed::Answer(res),
                Intercept::Pass => {}
                Intercept::Reroute(h) => {
                    rewrite_authority(&mut req, &h.to_value());
                    if let Some(r) = record {
                        r.host.clear();
                        r.host.push_str(h.as_str());
                    }
                    host = h;
                }
            }
        }
        // Connection-scoped headers go first, so a client's `Connection: x` cannot remove a
        // header that a route sets. The upgrade asked for is read on the way.
        let upgrade = match headers::strip_request_hop_by_hop(req.headers_mut()) {
            Ok(upgrade) => upgrade,
            Err(e) => {
                self.metrics.unrouted(Code::BadRequest);
                return Routed::Answer(Box::new(
                    ProxyError::BadRequest(e.to_string()).into_response_as(answer),
                ));
            }
        };
        // The cookie that pins a new client of a sticky service, for the response.
        let mut set_cookie = None;
        let (rev, timeouts, host, quiet) = {
            let table = self.table.load();
            let Some(svc) = table.service(host.as_bytes(), conn.internal) else {
                self.metrics.unrouted(Code::NoService);
                return Routed::Answer(Box::new(
                    ProxyError::NoService(host.as_str().to_owned()).into_response_as(answer),
                ));
            };
            if svc.reads_fields() {
                req.materialise();
            }
            if svc.redirect_to_https && https_port != 0 && public_cleartext {
                return Routed::Answer(Box::new(redirect_to_https(&mut req, https_port, answer)));
            }
            let Some(route) = svc.route(req.uri().path(), &*req) else {
                self.metrics.unrouted(Code::NoRoute);
                let path = req.uri().path().to_owned();
                return Routed::Answer(Box::new(
                    ProxyError::NoRoute {
                        host: host.as_str().to_owned(),
                        path,
                    }
                    .into_response_as(answer),
                ));
            };
            // Not demand: judged on what the client sent, before any header is set; cloned
            // out only when it matches (health checks, bots).
            let quiet = svc
                .quiet
                .as_ref()
                .filter(|q| q.matches(req.uri().path(), req.headers()))
                .map(|q| (q.answer.clone(), q.answered.clone(), q.passed.clone()));
            for (k, v) in route.set_headers.iter() {
                req.set_field(k, v);
            }
            // The client's host stays what forwarding headers report.
            if let Some(h) = &route.rewrite_host {
                rewrite_authority(&mut req, h);
            }
            let arm = match &svc.sticky {
                None => route.pick(req.headers()),
                Some(sticky) => {
                    let (arm, pin) = route.pick_for(req.headers(), sticky);
                    set_cookie = pin;
                    arm
                }
            };
            for (k, v) in arm.set_headers.iter() {
                req.set_field(k, v);
            }
            (arm.revision.clone(), svc.timeouts, host, quiet)
        };
        if let Some(r) = record {
            r.service = Some(rev.service.clone());
            r.revision = Some(rev.name.clone());
        }
        // A request that is not demand takes a free slot at once or gets its answer: it never
        // waits, never pokes the autoscaler, and is not counted as activity.
        let lease = match quiet {
            None => None,
            Some((answer, answered, passed)) => {
                match rev.held().eq(&0).then(|| rev.try_acquire()).flatten() {
                    Some(l) => {
                        passed.inc();
                        Some(l)
                    }
                    None => {
                        answered.inc();
                        rev.metrics
                            .record(answer.status, start.elapsed().as_secs_f64());
                        return Routed::Answer(Box::new(placeholder(&answer, false)));
                    }
                }
            }
        };
        let deadline = timeouts.request.map(|d| start + d);
        let start_by = clock::earliest(timeouts.response_start.map(|d| start + d), deadline);
        // A request that is not demand has its slot already; the cold answers below (which
        // wake the revision) are not for it.
        let cold = lease.is_none() && rev.is_cold();
        if cold && let Some(p) = rev.settings().cold_start.placeholder.clone() {
            rev.poke();
            rev.metrics.record(p.status, start.elapsed().as_secs_f64());
            let mut res = placeholder(&p, rev.settings().cold_start.header);
            starting(&mut res, rev.starting_for());
            pin(&mut res, set_cookie);
            return Routed::Answer(Box::new(res));
        }
        if cold && rev.settings().cold_start.waiting_page.is_some() {
            // The waiting page is for browsers, told by their `Accept`.
            req.materialise();
        }
        if cold
        && let Some(page) = rev.settings().cold_start.waiting_page.clone()
        && crate::http::waiting::wanted(req.method(), req.headers())
        // After a failed start, its 503 with the reason says more than "starting".
        && !matches!(rev.phase(), crate::revision::phase::Phase::Failed { .. })
        {
            // The page reloads itself; each reload is demand, so the start goes on.
            rev.poke();
            rev.metrics.record(503, start.elapsed().as_secs_f64());
            let so_far = rev.starting_for();
            let page = crate::http::waiting::with_progress(&page, so_far);
            let mut res = waiting_page(page, rev.settings().cold_start.header);
            starting(&mut res, so_far);
            // Its reloads come back to this revision, not to a new roll of the split.
            pin(&mut res, set_cookie);
            return Routed::Answer(Box::new(res));
        }
        let throttle = &self.throttle;
        // What the forwarding's result becomes: the response with the sticky cookie, or
        // rouse's answer for the error, counted and logged; and the request's record, if
        // the response's body did not take it, finished.
        let finish = move |rev: &Arc<Revision>,
                           result: Result<Response<Body>, ProxyError>,
                           record: Option<Box<Record>>| {
            let res = match result {
                Ok(mut res) => {
                    pin(&mut res, set_cookie);
                    res
                }
                Err(e) => {
                    let e = match e {
                        // Report the configured limit, not the time waited.
                        ProxyError::RequestTimeout(_) => {
                            ProxyError::RequestTimeout(timeouts.request.unwrap_or_default())
                        }
                        e => e,
                    };
                    report(rev, &e, throttle);
                    rev.metrics
                        .record(e.status().as_u16(), start.elapsed().as_secs_f64());
                    e.into_response_as(answer)
                }
            };
            answered(record, &res, head);
            res
        };
        // Boxed: the handler future lives inside the client connection for the whole request,
        // held ones included, so it must stay small. The box is taken first and the future
        // made into it, rather than made on the stack and copied in; the context is written
        // in the call too, which lets the compiler make it in place (over 200 bytes).
        let slot = Box::new_uninit();
        let forwarding = Box::write(
            slot,
            forward(
                rev,
                req,
                Ctx {
                    client: conn.client,
                    proto: if conn.secure { "https" } else { "http" },
                    dialect: self.dialect,
                    proxied,
                    host,
                    start,
                    deadline,
                    timeouts,
                    upgrade,
                    grpc: answer.grpc,
                    lease,
                },
                conn.cut,
                record.take(),
                start_by,
                finish,
            ),
        );
        Routed::Forward(Box::into_pin(forwarding))
    }
}

/// Where routing sent a request.
enum Routed<'a> {
    /// rouse answers it itself. Boxed: a held request's future carries this enum, and the
    /// forwarding is the common case.
    Answer(Box<Response<Body>>),
    /// It is forwarded.
    Forward(Forwarding<'a>),
}

/// A request's forwarding: resolves to the answer.
type Forwarding<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// rouse answered a request itself with `res` (a proxied response's record goes with its
/// body): what the request's record, if it has one, says of the answer. The record is
/// written out as it is dropped, here.
fn answered(record: Option<Box<Record>>, res: &Response<Body>, head: bool) {
    let Some(mut r) = record else { return };
    r.status = res.status().as_u16();
    r.bytes = match head {
        true => 0,
        false => http_body::Body::size_hint(res.body()).exact().unwrap_or(0),
    };
    r.error = res
        .headers()
        .get("rouse-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
}

impl Proxy {
    /// An HTTP/1.1 request head refused before it could be routed (see `http::downstream`):
    /// counted as a bad request; its answer.
    pub fn refused_head(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        let e = ProxyError::from(why);
        self.metrics.unrouted(e.code());
        debug!(reason = %why, "request head refused");
        e.http1_close()
    }
}

impl Handler for Proxy {
    type Body = Body;

    /// Not when requests are logged or traced, or a Knative front reads their headers: those
    /// put every request's fields into the map at once.
    fn keeps_fields(&self) -> bool {
        self.front.is_none() && !self.observer.observes()
    }

    fn call(
        &self,
        req: Box<Outgoing>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.serve(req, conn, false)
    }

    fn refused(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        self.refused_head(why)
    }
}

/// Logs a failure rouse answers itself: its own 5xx at WARN with the reason, each time, except
/// that repeats of one code within a second are counted and reported with the next line (a
/// revision at capacity can refuse thousands a second; `rouse_rejected_requests` counts every
/// one); the client's own mistakes at DEBUG.
fn report(rev: &Revision, e: &ProxyError, throttle: &Throttle) {
    let code = e.code();
    if !e.status().is_server_error() {
        debug!(service = %rev.service, revision = %rev.name, code = code.as_str(), error = %e, "request refused");
        return;
    }
    if let Some(suppressed) = throttle.admit(code) {
        warn!(
            service = %rev.service, revision = %rev.name, code = code.as_str(),
            origin = ?code.origin(), similar_since_last = suppressed, "request failed: {e}"
        );
    }
}

/// Per failure code: the second of the last line logged, and how many were held back since.
#[derive(Debug, Default)]
struct Throttle {
    slots: Mutex<HashMap<Code, (u64, u64)>>,
}

impl Throttle {
    /// `Some(held back since the last line)` if a line may be logged now.
    fn admit(&self, code: Code) -> Option<u64> {
        let second = clock::now_ms() / 1000;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = slots.entry(code).or_insert((u64::MAX, 0));
        if *last == second {
            *held += 1;
            return None;
        }
        *last = second;
        Some(std::mem::take(held))
    }
}

/// The host a request is addressed to: the URI authority (HTTP/2 `:authority`, an HTTP/1.1
/// absolute-form target) or else `Host`. Where two could disagree, nothing is left for a
/// backend to read differently (RFC 9112 §3.2, RFC 9113 §8.3.1): two `Host` headers, or an
/// HTTP/2 `host` that differs from `:authority`, are refused; for an HTTP/1.1 absolute-form
/// target the authority wins and `Host` is rewritten to it.
fn request_host(req: &mut Outgoing) -> Result<Host, ProxyError> {
    // Fields kept as the client wrote them have one `Host`, and the target no authority.
    if let Some(f) = &req.fields {
        return match Some(f.host())
            .filter(|h| !h.is_empty())
            .and_then(Host::from_field)
        {
            Some(h) => Ok(h),
            None => Err(ProxyError::MissingHost),
        };
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "the request has more than one Host header; send one".into(),
        ));
    }
    let Some(authority) = req.uri().authority() else {
        return match host.filter(|h| !h.is_empty()).cloned().and_then(Host::new) {
            Some(h) => Ok(h),
            None => Err(ProxyError::MissingHost),
        };
    };
    let authority = Host::from_text(authority.as_str()).ok_or(ProxyError::MissingHost)?;
    match host {
        Some(h) if !h.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => {
            if req.version() == Version::HTTP_2 {
                return Err(ProxyError::BadRequest(
                    "the host header differs from :authority; leave host out or make them agree"
                        .into(),
                ));
            }
            req.headers_mut().insert(header::HOST, authority.to_value());
        }
        _ => {}
    }
    Ok(authority)
}

/// Points the request at `host`: the `Host` header, and the URI's authority where it has one
/// (HTTP/2, or an HTTP/1.1 absolute-form target), so no reader sees the old name.
fn rewrite_authority(req: &mut Request<OutBody>, host: &HeaderValue) {
    req.headers_mut().insert(header::HOST, host.clone());
    if req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = host.to_str().ok().and_then(|h| h.parse().ok());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// 301 to the same host and path over HTTPS.
fn redirect_to_https(req: &mut Outgoing, port: u16, answer: Answer) -> Response<Body> {
    let host = match request_host(req) {
        Ok(h) => h,
        Err(e) => return e.into_response_as(answer),
    };
    let name = strip_port(host.as_str());
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

/// Header on the answers given while a revision starts (placeholder, waiting page): whole
/// seconds it has been starting, a progress signal for clients that wait long.
pub const STARTING_FOR_HEADER: HeaderName = HeaderName::from_static("rouse-starting-for");

/// Adds the cookie that pins a client of a sticky service, if one is due.
fn pin(res: &mut Response<Body>, set_cookie: Option<HeaderValue>) {
    if let Some(c) = set_cookie {
        crate::http::h1::materialise(res);
        res.headers_mut().append(header::SET_COOKIE, c);
    }
}

fn starting(res: &mut Response<Body>, so_far: Option<std::time::Duration>) {
    if let Some(d) = so_far {
        res.headers_mut()
            .insert(STARTING_FOR_HEADER, HeaderValue::from(d.as_secs()));
    }
}

/// The page browsers get while a revision starts: 503 (it is not the page they asked for, and
/// must not be cached), with `Retry-After` matching the page's own reload.
fn waiting_page(page: bytes::Bytes, mark: bool) -> Response<Body> {
    let mut res = Response::new(ProxyBody::full(page));
    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::http::waiting::RELOAD_SECONDS),
    );
    if mark {
        h.insert(COLD_START_HEADER, HeaderValue::from_static("true"));
    }
    res
}

fn placeholder(p: &crate::config::Placeholder, mark: bool) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_second_of_repeats_is_one_line_and_a_count() {
        let t = Throttle::default();
        // Line up with the start of a second, so the three calls below share one.
        let ms = clock::now_ms() % 1000;
        tokio::time::advance(std::time::Duration::from_millis(1000 - ms)).await;
        assert_eq!(t.admit(Code::QueueFull), Some(0));
        assert_eq!(t.admit(Code::QueueFull), None);
        assert_eq!(t.admit(Code::ConnectFailed), Some(0), "each code apart");
        assert_eq!(t.admit(Code::QueueFull), None);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(t.admit(Code::QueueFull), Some(2));
    }
}
