//! Every way a request can fail inside rouse, and the one place that turns a failure into an
//! HTTP response. Each body is one plain-text line that names the cause and, where the client
//! or operator can act, what to do; a `rouse-error` header carries a stable short code so that
//! tools can tell rouse's own 502/503/504 from a backend's.

use crate::body::ProxyBody;
use http::{HeaderValue, Response, StatusCode, header};
use std::net::SocketAddr;
use std::time::Duration;

/// Whose wire conventions a proxy follows where rouse's own differ: error bodies and the
/// forwarding headers it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// rouse's: error bodies that name the cause, `X-Forwarded-*` and `Forwarded` appended.
    #[default]
    Rouse,
    /// Knative queue-proxy's: its fixed error bodies (`pending request queue full`,
    /// `request timeout`), only `X-Forwarded-For` appended, and `Forwarded` synthesized from
    /// `X-Forwarded-*` when the request has none.
    Knative,
}

/// A failure of one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request has neither a Host header nor an authority.
    #[error("the request has no Host header; send one naming the service")]
    MissingHost,
    /// No service lists the request's host.
    #[error("no service matches host {0:?}; check the Host header or the services' hosts")]
    NoService(String),
    /// The revision's held-request limit is reached.
    #[error(
        "revision {revision} is at capacity and {held} requests are already waiting; retry later"
    )]
    QueueFull {
        /// The revision.
        revision: String,
        /// Requests held at the time.
        held: usize,
    },
    /// The revision's held-bytes limit is reached.
    #[error(
        "revision {revision} is at capacity and its queue holds its byte limit of request bodies; retry later"
    )]
    QueueBytes {
        /// The revision.
        revision: String,
    },
    /// The request was held for the queue's `max_wait` without a free endpoint.
    #[error("revision {revision} had no free endpoint for {waited:?}; retry later")]
    QueueTimeout {
        /// The revision.
        revision: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The revision's backend failed to start, so there is nothing to forward to.
    #[error("revision {revision} failed to start: {reason}; retrying in {}s", ceil_secs(*retry_after))]
    StartFailed {
        /// The revision.
        revision: String,
        /// Exit status, deadline, last stderr line.
        reason: String,
        /// When the next attempt is due.
        retry_after: Duration,
    },
    /// Connecting to an endpoint failed (refused, unreachable, or the handshake failed).
    #[error("upstream {endpoint} refused or failed the connection: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The cause as text.
        reason: String,
    },
    /// Connecting to an endpoint took longer than `upstream.connect_timeout`.
    #[error("upstream {endpoint} did not accept a connection within {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The upstream connection failed after the request was (at least partly) sent.
    #[error("upstream {endpoint} failed during the request: {source}")]
    Upstream {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The transport error.
        source: hyper::Error,
    },
    /// A protocol upgrade (WebSocket) was asked of a revision that speaks h2c upstream.
    #[error(
        "revision {0} speaks h2c to its endpoints, which cannot carry an HTTP/1.1 upgrade (WebSocket); set its protocol to http1"
    )]
    UpgradeOverH2c(String),
    /// No response headers within `timeouts.response_start`.
    #[error("no response started within the {0:?} response_start timeout")]
    ResponseStartTimeout(Duration),
    /// The whole request exceeded `timeouts.request`.
    #[error("request timeout: exceeded the {0:?} request timeout")]
    RequestTimeout(Duration),
}

/// Whole seconds, rounded up, at least 1.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl ProxyError {
    /// The status code clients see.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost => StatusCode::BAD_REQUEST,
            ProxyError::NoService(_) => StatusCode::NOT_FOUND,
            ProxyError::QueueFull { .. }
            | ProxyError::QueueBytes { .. }
            | ProxyError::QueueTimeout { .. }
            | ProxyError::StartFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpgradeOverH2c(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. }
            | ProxyError::ResponseStartTimeout(_)
            | ProxyError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable short name for the `rouse-error` header and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing-host",
            ProxyError::NoService(_) => "no-service",
            ProxyError::QueueFull { .. } => "queue-full",
            ProxyError::QueueBytes { .. } => "queue-bytes",
            ProxyError::QueueTimeout { .. } => "queue-timeout",
            ProxyError::StartFailed { .. } => "start-failed",
            ProxyError::Connect { .. } => "connect-failed",
            ProxyError::ConnectTimeout { .. } => "connect-timeout",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::UpgradeOverH2c(_) => "upgrade-over-h2c",
            ProxyError::ResponseStartTimeout(_) => "response-start-timeout",
            ProxyError::RequestTimeout(_) => "request-timeout",
        }
    }

    /// Seconds for `Retry-After` on answers that mean "try again later".
    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::QueueFull { .. }
            | ProxyError::QueueBytes { .. }
            | ProxyError::QueueTimeout { .. } => Some(1),
            // Rounded up: a client that retries after this many seconds finds the attempt due.
            ProxyError::StartFailed { retry_after, .. } => Some(ceil_secs(*retry_after)),
            _ => None,
        }
    }

    /// The body Knative's queue-proxy writes for the same failure, where clients may match on
    /// it; `None` where rouse's own line is the better answer (it also names the cause).
    fn knative_body(&self) -> Option<&'static str> {
        match self {
            ProxyError::QueueFull { .. } | ProxyError::QueueBytes { .. } => {
                Some("pending request queue full\n")
            }
            ProxyError::QueueTimeout { .. } => Some("context deadline exceeded\n"),
            ProxyError::ResponseStartTimeout(_) | ProxyError::RequestTimeout(_) => {
                Some("request timeout")
            }
            _ => None,
        }
    }

    /// Builds the response for this error.
    pub fn into_response(self) -> Response<ProxyBody> {
        self.into_response_in(Dialect::Rouse)
    }

    /// Builds the response for this error, with bodies in `dialect`.
    pub fn into_response_in(self, dialect: Dialect) -> Response<ProxyBody> {
        let text = match (dialect, self.knative_body()) {
            (Dialect::Knative, Some(body)) => body.to_owned(),
            _ => {
                let mut text = self.to_string();
                text.push('\n');
                text
            }
        };
        let mut res = Response::new(ProxyBody::full(text));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("rouse-error", HeaderValue::from_static(self.code()));
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
