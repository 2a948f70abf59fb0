//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` (the process is up) and
//! `/readyz` (503 from the moment draining starts, so health-checking load balancers take this
//! instance out while in-flight requests finish).

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::server::{ConnInfo, Handler};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Admin request handler.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl Admin {
    /// An admin handler reporting `metrics` and readiness from `draining`.
    pub fn new(metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Admin {
        Admin { metrics, draining }
    }
}

/// Plain text, the content type of rouse's own short answers.
pub(crate) const PLAIN: &str = "text/plain; charset=utf-8";

/// A short response of rouse's own: `body` with `status` and `ctype`.
pub(crate) fn text(
    status: StatusCode,
    body: impl Into<bytes::Bytes>,
    ctype: &'static str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

impl Handler for Admin {
    async fn call(&self, req: Request<Incoming>, _conn: ConnInfo) -> Response<ProxyBody> {
        match req.uri().path() {
            "/metrics" => text(
                StatusCode::OK,
                self.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
            "/readyz" if self.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", PLAIN)
            }
            "/readyz" => text(StatusCode::OK, "ready\n", PLAIN),
            other => text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other}; try /metrics, /healthz or /readyz\n"),
                PLAIN,
            ),
        }
    }
}
