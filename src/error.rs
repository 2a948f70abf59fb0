//! Every way a request can fail inside rouse, and the one place that turns a failure into a
//! response. Each failure has a stable [`Code`], and the code decides everything else: the
//! status, the `rouse-error` header (so tools can tell rouse's own 502/503/504 from a
//! backend's), the metric label, `Retry-After`, where the failure came from ([`Origin`]) and,
//! for gRPC clients, the `grpc-status`.
//!
//! An HTTP client gets a one-line plain-text body that names the cause and, where the client or
//! operator can act, what to do. A gRPC client (`content-type: application/grpc*`) gets a
//! trailers-only response instead: HTTP 200 with `grpc-status` and `grpc-message`, which is
//! what gRPC libraries read; a text body would reach them as an opaque protocol error.

use crate::http::body::{PLAIN, ProxyBody};
use crate::http::downstream::Refusal;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
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
    /// The service has no default traffic and none of its routes matches.
    #[error(
        "no route of the service for host {host:?} matches path {path:?} and these headers; check the path and the routes"
    )]
    NoRoute {
        /// The request's host.
        host: String,
        /// Its path.
        path: String,
    },
    /// The request is malformed or ambiguous: two parties could read it differently.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request head is larger than rouse reads (`limits.max_header_bytes`, or more than
    /// 100 fields).
    #[error("request head too large: {0}")]
    HeadTooLarge(String),
    /// The client's request body could not be read: a framing error, or the client went away
    /// in the middle of it.
    #[error("the request body could not be read ({0}); send a complete, well-formed body")]
    ClientBody(String),
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
    /// Under sustained overload, the request would have waited longer than the queue's
    /// `target_wait`, and the revision cannot add endpoints.
    #[error(
        "revision {revision} is overloaded: a request arriving now would wait about {}s for an endpoint; retry later",
        ceil_secs(*predicted)
    )]
    Overloaded {
        /// The revision.
        revision: String,
        /// The wait predicted from the queue's length and the rate slots free up.
        predicted: Duration,
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
        source: crate::http::upstream::Failure,
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

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request itself was unusable or addressed to nothing rouse serves.
    Client,
    /// The backend: it refused, failed, timed out or did not start.
    Upstream,
    /// rouse's own bounds or configuration: the queue was full, or the route cannot carry it.
    Rouse,
}

/// The stable name of a failure. Every property of a failure's answer is a function of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// `missing-host`.
    MissingHost,
    /// `no-service`.
    NoService,
    /// `no-route`.
    NoRoute,
    /// `bad-request`.
    BadRequest,
    /// `head-too-large`.
    HeadTooLarge,
    /// `client-body`.
    ClientBody,
    /// `queue-full`.
    QueueFull,
    /// `queue-bytes`.
    QueueBytes,
    /// `queue-timeout`.
    QueueTimeout,
    /// `overloaded`.
    Overloaded,
    /// `start-failed`.
    StartFailed,
    /// `connect-failed`.
    ConnectFailed,
    /// `connect-timeout`.
    ConnectTimeout,
    /// `upstream-failed`.
    UpstreamFailed,
    /// `upgrade-over-h2c`.
    UpgradeOverH2c,
    /// `response-start-timeout`.
    ResponseStartTimeout,
    /// `request-timeout`.
    RequestTimeout,
}

/// gRPC status codes used here (`google.golang.org/grpc/codes`).
mod grpc {
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

impl Code {
    /// The codes counted in `rouse_rejected_requests`: refused before reaching an endpoint.
    pub const REJECTIONS: [Code; 5] = [
        Code::QueueFull,
        Code::QueueBytes,
        Code::QueueTimeout,
        Code::Overloaded,
        Code::StartFailed,
    ];

    /// The value of the `rouse-error` header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::MissingHost => "missing-host",
            Code::NoService => "no-service",
            Code::NoRoute => "no-route",
            Code::BadRequest => "bad-request",
            Code::HeadTooLarge => "head-too-large",
            Code::ClientBody => "client-body",
            Code::QueueFull => "queue-full",
            Code::QueueBytes => "queue-bytes",
            Code::QueueTimeout => "queue-timeout",
            Code::Overloaded => "overloaded",
            Code::StartFailed => "start-failed",
            Code::ConnectFailed => "connect-failed",
            Code::ConnectTimeout => "connect-timeout",
            Code::UpstreamFailed => "upstream-failed",
            Code::UpgradeOverH2c => "upgrade-over-h2c",
            Code::ResponseStartTimeout => "response-start-timeout",
            Code::RequestTimeout => "request-timeout",
        }
    }

    /// The `reason` label in metrics: the code in Prometheus' underscore style. A request
    /// without a host is a malformed request like the others, so it shares `bad_request`.
    pub const fn label(self) -> &'static str {
        match self {
            Code::MissingHost | Code::BadRequest | Code::HeadTooLarge => "bad_request",
            Code::NoService => "no_service",
            Code::NoRoute => "no_route",
            Code::ClientBody => "client_body",
            Code::QueueFull => "queue_full",
            Code::QueueBytes => "queue_bytes",
            Code::QueueTimeout => "queue_timeout",
            Code::Overloaded => "overloaded",
            Code::StartFailed => "start_failed",
            Code::ConnectFailed => "connect_failed",
            Code::ConnectTimeout => "connect_timeout",
            Code::UpstreamFailed => "upstream_failed",
            Code::UpgradeOverH2c => "upgrade_over_h2c",
            Code::ResponseStartTimeout => "response_start_timeout",
            Code::RequestTimeout => "request_timeout",
        }
    }

    /// Where failures of this kind come from.
    pub const fn origin(self) -> Origin {
        match self {
            Code::MissingHost
            | Code::NoService
            | Code::NoRoute
            | Code::BadRequest
            | Code::HeadTooLarge
            | Code::ClientBody => Origin::Client,
            Code::QueueFull
            | Code::QueueBytes
            | Code::QueueTimeout
            | Code::Overloaded
            | Code::UpgradeOverH2c => Origin::Rouse,
            Code::StartFailed
            | Code::ConnectFailed
            | Code::ConnectTimeout
            | Code::UpstreamFailed
            | Code::ResponseStartTimeout
            | Code::RequestTimeout => Origin::Upstream,
        }
    }

    /// The status code HTTP clients see.
    pub const fn status(self) -> StatusCode {
        match self {
            Code::MissingHost | Code::BadRequest | Code::ClientBody => StatusCode::BAD_REQUEST,
            Code::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Code::NoService | Code::NoRoute => StatusCode::NOT_FOUND,
            Code::QueueFull
            | Code::QueueBytes
            | Code::QueueTimeout
            | Code::Overloaded
            | Code::StartFailed => StatusCode::SERVICE_UNAVAILABLE,
            Code::ConnectFailed | Code::UpstreamFailed | Code::UpgradeOverH2c => {
                StatusCode::BAD_GATEWAY
            }
            Code::ConnectTimeout | Code::ResponseStartTimeout | Code::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The `grpc-status` gRPC clients see. Overload, cold-start failures and unreachable
    /// endpoints are UNAVAILABLE, which gRPC clients treat as transient and may retry; a
    /// deadline rouse enforced is DEADLINE_EXCEEDED; a host rouse does not serve is
    /// UNIMPLEMENTED, as for an unknown service.
    pub const fn grpc_status(self) -> u8 {
        match self {
            Code::MissingHost
            | Code::BadRequest
            | Code::HeadTooLarge
            | Code::ClientBody
            | Code::UpgradeOverH2c => grpc::INTERNAL,
            Code::NoService | Code::NoRoute => grpc::UNIMPLEMENTED,
            Code::QueueFull
            | Code::QueueBytes
            | Code::QueueTimeout
            | Code::Overloaded
            | Code::StartFailed
            | Code::ConnectFailed
            | Code::ConnectTimeout
            | Code::UpstreamFailed => grpc::UNAVAILABLE,
            Code::ResponseStartTimeout | Code::RequestTimeout => grpc::DEADLINE_EXCEEDED,
        }
    }
}

/// True for a gRPC request (`content-type: application/grpc`, `application/grpc+proto`, ...),
/// which gets its failures as gRPC statuses.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("rouse error"))
}

/// How a failure is answered: the proxy's wording and whether the client speaks gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer {
    /// Whose error bodies.
    pub dialect: Dialect,
    /// Answer as gRPC (trailers-only).
    pub grpc: bool,
}

impl ProxyError {
    /// The stable code of this failure.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::MissingHost => Code::MissingHost,
            ProxyError::NoService(_) => Code::NoService,
            ProxyError::NoRoute { .. } => Code::NoRoute,
            ProxyError::BadRequest(_) => Code::BadRequest,
            ProxyError::HeadTooLarge(_) => Code::HeadTooLarge,
            ProxyError::ClientBody(_) => Code::ClientBody,
            ProxyError::QueueFull { .. } => Code::QueueFull,
            ProxyError::QueueBytes { .. } => Code::QueueBytes,
            ProxyError::QueueTimeout { .. } => Code::QueueTimeout,
            ProxyError::Overloaded { .. } => Code::Overloaded,
            ProxyError::StartFailed { .. } => Code::StartFailed,
            ProxyError::Connect { .. } => Code::ConnectFailed,
            ProxyError::ConnectTimeout { .. } => Code::ConnectTimeout,
            ProxyError::Upstream { .. } => Code::UpstreamFailed,
            ProxyError::UpgradeOverH2c(_) => Code::UpgradeOverH2c,
            ProxyError::ResponseStartTimeout(_) => Code::ResponseStartTimeout,
            ProxyError::RequestTimeout(_) => Code::RequestTimeout,
        }
    }

    /// The status code HTTP clients see.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// Seconds for `Retry-After` on answers that mean "try again later".
    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::QueueFull { .. }
            | ProxyError::QueueBytes { .. }
            | ProxyError::QueueTimeout { .. } => Some(1),
            // About when the queue will have room for it again.
            ProxyError::Overloaded { predicted, .. } => Some(ceil_secs(*predicted)),
            // Rounded up: a client that retries after this many seconds finds the attempt due.
            ProxyError::StartFailed { retry_after, .. } => Some(ceil_secs(*retry_after)),
            _ => None,
        }
    }

    /// The body Knative's queue-proxy writes for the same failure, where clients may match on
    /// it; `None` where rouse's own line is the better answer (it also names the cause).
    fn knative_body(&self) -> Option<&'static str> {
        match self {
            ProxyError::QueueFull { .. }
            | ProxyError::QueueBytes { .. }
            | ProxyError::Overloaded { .. } => Some("pending request queue full\n"),
            ProxyError::QueueTimeout { .. } => Some("context deadline exceeded\n"),
            ProxyError::ResponseStartTimeout(_) | ProxyError::RequestTimeout(_) => {
                Some("request timeout")
            }
            _ => None,
        }
    }

    /// Builds the response for this error, in rouse's wording, for an HTTP client.
    pub fn into_response<E>(self) -> Response<ProxyBody<E>> {
        self.into_response_as(Answer::default())
    }

    /// Builds the response for this error: the only place a failure becomes a response.
    pub fn into_response_as<E>(self, answer: Answer) -> Response<ProxyBody<E>> {
        let code = self.code();
        let text = match (answer.dialect, self.knative_body()) {
            (Dialect::Knative, Some(body)) => body.to_owned(),
            _ => {
                let mut text = self.to_string();
                text.push('\n');
                text
            }
        };
        let mut res = if answer.grpc {
            // Trailers-only: the status and message travel in the only HEADERS frame, which
            // ends the stream, so the status line is 200 whatever went wrong.
            let mut res = Response::new(ProxyBody::empty());
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(code.grpc_status())),
            );
            h.insert("grpc-message", grpc_message(&text));
            res
        } else {
            let mut res = Response::new(ProxyBody::full(text));
            *res.status_mut() = code.status();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PLAIN));
            res
        };
        let h = res.headers_mut();
        h.insert("rouse-error", HeaderValue::from_static(code.as_str()));
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// The whole HTTP/1.1 answer to a refused request head, for listeners that count nothing.
pub fn refused(why: Refusal) -> Bytes {
    ProxyError::from(why).http1_close()
}

impl From<Refusal> for ProxyError {
    fn from(why: Refusal) -> ProxyError {
        match why.too_large() {
            true => ProxyError::HeadTooLarge(why.to_string()),
            false => ProxyError::BadRequest(why.to_string()),
        }
    }
}

impl ProxyError {
    /// This failure as a whole HTTP/1.1 answer that ends the connection, for a request head
    /// refused before it could be routed (see `http::downstream`).
    pub fn http1_close(&self) -> Bytes {
        let code = self.code();
        let status = code.status();
        let text = format!("{self}\n");
        Bytes::from(format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {PLAIN}\r\nrouse-error: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{text}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            code.as_str(),
            text.len(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;

    /// Every failure (but `Upstream`, which needs a live hyper error), with the `grpc-status`
    /// a gRPC client must see for it.
    fn every() -> Vec<(ProxyError, &'static str)> {
        let ep: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let d = Duration::from_millis(1500);
        let revision = || "r".to_owned();
        vec![
            (ProxyError::MissingHost, "13"),
            (ProxyError::NoService("h".into()), "12"),
            (
                ProxyError::NoRoute {
                    host: "h".into(),
                    path: "/".into(),
                },
                "12",
            ),
            (ProxyError::BadRequest("two Host headers".into()), "13"),
            (
                ProxyError::HeadTooLarge("more than 100 fields".into()),
                "13",
            ),
            (ProxyError::ClientBody("invalid chunk size".into()), "13"),
            (
                ProxyError::QueueFull {
                    revision: revision(),
                    held: 1,
                },
                "14",
            ),
            (
                ProxyError::QueueBytes {
                    revision: revision(),
                },
                "14",
            ),
            (
                ProxyError::QueueTimeout {
                    revision: revision(),
                    waited: d,
                },
                "14",
            ),
            (
                ProxyError::StartFailed {
                    revision: revision(),
                    reason: "exit status: 3; last stderr line: caf\u{e9} 100%".into(),
                    retry_after: d,
                },
                "14",
            ),
            (
                ProxyError::Connect {
                    endpoint: ep,
                    reason: "refused".into(),
                },
                "14",
            ),
            (
                ProxyError::ConnectTimeout {
                    endpoint: ep,
                    timeout: d,
                },
                "14",
            ),
            (ProxyError::UpgradeOverH2c(revision()), "13"),
            (ProxyError::ResponseStartTimeout(d), "4"),
            (ProxyError::RequestTimeout(d), "4"),
        ]
    }

    #[test]
    fn http_answers_carry_status_code_and_retry_after() {
        for (e, _) in every() {
            let (code, status, text) = (e.code(), e.status(), e.to_string());
            let res: Response<ProxyBody> = e.into_response();
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()["rouse-error"], code.as_str());
            assert_eq!(res.headers()["content-type"], PLAIN);
            assert_eq!(
                res.body().size_hint().exact(),
                Some(text.len() as u64 + 1),
                "{code:?}"
            );
            let overload = matches!(
                code,
                Code::QueueFull | Code::QueueBytes | Code::QueueTimeout
            );
            match res.headers().get("retry-after") {
                Some(v) if overload => assert_eq!(v, "1"),
                Some(v) => {
                    assert!(
                        matches!(code, Code::StartFailed | Code::Overloaded),
                        "{code:?}"
                    );
                    assert_eq!(v, "2", "1.5 s of backoff or predicted wait is rounded up");
                }
                None => assert!(
                    !overload && !matches!(code, Code::StartFailed | Code::Overloaded),
                    "{code:?}"
                ),
            }
        }
    }

    #[test]
    fn grpc_answers_are_trailers_only_with_the_mapped_status() {
        for (e, grpc_status) in every() {
            let code = e.code();
            let res: Response<ProxyBody> = e.into_response_as(Answer {
                dialect: Dialect::Rouse,
                grpc: true,
            });
            assert_eq!(res.status(), StatusCode::OK, "{code:?}");
            assert!(res.body().is_end_stream(), "{code:?}: no body, no trailers");
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], grpc_status, "{code:?}");
            assert_eq!(res.headers()["rouse-error"], code.as_str());
            let msg = res.headers()["grpc-message"].to_str().unwrap();
            assert!(!msg.is_empty() && !msg.ends_with("%0A"), "{msg}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("caf\u{e9} 100%\n"), "caf%C3%A9 100%25");
    }

    #[test]
    fn metric_labels_are_the_codes_in_underscore_style() {
        for (e, _) in every() {
            let c = e.code();
            // A missing host and a head too large to read are malformed requests too, and
            // share the `bad_request` label.
            if c != Code::MissingHost && c != Code::BadRequest && c != Code::HeadTooLarge {
                assert_eq!(c.label(), c.as_str().replace('-', "_"));
            }
        }
    }
}
