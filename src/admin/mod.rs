//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` (the process is up) and
//! `/readyz` (503 from the moment draining starts, so health-checking load balancers take this
//! instance out while in-flight requests finish).

use crate::http::body::{PLAIN, ProxyBody, text};
use crate::http::server::{ConnInfo, Handler};
use crate::metrics::Metrics;
use http::{Request, Response, StatusCode};
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

impl Handler for Admin {
    type Body = ProxyBody;

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
