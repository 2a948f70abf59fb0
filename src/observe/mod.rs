//! What operators see of each request, beyond the metrics: an access log line ([`access`])
//! and a trace span with children for the hold and the upstream exchange ([`trace`]).
//!
//! Both are optional and off by default. When both are off, a request costs one branch on an
//! `Option` here and nothing else: no [`Record`] is made. When either is on, a request
//! carries one boxed [`Record`] from arrival to the end of its response body (the
//! [`Completion`](crate::proxy::completion::Completion) holds it while the body streams), and
//! dropping the record writes the line and ends the spans, whichever way the request ended.

pub mod access;
pub mod trace;

use http::{HeaderMap, Method, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The access log and the tracer of one rouse process.
#[derive(Debug, Default)]
pub struct Observer {
    access: Option<access::AccessLog>,
    tracer: Option<trace::Tracer>,
}

/// Sets up what the config and the environment ask for: an access log when `access` gives
/// where it goes and its format (the config's `access_log.to` and `.format`), and traces
/// when an `OTEL_*` variable names an endpoint (`knative`: queue-proxy's tracing settings too).
pub async fn start(
    access: Option<(&str, &str)>,
    metrics: &crate::metrics::Metrics,
    knative: Option<&trace::KnativeTracing>,
) -> std::io::Result<Observer> {
    let access = match access {
        Some((to, format)) => {
            let format = access::Format::parse(format).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("access_log.format: {e}"),
                )
            })?;
            Some(
                access::AccessLog::start(
                    access::Sink::parse(to),
                    format,
                    metrics.access_log_dropped.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let tracer = trace::Tracer::from_env(knative).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("tracing: {e}"))
    })?;
    Ok(Observer::new(access, tracer))
}

impl Observer {
    /// An observer that records nothing.
    pub fn off() -> Observer {
        Observer::default()
    }

    /// Writes an access log line per request (if `access`) and traces requests (if `tracer`).
    pub fn new(access: Option<access::AccessLog>, tracer: Option<trace::Tracer>) -> Observer {
        Observer { access, tracer }
    }

    /// Sends the spans still batched; at exit.
    pub async fn shutdown(&self) {
        if let Some(a) = &self.access {
            a.flush().await;
        }
        if let Some(t) = &self.tracer {
            t.shutdown().await;
        }
    }

    /// True when requests are logged or traced: their records read their fields.
    #[inline]
    pub fn observes(&self) -> bool {
        self.access.is_some() || self.tracer.is_some()
    }

    /// A record for a request arriving now, or `None` when nothing is observed (the common
    /// case: one branch, inlined into the request path).
    #[inline]
    pub fn begin(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        version: Version,
        headers: &HeaderMap,
        client: SocketAddr,
    ) -> Option<Box<Record>> {
        if !self.observes() {
            return None;
        }
        self.record(method, path, version, headers, client)
    }

    #[inline(never)]
    fn record(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        version: Version,
        headers: &HeaderMap,
        client: SocketAddr,
    ) -> Option<Box<Record>> {
        let started = SystemTime::now();
        let span = self
            .tracer
            .as_ref()
            .map(|t| t.server_span(method, path, headers, started));
        Some(Box::new(Record {
            observer: self.clone(),
            started,
            start: Instant::now(),
            method: method.clone(),
            path: path.to_owned(),
            version,
            client,
            host: String::new(),
            service: None,
            revision: None,
            endpoint: None,
            waited: None,
            holding: None,
            cold: false,
            status: 0,
            bytes: 0,
            error: None,
            span,
        }))
    }
}

/// Everything the access log and the spans say about one request, filled in as it goes.
#[derive(Debug)]
pub struct Record {
    observer: Arc<Observer>,
    started: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    version: Version,
    client: SocketAddr,
    /// The host it was addressed to.
    pub host: String,
    /// The service and revision chosen.
    pub service: Option<Arc<str>>,
    /// The revision chosen.
    pub revision: Option<Arc<str>>,
    /// The endpoint it was sent to.
    pub endpoint: Option<SocketAddr>,
    /// How long it was held for a slot, if it was.
    pub waited: Option<Duration>,
    /// Set while it may be held: when it began to wait, and whether the revision was cold.
    holding: Option<(SystemTime, Instant, bool)>,
    /// It waited for a cold start.
    pub cold: bool,
    /// The status answered.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Why rouse failed it (its `rouse-error` code), or how the body ended early.
    pub error: Option<String>,
    span: Option<trace::RequestSpan>,
}

impl Record {
    /// The request may now wait for a slot of a revision that is `cold` (no endpoint): if it
    /// ends before [`Record::acquired`] (refused, timed out, its client gone), it is recorded
    /// as held until then.
    pub fn holding(&mut self, cold: bool) {
        self.holding = Some((SystemTime::now(), Instant::now(), cold));
    }

    /// The request has its slot; `waited` is how long it was held, if it was.
    pub fn acquired(&mut self, waited: Option<Duration>, cold: bool) {
        let Some((from, _, _)) = self.holding.take() else {
            return;
        };
        if let Some(w) = waited {
            self.held(from, w, cold, false);
        }
    }

    fn held(&mut self, from: SystemTime, waited: Duration, cold: bool, failed: bool) {
        self.waited = Some(waited);
        self.cold = cold;
        if let (Some(span), Some(t)) = (&self.span, &self.observer.tracer) {
            t.hold_span(span, from, cold, failed);
        }
    }

    /// The request leaves for `endpoint` now: starts the upstream span and puts its trace
    /// context on the outgoing headers.
    pub fn send(&mut self, endpoint: SocketAddr, headers: &mut HeaderMap) {
        self.endpoint = Some(endpoint);
        if let (Some(span), Some(t)) = (&mut self.span, &self.observer.tracer) {
            t.upstream_span(span, endpoint, headers);
        }
    }

    /// The trace id, when the request is traced.
    pub fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(trace::RequestSpan::trace_id)
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let ended = SystemTime::now();
        let took = self.start.elapsed();
        // Still waiting when it ended: refused, timed out, or its client left.
        if let Some((from, at, cold)) = self.holding.take() {
            self.held(from, at.elapsed(), cold, true);
        }
        // Nothing was answered: the client went away first (nginx's 499).
        if self.status == 0 {
            self.status = 499;
            self.error = Some("client-closed".into());
        }
        if let Some(a) = &self.observer.access {
            a.write(self, took);
        }
        if let (Some(span), Some(t)) = (self.span.take(), &self.observer.tracer) {
            t.end(span, self, ended);
        }
    }
}
