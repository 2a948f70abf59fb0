//! Prometheus metrics (prometheus-client, OpenMetrics text on the admin port).
//!
//! Counters and histograms live in label families, but the request path never looks a label
//! set up: each revision and endpoint resolves its handles once when the route table is built
//! ([`RevisionMetrics`], [`EndpointMetrics`]), so recording is a few atomic adds. Gauges of
//! live state (in-flight, held) are not stored at all: a collector reads the revisions' atomics
//! at scrape time, so removed revisions disappear from `/metrics` with the config that held them.

use crate::revision::Revision;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    revision: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    service: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    revision: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    service: String,
    revision: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily = Family<RevisionLabels, Histogram, fn() -> Histogram>;

/// Why a request was refused before reaching an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The revision's held-request count limit was reached.
    QueueFull,
    /// The revision's held-bytes limit was reached.
    QueueBytes,
    /// The request waited `max_wait` without an endpoint freeing up.
    QueueTimeout,
    /// The revision's backend failed to start.
    StartFailed,
}

impl Reject {
    fn label(self) -> &'static str {
        match self {
            Reject::QueueFull => "queue_full",
            Reject::QueueBytes => "queue_bytes",
            Reject::QueueTimeout => "queue_timeout",
            Reject::StartFailed => "start_failed",
        }
    }
}

/// Why a request matched no revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// No service has the request's host.
    NoService,
    /// The request was malformed (for example no Host).
    BadRequest,
}

/// All metric families of one rouse process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    queue_wait: HistogramFamily,
    connect_errors: Family<EndpointLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    unrouted: Family<ReasonLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    cold_start: HistogramFamily,
    scale_events: Family<DirectionLabels, Counter>,
    start_failures: Family<RevisionLabels, Counter>,
    live: Arc<ArcSwap<Vec<Arc<Revision>>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    service: String,
    revision: String,
    direction: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms doubling to ~4.4 min: proxied calls and multi-second cold starts alike.
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let queue_wait: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let connect_errors = Family::<EndpointLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let unrouted = Family::<ReasonLabels, Counter>::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let cold_start: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let scale_events = Family::<DirectionLabels, Counter>::default();
        let start_failures = Family::<RevisionLabels, Counter>::default();
        registry.register(
            "rouse_cold_start_seconds",
            "Time from the first request held for a revision with no endpoint to its forwarding",
            cold_start.clone(),
        );
        registry.register(
            "rouse_scale_events",
            "Changes of a revision's desired endpoint count, by direction (up, down)",
            scale_events.clone(),
        );
        registry.register(
            "rouse_backend_start_failures",
            "Backend processes that exited or missed their boot deadline before becoming ready",
            start_failures.clone(),
        );
        registry.register(
            "rouse_requests",
            "Requests answered, by service, revision and status class (2xx, 5xx, ...)",
            requests.clone(),
        );
        registry.register(
            "rouse_request_duration_seconds",
            "Time from request arrival to the end of the response body",
            duration.clone(),
        );
        registry.register(
            "rouse_queue_wait_seconds",
            "Time requests were held waiting for an endpoint slot",
            queue_wait.clone(),
        );
        registry.register(
            "rouse_upstream_connect_errors",
            "Failed connection attempts to an endpoint",
            connect_errors.clone(),
        );
        registry.register(
            "rouse_rejected_requests",
            "Requests refused before reaching an endpoint, by reason",
            rejected.clone(),
        );
        registry.register(
            "rouse_unrouted_requests",
            "Requests that matched no service, by reason",
            unrouted.clone(),
        );
        registry.register(
            "rouse_config_reloads",
            "Configuration reload attempts, by result (ok, invalid)",
            config_reloads.clone(),
        );
        let live = Arc::new(ArcSwap::from_pointee(Vec::new()));
        registry.register_collector(Box::new(LiveCollector(live.clone())));
        Metrics {
            registry,
            requests,
            duration,
            queue_wait,
            connect_errors,
            rejected,
            unrouted,
            config_reloads,
            cold_start,
            scale_events,
            start_failures,
            live,
        }
    }

    /// Adds a collector read at scrape time (a role's own gauges), before sharing.
    pub fn add_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Renders every metric as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Replaces the set of revisions whose live gauges are exported.
    pub fn set_live(&self, revisions: Vec<Arc<Revision>>) {
        self.live.store(Arc::new(revisions));
    }

    /// Resolves the handles one revision records into.
    pub fn revision(&self, service: &str, revision: &str) -> RevisionMetrics {
        let l = |code| RequestLabels {
            service: service.to_owned(),
            revision: revision.to_owned(),
            code,
        };
        let rl = RevisionLabels {
            service: service.to_owned(),
            revision: revision.to_owned(),
        };
        let rej = |reason| RejectLabels {
            service: service.to_owned(),
            revision: revision.to_owned(),
            reason,
        };
        RevisionMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.requests.get_or_create_owned(&l(c))),
            duration: self.duration.get_or_create_owned(&rl),
            queue_wait: self.queue_wait.get_or_create_owned(&rl),
            rejected: [
                Reject::QueueFull,
                Reject::QueueBytes,
                Reject::QueueTimeout,
                Reject::StartFailed,
            ]
            .map(|r| self.rejected.get_or_create_owned(&rej(r.label()))),
            cold_start: self.cold_start.get_or_create_owned(&rl),
            scale_up: self.scale_events.get_or_create_owned(&DirectionLabels {
                service: service.to_owned(),
                revision: revision.to_owned(),
                direction: "up",
            }),
            scale_down: self.scale_events.get_or_create_owned(&DirectionLabels {
                service: service.to_owned(),
                revision: revision.to_owned(),
                direction: "down",
            }),
            start_failures: self.start_failures.get_or_create_owned(&rl),
        }
    }

    /// Resolves the handles one endpoint records into.
    pub fn endpoint(&self, service: &str, revision: &str, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics {
            connect_errors: self.connect_errors.get_or_create_owned(&EndpointLabels {
                service: service.to_owned(),
                revision: revision.to_owned(),
                endpoint: endpoint.to_owned(),
            }),
        }
    }

    /// Counts a request that matched no revision.
    pub fn unrouted(&self, why: Unrouted) {
        let reason = match why {
            Unrouted::NoService => "no_service",
            Unrouted::BadRequest => "bad_request",
        };
        self.unrouted.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a configuration reload attempt.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "invalid" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// Pre-resolved handles of one revision.
#[derive(Debug, Clone)]
pub struct RevisionMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    /// Time spent held, observed when a held request leaves the queue (either way).
    pub queue_wait: Histogram,
    rejected: [Counter; 4],
    /// First held request of a cold revision → its forwarding.
    pub cold_start: Histogram,
    scale_up: Counter,
    scale_down: Counter,
    start_failures: Counter,
}

impl RevisionMetrics {
    /// Records one finished request.
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }

    /// Counts a refusal.
    pub fn reject(&self, why: Reject) {
        let i = match why {
            Reject::QueueFull => 0,
            Reject::QueueBytes => 1,
            Reject::QueueTimeout => 2,
            Reject::StartFailed => 3,
        };
        self.rejected[i].inc();
    }

    /// Counts a change of the desired endpoint count.
    pub fn scale_event(&self, up: bool) {
        if up {
            self.scale_up.inc();
        } else {
            self.scale_down.inc();
        }
    }

    /// Counts a failed backend start.
    pub fn start_failure(&self) {
        self.start_failures.inc();
    }
}

/// Pre-resolved handles of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// Failed connection attempts.
    pub connect_errors: Counter,
}

/// Exports the live gauges by reading revision state at scrape time.
#[derive(Debug)]
struct LiveCollector(Arc<ArcSwap<Vec<Arc<Revision>>>>);

/// Encodes one gauge family with a sample per revision, labelled by service and revision.
fn revision_gauge(
    encoder: &mut DescriptorEncoder,
    revs: &[Arc<Revision>],
    name: &str,
    help: &str,
    value: impl Fn(&Revision) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for r in revs {
        let labels = [("service", &*r.service), ("revision", &*r.name)];
        ConstGauge::new(value(r)).encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

fn saturating(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let revs = self.0.load();
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_in_flight",
            "Requests of a revision being proxied to an endpoint right now (streams and upgrades count until they end)",
            |r| i64::from(r.in_flight()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_held_requests",
            "Requests of a revision held waiting for an endpoint slot",
            |r| saturating(r.held()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_endpoints",
            "Endpoints a revision can send requests to",
            |r| saturating(r.endpoints().len()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_desired_scale",
            "Endpoints the autoscaler wants for a revision (static revisions: their endpoint count)",
            |r| i64::from(r.desired()),
        )?;
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "rouse_endpoint_in_flight",
            "Requests in flight to one endpoint",
            None,
            gauge.metric_type(),
        )?;
        for r in revs.iter() {
            for ep in r.endpoints().iter() {
                let addr = ep.addr.to_string();
                let labels = [
                    ("service", &*r.service),
                    ("revision", &*r.name),
                    ("endpoint", addr.as_str()),
                ];
                ConstGauge::new(i64::from(ep.in_flight())).encode(e.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
