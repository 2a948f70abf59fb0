//! The queue-proxy front: what a pod's sidecar does before a request reaches the shared
//! forwarding path. Probes are answered here and never reach the app or the stats; traffic
//! keeps a drain going and has the activator's header rewrites undone, then goes through the
//! [`Proxy`] (breaker, timeouts, streaming, per-request h2c or HTTP/1.1 to the app).
//!
//! Also here: the two small listeners of the contract, the autoscaler's `:9090/metrics`
//! (protobuf `Stat`) and the admin port's `/wait-for-drain`.

use super::drain::{Drainer, Phase};
use super::headers::{self, Kind};
use super::stat::StatReporter;
use crate::http::body::{PLAIN, ProxyBody, text};
use crate::http::server::{ConnInfo, Handler};
use crate::http::upstream::{OutBody, Outgoing};
use crate::probe::Prober;
use crate::proxy::Proxy;
use crate::proxy::completion::Body;
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::either::Either;

fn reply<E>(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody<E>> {
    text(status, body, PLAIN)
}

/// A side port that serves one path: `Some(404)` with `message` for any other.
fn only_path(
    req: &Request<OutBody>,
    path: &str,
    message: &'static str,
) -> Option<Response<ProxyBody>> {
    (req.uri().path() != path).then(|| reply(StatusCode::NOT_FOUND, message))
}

/// The serving port's handler.
#[derive(Debug)]
pub struct QueueHandler {
    proxy: Arc<Proxy>,
    prober: Arc<Prober>,
    drainer: Arc<Drainer>,
}

impl QueueHandler {
    /// Answers probes with `prober`, drains with `drainer`, forwards traffic through `proxy`.
    pub fn new(proxy: Arc<Proxy>, prober: Arc<Prober>, drainer: Arc<Drainer>) -> QueueHandler {
        QueueHandler {
            proxy,
            prober,
            drainer,
        }
    }

    async fn health(&self, probe: String) -> Response<Body> {
        if self.drainer.is_draining() {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        if probe != "queue" {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("unexpected probe header value: {probe:?}\n"),
            );
        }
        if self.prober.check().await {
            reply(StatusCode::OK, "queue")
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the app's readiness probe failed\n",
            )
        }
    }
}

impl QueueHandler {
    /// Answers Knative's network probe at once, with its hash echoed.
    fn network_probe(&self, req: &Request<OutBody>) -> Response<Body> {
        if self.drainer.is_draining() {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        let mut res = reply(StatusCode::OK, "");
        if let Some(hash) = req.headers().get(&headers::NETWORK_HASH) {
            res.headers_mut()
                .insert(headers::NETWORK_HASH, hash.clone());
        }
        res
    }
}

/// A probe's answer, on its way.
type Probing<'a> = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

impl Handler for QueueHandler {
    type Body = Body;

    /// Traffic gets the proxy's own future, made here, rather than one wrapped in an `async`
    /// block: a wrapper keeps the request once more and moves the proxy's future into itself
    /// (about 200 bytes copied three times per request).
    fn call(
        &self,
        mut req: Box<Outgoing>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        let read = match &req.fields {
            Some(lines) => headers::read_lines(lines),
            None => headers::read(req.headers()),
        };
        match read.kind {
            Kind::Traffic => {
                self.drainer.touch();
                // Only Knative's stats tell activator-sent requests apart, so this front
                // decides it for the shared request path.
                if read.rewritten {
                    req.materialise();
                    headers::restore_request_headers(req.headers_mut());
                }
                Either::Left(self.proxy.serve(req, conn, read.proxied))
            }
            // Probes (a few a second at most) get their futures boxed, so that traffic's
            // future is the proxy's own behind one branch.
            Kind::HealthCheck(probe) => Either::Right(Box::pin(self.health(probe)) as Probing<'_>),
            Kind::NetworkProbe => {
                req.materialise();
                let res = self.network_probe(&req);
                Either::Right(Box::pin(std::future::ready(res)) as Probing<'_>)
            }
        }
    }

    /// As the proxy it hands traffic to: it reads the Knative fields of fields kept as the
    /// client wrote them, and puts them into the map before it edits or echoes any.
    fn keeps_fields(&self) -> bool {
        self.proxy.keeps_fields()
    }

    fn refused(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        self.proxy.refused_head(why)
    }
}

/// The autoscaler's stats port: `GET /metrics` answers the latest `Stat` in protobuf,
/// whatever the `Accept` header says.
#[derive(Debug)]
pub struct StatsHandler(pub Arc<StatReporter>);

impl Handler for StatsHandler {
    type Body = ProxyBody;

    async fn call(&self, req: Box<Outgoing>, _conn: ConnInfo) -> Response<ProxyBody> {
        if let Some(not_found) = only_path(
            &req,
            "/metrics",
            "the stats port serves only /metrics (protobuf Stat)\n",
        ) {
            return not_found;
        }
        let body = prost::Message::encode_to_vec(&*self.0.latest());
        text(StatusCode::OK, body, "application/protobuf")
    }

    fn refused(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        crate::error::refused(why)
    }
}

/// How long a drain started by the preStop hook waits for the termination that should follow.
const RESET_AFTER: Duration = Duration::from_secs(1);

/// The admin port: `/wait-for-drain`, the app container's preStop hook.
#[derive(Debug)]
pub struct AdminHandler {
    drainer: Arc<Drainer>,
}

impl AdminHandler {
    /// An admin handler for `drainer`.
    pub fn new(drainer: Arc<Drainer>) -> AdminHandler {
        AdminHandler { drainer }
    }
}

impl Handler for AdminHandler {
    type Body = ProxyBody;

    async fn call(&self, req: Box<Outgoing>, _conn: ConnInfo) -> Response<ProxyBody> {
        if let Some(not_found) = only_path(
            &req,
            "/wait-for-drain",
            "the admin port serves only /wait-for-drain\n",
        ) {
            return not_found;
        }
        self.drainer.begin();
        let d = self.drainer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESET_AFTER).await;
            // Still no SIGTERM: the app container restarts alone; keep serving.
            d.reset();
        });
        match self.drainer.wait().await {
            Phase::Serving => reply(
                StatusCode::OK,
                "drain called off: no termination followed\n",
            ),
            _ => reply(StatusCode::OK, "drained\n"),
        }
    }

    fn refused(&self, why: crate::http::downstream::Refusal) -> bytes::Bytes {
        crate::error::refused(why)
    }
}
