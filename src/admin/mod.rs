//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` (the process is up) and
//! `/readyz` (503 from the moment draining starts, so health-checking load balancers take this
//! instance out while in-flight requests finish; also 503 until outside sources such as
//! Kubernetes have listed the endpoints once, and always with a line per thing rouse cannot
//! get from them); and, with a [`status::Status`], the live status page (`/` and `/status`)
//! and its JSON (`/api/status`, `/api/routes`).

pub mod status;

use crate::discovery::Outside;
use crate::http::body::{PLAIN, ProxyBody, text};
use crate::http::server::{ConnInfo, Handler};
use crate::http::upstream::Outgoing;
use crate::metrics::Metrics;
use http::{Response, StatusCode};
use std::sync::Arc;

const JSON: &str = "application/json";
use std::sync::atomic::{AtomicBool, Ordering};

/// Admin request handler.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    outside: Outside,
    status: Option<Arc<status::Status>>,
}

/// The status page: one file, no outside assets, so it works air-gapped.
const STATUS_PAGE: &str = include_str!("status.html");

impl Admin {
    /// An admin handler reporting `metrics` and readiness from `draining`.
    pub fn new(metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Admin {
        Admin {
            metrics,
            draining,
            outside: Outside::default(),
            status: None,
        }
    }

    /// Also serves the status page and its JSON.
    pub fn with_status(mut self, status: Arc<status::Status>) -> Admin {
        self.status = Some(status);
        self
    }

    /// Also reports the readiness of `outside`'s sources.
    pub fn with_sources(mut self, outside: Outside) -> Admin {
        self.outside = outside;
        self
    }

    fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.outside.readiness().ready
    }

    fn ready(&self) -> Response<ProxyBody> {
        let r = self.outside.readiness();
        let (status, head) = if r.ready {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
        };
        let mut body = format!("{head}\n");
        for n in r.notes {
            body.push_str(&n);
            body.push('\n');
        }
        text(status, body, PLAIN)
    }
}

impl Handler for Admin {
    type Body = ProxyBody;

    async fn call(&self, req: Box<Outgoing>, _conn: ConnInfo) -> Response<ProxyBody> {
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
            "/readyz" => self.ready(),
            "/" | "/status" if self.status.is_some() => {
                text(StatusCode::OK, STATUS_PAGE, "text/html; charset=utf-8")
            }
            "/api/status" if let Some(s) = &self.status => {
                text(StatusCode::OK, s.json(self.is_ready()), JSON)
            }
            "/api/routes" if let Some(s) = &self.status => {
                text(StatusCode::OK, s.routes_json(), JSON)
            }
            path if let Some(s) = &self.status
                && let Some(service) = path
                    .strip_prefix("/api/rollouts/")
                    .and_then(|p| p.strip_suffix("/stop")) =>
            {
                if req.method() != http::Method::POST {
                    text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "POST to stop a rollout\n",
                        PLAIN,
                    )
                } else {
                    match s.stop_rollout(service) {
                        Some(true) => text(
                            StatusCode::OK,
                            format!("rollout of {service} stopped\n"),
                            PLAIN,
                        ),
                        Some(false) => text(
                            StatusCode::CONFLICT,
                            format!("the rollout of {service} has already ended\n"),
                            PLAIN,
                        ),
                        None => text(
                            StatusCode::NOT_FOUND,
                            format!("service {service} has no rollout going on\n"),
                            PLAIN,
                        ),
                    }
                }
            }
            other if let Some(page) = self.outside.page(other) => text(StatusCode::OK, page, PLAIN),
            other => text(
                StatusCode::NOT_FOUND,
                match self.status {
                    Some(_) => format!(
                        "no admin endpoint {other}; try / (the status page), /api/status, \
                         /api/routes, /metrics, /healthz or /readyz\n"
                    ),
                    None => {
                        format!("no admin endpoint {other}; try /metrics, /healthz or /readyz\n")
                    }
                },
                PLAIN,
            ),
        }
    }

    fn refused(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        crate::error::refused(why)
    }
}
