//! Traces: a server span per proxied request, continuing the client's W3C trace context
//! (`traceparent`, `tracestate`), with a child span for the time it was held (`rouse.hold`,
//! marked when it waited for a cold start) and one for the upstream exchange (`rouse.upstream`,
//! whose context is what the backend receives in `traceparent`). Spans are exported in
//! batches over OTLP/HTTP (protobuf) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names an endpoint; without one no tracer exists and
//! the trace headers pass through untouched, as any other header.
//!
//! The exporter's own variables (`OTEL_EXPORTER_OTLP_*HEADERS`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) are read by the
//! OpenTelemetry SDK; an export's time limit is rouse's own (10 s). Export goes through a small
//! HTTP/1.1 client on rouse's runtime: the SDK's batch thread is not a Tokio thread.

use super::Record;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Longest an export may take, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A variable has a value rouse cannot use.
    #[error("{var}={value:?}: {why}")]
    Setting {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to write.
        why: &'static str,
    },
    /// The SDK refused the exporter.
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// Knative's tracing settings for queue-proxy (`TRACING_CONFIG_*`, from its `config-tracing`
/// ConfigMap): what the sidecar honours of them.
#[derive(Debug, Clone, Default)]
pub struct KnativeTracing {
    /// `TRACING_CONFIG_BACKEND`: `none` turns tracing off.
    pub backend: Option<String>,
    /// `TRACING_CONFIG_ZIPKIN_ENDPOINT`.
    pub zipkin_endpoint: Option<String>,
    /// `TRACING_CONFIG_SAMPLE_RATE`, from 0 to 1.
    pub sample_rate: Option<f64>,
    /// `TRACING_CONFIG_DEBUG`: sample everything.
    pub debug: bool,
}

impl KnativeTracing {
    /// Reads the variables queue-proxy reads.
    pub fn from_env() -> Result<KnativeTracing, TraceError> {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        let sample_rate = match var("TRACING_CONFIG_SAMPLE_RATE") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Some(r),
                _ => {
                    return Err(TraceError::Setting {
                        var: "TRACING_CONFIG_SAMPLE_RATE",
                        value: v,
                        why: "must be a number from 0 to 1, like 0.1",
                    });
                }
            },
        };
        Ok(KnativeTracing {
            backend: var("TRACING_CONFIG_BACKEND"),
            zipkin_endpoint: var("TRACING_CONFIG_ZIPKIN_ENDPOINT"),
            sample_rate,
            debug: var("TRACING_CONFIG_DEBUG").is_some_and(|v| v == "true"),
        })
    }
}

/// The tracer of one rouse process.
#[derive(Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// A request's spans: the server span's context, and the upstream span's once it is sent.
#[derive(Debug)]
pub struct RequestSpan {
    server: Context,
    upstream: Option<Context>,
}

impl RequestSpan {
    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.server.span().span_context().trace_id().to_string()
    }
}

/// The endpoint the SDK will use, if tracing is asked for.
fn endpoint() -> Option<(&'static str, String)> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (k, v))
    })
}

impl Tracer {
    /// A tracer exporting where the `OTEL_*` variables say, or `None` when none names an
    /// endpoint (or `OTEL_SDK_DISABLED=true`). `knative` adds queue-proxy's settings: its
    /// sample rate, when `OTEL_TRACES_SAMPLER` does not choose. Must run inside the runtime.
    pub fn from_env(knative: Option<&KnativeTracing>) -> Result<Option<Tracer>, TraceError> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if knative.is_some_and(|k| k.backend.as_deref() == Some("none")) {
            return Ok(None);
        }
        let Some((var, url)) = endpoint() else {
            if let Some(z) = knative.and_then(|k| k.zipkin_endpoint.as_deref()) {
                tracing::warn!(
                    zipkin = z,
                    "Knative's tracing config names a Zipkin endpoint; rouse exports OTLP only: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. a collector's http://HOST:4318) to trace"
                );
            }
            return Ok(None);
        };
        if !url.trim_start().starts_with("http://") {
            return Err(TraceError::Setting {
                var,
                value: url,
                why: "rouse sends OTLP over plain http://; point it at a collector's HTTP port, like http://otel-collector:4318",
            });
        }
        for p in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Ok(v) = std::env::var(p)
                && !v.is_empty()
                && v != "http/protobuf"
            {
                return Err(TraceError::Setting {
                    var: if p.contains("TRACES") {
                        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    } else {
                        "OTEL_EXPORTER_OTLP_PROTOCOL"
                    },
                    value: v,
                    why: "rouse exports http/protobuf only; unset it or write http/protobuf, and use the collector's HTTP port (4318)",
                });
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Export {
                rt: tokio::runtime::Handle::current(),
            })
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("rouse");
        }
        let mut provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter);
        if std::env::var_os("OTEL_TRACES_SAMPLER").is_none()
            && let Some(k) = knative
        {
            if k.debug {
                provider = provider.with_sampler(Sampler::AlwaysOn);
            } else if let Some(r) = k.sample_rate {
                provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                    Sampler::TraceIdRatioBased(r),
                )));
            }
        }
        let provider = provider.build();
        let tracer = provider.tracer("rouse");
        tracing::info!(endpoint = %url, "tracing: exporting spans over OTLP/HTTP");
        Ok(Some(Tracer {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// Starts the server span of a request arriving at `at`, under the client's trace context
    /// if it sent one.
    pub(super) fn server_span(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        at: SystemTime,
    ) -> RequestSpan {
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_start_time(at)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            server: parent.with_span(span),
            upstream: None,
        }
    }

    /// Records the hold, from `from` until now, as a child span; `failed`: it ended without a
    /// slot.
    pub(super) fn hold_span(&self, span: &RequestSpan, from: SystemTime, cold: bool, failed: bool) {
        let mut hold = self
            .tracer
            .span_builder("rouse.hold")
            .with_kind(SpanKind::Internal)
            .with_start_time(from)
            .with_attributes([KeyValue::new("rouse.cold_start", cold)])
            .start_with_context(&self.tracer, &span.server);
        if failed {
            hold.set_status(Status::error("ended while held"));
        }
        hold.end();
    }

    /// Starts the upstream span and writes its context into the outgoing `headers`.
    pub(super) fn upstream_span(
        &self,
        span: &mut RequestSpan,
        endpoint: SocketAddr,
        headers: &mut HeaderMap,
    ) {
        // A resend after a failed connection replaces the first attempt's span.
        if let Some(old) = span.upstream.take() {
            old.span().set_status(Status::error("connection failed"));
            old.span().end();
        }
        let up = self
            .tracer
            .span_builder("rouse.upstream")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("server.address", endpoint.ip().to_string()),
                KeyValue::new("server.port", i64::from(endpoint.port())),
            ])
            .start_with_context(&self.tracer, &span.server);
        let cx = span.server.with_span(up);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        span.upstream = Some(cx);
    }

    /// Ends the request's spans with what the record says.
    pub(super) fn end(&self, span: RequestSpan, r: &Record, at: SystemTime) {
        let status = i64::from(r.status);
        if let Some(up) = &span.upstream {
            let s = up.span();
            s.set_attribute(KeyValue::new("http.response.status_code", status));
            if r.status >= 500 {
                s.set_status(Status::error(r.error.clone().unwrap_or_default()));
            }
            s.end_with_timestamp(at);
        }
        let s = span.server.span();
        let mut attrs = vec![
            KeyValue::new("http.response.status_code", status),
            KeyValue::new("server.address", r.host.clone()),
            KeyValue::new("rouse.cold_start", r.cold),
        ];
        if let Some(svc) = &r.service {
            attrs.push(KeyValue::new("rouse.service", svc.to_string()));
        }
        if let Some(rev) = &r.revision {
            attrs.push(KeyValue::new("rouse.revision", rev.to_string()));
        }
        if let Some(e) = &r.error {
            attrs.push(KeyValue::new("rouse.error", e.clone()));
        }
        s.set_attributes(attrs);
        if r.status >= 500 {
            s.set_status(Status::error(r.error.clone().unwrap_or_default()));
        }
        s.end_with_timestamp(at);
    }

    /// Sends what is still batched and stops the exporter; blocks, so it runs on a blocking
    /// thread.
    pub async fn shutdown(&self) {
        let p = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

/// The exporter's HTTP client: each export is one HTTP/1.1 exchange run on rouse's runtime.
#[derive(Debug)]
struct Export {
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Export {
    async fn send_bytes(&self, req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.rt
            .spawn(async move {
                tokio::time::timeout(EXPORT_TIMEOUT, post(req))
                    .await
                    .map_err(|_| HttpError::from("OTLP export timed out"))?
            })
            .await?
    }
}

async fn post(req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = req.into_parts();
    let host = parts
        .uri
        .host()
        .ok_or("the OTLP endpoint has no host")?
        .to_owned();
    let port = parts.uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    if let Some(a) = parts.uri.authority().cloned() {
        parts
            .headers
            .insert(http::header::HOST, http::HeaderValue::from_str(a.as_str())?);
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".parse(), |pq| pq.as_str().parse())?;
    let res = send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = res.into_parts();
    // The answer is a short status; anything longer is not read whole.
    let body = Limited::new(body, 1 << 20).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
