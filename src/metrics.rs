//! Prometheus metrics (prometheus-client, OpenMetrics text on the admin port).
//!
//! Counters and histograms live in label families, but the request path never looks a label
//! set up: each revision and endpoint resolves its handles once when the route table is built
//! ([`RevisionMetrics`], [`EndpointMetrics`]), so recording is a few atomic adds. Gauges of
//! live state (in-flight, held) are not stored at all: the owners of that state register
//! collectors that read it at scrape time ([`Metrics::add_collector`]), so removed revisions
//! disappear from `/metrics` with the config that held them. Failure reasons are labelled by
//! their [`Code`], so a reason is spelled in one place.

use crate::error::Code;
use crate::http::server::Connections;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

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
struct OutcomeLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily = Family<RevisionLabels, Histogram, fn() -> Histogram>;

/// All metric families of one rouse process.
#[derive(Debug)]
pub struct Metrics {
    /// Locked only to register a collector and to scrape, never on the request path.
    registry: Mutex<Registry>,
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
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    sticky: Family<OutcomeLabels, Counter>,
    no_wake: Family<OutcomeLabels, Counter>,
    /// The last cold starts, for the status page (the histogram has their distribution, not
    /// their order).
    pub cold_starts: ColdStarts,
}

/// One finished cold start.
#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Service of the revision.
    pub service: std::sync::Arc<str>,
    /// The revision.
    pub revision: std::sync::Arc<str>,
    /// When it ended (its first held request was forwarded).
    pub at: tokio::time::Instant,
    /// How long it took.
    pub took: std::time::Duration,
}

/// The last [`ColdStarts::KEPT`] cold starts, newest last. Written once per cold start, read by
/// the status page: never on a request's way.
#[derive(Debug, Default)]
pub struct ColdStarts(Mutex<std::collections::VecDeque<ColdStart>>);

impl ColdStarts {
    /// How many are kept.
    pub const KEPT: usize = 50;

    /// Records a cold start that just ended.
    pub fn record(
        &self,
        service: &std::sync::Arc<str>,
        revision: &std::sync::Arc<str>,
        took: std::time::Duration,
    ) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == Self::KEPT {
            q.pop_front();
        }
        q.push_back(ColdStart {
            service: service.clone(),
            revision: revision.clone(),
            at: tokio::time::Instant::now(),
            took,
        });
    }

    /// The kept cold starts, newest last.
    pub fn list(&self) -> Vec<ColdStart> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
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
        let access_log_dropped = Counter::default();
        let sticky = Family::<OutcomeLabels, Counter>::default();
        let no_wake = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "rouse_no_wake_requests",
            "Requests matched by a service's no_wake, by outcome (answered, passed)",
            no_wake.clone(),
        );
        registry.register(
            "rouse_sticky_requests",
            "Requests of services with sticky splits, by outcome (pinned, new, replaced)",
            sticky.clone(),
        );
        registry.register(
            "rouse_access_log_dropped",
            "Access log lines dropped because the log's writer fell behind",
            access_log_dropped.clone(),
        );
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
        // Exported at 0 from the start, so that a rate over them, or a check that one is 0,
        // finds the series before its first event.
        for result in ["ok", "invalid"] {
            config_reloads.get_or_create_owned(&ResultLabels { result });
        }
        for why in [Code::NoService, Code::NoRoute, Code::MissingHost] {
            unrouted.get_or_create_owned(&ReasonLabels {
                reason: why.label(),
            });
        }
        Metrics {
            registry: Mutex::new(registry),
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
            cold_starts: ColdStarts::default(),
            access_log_dropped,
            sticky,
            no_wake,
        }
    }

    /// The counters of a sticky service: pinned, new, replaced.
    pub fn sticky(&self, service: &str) -> [Counter; 3] {
        ["pinned", "new", "replaced"].map(|outcome| {
            self.sticky.get_or_create_owned(&OutcomeLabels {
                service: service.to_owned(),
                outcome,
            })
        })
    }

    /// The counters of a service's `no_wake`: answered, passed.
    pub fn no_wake(&self, service: &str) -> [Counter; 2] {
        ["answered", "passed"].map(|outcome| {
            self.no_wake.get_or_create_owned(&OutcomeLabels {
                service: service.to_owned(),
                outcome,
            })
        })
    }

    /// Requests that matched no revision, by reason label, for the status page.
    pub fn unrouted_counts(&self) -> Vec<(&'static str, u64)> {
        [Code::NoService, Code::NoRoute, Code::MissingHost]
            .map(|c| {
                let n = self
                    .unrouted
                    .get_or_create(&ReasonLabels { reason: c.label() })
                    .get();
                (c.label(), n)
            })
            .to_vec()
    }

    /// Adds a collector read at scrape time (gauges of live state).
    pub fn add_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Renders every metric as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
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
            rejected: Code::REJECTIONS.map(|c| self.rejected.get_or_create_owned(&rej(c.label()))),
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
    pub fn unrouted(&self, why: Code) {
        self.unrouted
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
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
    /// One per [`Code::REJECTIONS`].
    rejected: [Counter; Code::REJECTIONS.len()],
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

    /// Requests answered so far, by status class (`1xx` to `5xx`).
    pub fn answered(&self) -> [(&'static str, u64); 5] {
        let names = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        std::array::from_fn(|i| (names[i], self.by_class[i].get()))
    }

    /// Refusals so far, by reason label.
    pub fn rejections(&self) -> [(&'static str, u64); Code::REJECTIONS.len()] {
        std::array::from_fn(|i| (Code::REJECTIONS[i].label(), self.rejected[i].get()))
    }

    /// Counts a refusal before an endpoint was reached (one of [`Code::REJECTIONS`]).
    pub fn reject(&self, why: Code) {
        if let Some(i) = Code::REJECTIONS.iter().position(|c| *c == why) {
            self.rejected[i].inc();
        }
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

/// The listeners' client connections, read at scrape time: open now, the limit, and how often
/// the limit held new connections back.
#[derive(Debug)]
pub struct ConnectionGauges(pub Vec<(&'static str, Arc<Connections>)>);

impl Collector for ConnectionGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "rouse_client_connections",
            "Client connections open on a listener",
            None,
            gauge.metric_type(),
        )?;
        for (listener, c) in &self.0 {
            let v = i64::try_from(c.open()).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(e.encode_family(&[("listener", *listener)])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "rouse_client_connections_limit",
            "Most client connections a listener keeps open at once (limits.max_connections)",
            None,
            gauge.metric_type(),
        )?;
        for (listener, c) in &self.0 {
            let v = i64::try_from(c.limit()).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(e.encode_family(&[("listener", *listener)])?)?;
        }
        let counter = ConstCounter::new(0u64);
        let mut e = encoder.encode_descriptor(
            "rouse_connection_limit_waits",
            "Times a listener at its connection limit stopped accepting until a connection closed",
            None,
            counter.metric_type(),
        )?;
        for (listener, c) in &self.0 {
            ConstCounter::new(c.waits()).encode(e.encode_family(&[("listener", *listener)])?)?;
        }
        if let Some(workers) = crate::workers::installed() {
            let mut e = encoder.encode_descriptor(
                "rouse_worker_connections",
                "Client connections open on a worker thread (--workers), all listeners together",
                None,
                gauge.metric_type(),
            )?;
            for (i, open) in workers.open().into_iter().enumerate() {
                let v = i64::try_from(open).unwrap_or(i64::MAX);
                let worker = i.to_string();
                ConstGauge::new(v).encode(e.encode_family(&[("worker", worker.as_str())])?)?;
            }
        }
        Ok(())
    }
}
