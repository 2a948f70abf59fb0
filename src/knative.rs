//! Knative Serving's wire contracts: the probe and routing headers its components exchange,
//! and the protobuf `Stat` a queue-proxy reports to the autoscaler every second. Reproduced
//! byte for byte so rouse can stand in for a Knative component without the others noticing.

use crate::revision::Revision;
use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{self, HeaderName};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Probe marker: `queue` (readiness of this pod), `probe` (ingress prober), `activator`.
pub const NETWORK_PROBE: HeaderName = HeaderName::from_static("k-network-probe");
/// Echoed back on `K-Network-Probe: probe`.
pub const NETWORK_HASH: HeaderName = HeaderName::from_static("k-network-hash");
/// The client's `Host`, moved aside by the activator.
pub const ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
/// The routed revision's name, set by the ingress for the activator.
pub const SERVING_REVISION: HeaderName = HeaderName::from_static("knative-serving-revision");
/// The routed revision's namespace.
pub const SERVING_NAMESPACE: HeaderName = HeaderName::from_static("knative-serving-namespace");
/// Set by an activator on the requests it forwards (`K-Proxy-Request: activator`).
pub const PROXY_REQUEST: HeaderName = HeaderName::from_static("k-proxy-request");
/// Legacy kubelet probe marker.
pub const KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");

/// `User-Agent` prefixes of the callers whose requests are health checks, not traffic.
const HEALTH_CHECK_AGENTS: [&str; 3] = [
    "kube-probe/",
    "Knative-Activator-Probe",
    "Knative-Autoscaling-Probe",
];

/// What a request to a queue-proxy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `K-Network-Probe: probe`: answered at once, with `K-Network-Hash` echoed.
    NetworkProbe,
    /// A readiness check: kubelet or activator, or any `K-Network-Probe` other than `probe`.
    /// Carries the `K-Network-Probe` value (`queue` runs the app's readiness probe).
    HealthCheck(String),
    /// Application traffic.
    Traffic,
}

/// Classifies a request the way queue-proxy's drainer and health handler do.
pub fn classify(h: &HeaderMap) -> Kind {
    // One pass over the names instead of a hash lookup per Knative header: on plain traffic
    // the marker headers are absent, and comparing a standard name with them is one branch.
    let (mut has_probe, mut has_kubelet) = (false, false);
    for k in h.keys() {
        has_probe |= k == NETWORK_PROBE;
        has_kubelet |= k == KUBELET_PROBE;
    }
    let probe = if has_probe {
        h.get(&NETWORK_PROBE).map(|v| v.as_bytes())
    } else {
        None
    };
    if probe == Some(b"probe") {
        return Kind::NetworkProbe;
    }
    let agent = h
        .get(header::USER_AGENT)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let health_agent = HEALTH_CHECK_AGENTS
        .iter()
        .any(|p| agent.starts_with(p.as_bytes()));
    if probe.is_some() || health_agent || has_kubelet {
        let value = String::from_utf8_lossy(probe.unwrap_or_default()).into_owned();
        return Kind::HealthCheck(value);
    }
    Kind::Traffic
}

/// True when an activator sent this request, so its concurrency is reported as proxied.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers
        .get(&PROXY_REQUEST)
        .is_some_and(|v| v.as_bytes() == b"activator")
}

/// Undoes the activator's and ingress's rewrites before a request reaches the app: `Host` comes
/// back from `K-Original-Host`, and the routing and probe headers are removed.
pub fn restore_request_headers(h: &mut HeaderMap) {
    let rewritten = h.keys().any(|k| {
        k == ORIGINAL_HOST || k == SERVING_REVISION || k == SERVING_NAMESPACE || k == NETWORK_HASH
    });
    if !rewritten {
        return;
    }
    if let Some(host) = h.remove(&ORIGINAL_HOST)
        && !host.is_empty()
    {
        h.insert(header::HOST, host);
    }
    h.remove(&SERVING_REVISION);
    h.remove(&SERVING_NAMESPACE);
    h.remove(&NETWORK_HASH);
}

/// The autoscaler's view of one pod over the last reporting period
/// (`pkg/autoscaler/metrics/stat.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// The pod reporting.
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// Time-weighted average of requests active (queued or at the app).
    #[prost(double, tag = "2")]
    pub average_concurrent_requests: f64,
    /// The same, for requests an activator sent.
    #[prost(double, tag = "3")]
    pub average_proxied_concurrent_requests: f64,
    /// Requests per second that arrived.
    #[prost(double, tag = "4")]
    pub request_count: f64,
    /// Requests per second that arrived through an activator.
    #[prost(double, tag = "5")]
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    #[prost(double, tag = "6")]
    pub process_uptime: f64,
    /// Left 0, as queue-proxy does: the autoscaler stamps on receipt.
    #[prost(int64, tag = "7")]
    pub timestamp: i64,
}

/// Closes a revision's reporting window at `now` and turns it into a `Stat`. Counts are per
/// second of the nominal `period` (queue-proxy's convention), so a tick that runs a little
/// late does not turn 5 requests into 4.99 per second; the averages use the real window.
pub fn report(rev: &Revision, pod: &str, started: Instant, now: Instant, period: Duration) -> Stat {
    let all = rev.stats().take(now);
    let proxied = rev.proxied_stats().take(now);
    let per_sec = |n: u64| n as f64 / period.as_secs_f64().max(f64::MIN_POSITIVE);
    Stat {
        pod_name: pod.to_owned(),
        average_concurrent_requests: all.avg_concurrency,
        average_proxied_concurrent_requests: proxied.avg_concurrency,
        request_count: per_sec(all.arrivals),
        proxied_request_count: per_sec(proxied.arrivals),
        process_uptime: now.saturating_duration_since(started).as_secs_f64(),
        timestamp: 0,
    }
}

/// The latest `Stat` of one pod, refreshed every reporting period.
#[derive(Debug)]
pub struct StatReporter {
    rev: Arc<Revision>,
    pod: String,
    started: Instant,
    period: Duration,
    latest: ArcSwap<Stat>,
}

impl StatReporter {
    /// A reporter whose first snapshot, until the first period ends, is an empty `Stat` with
    /// the pod name (what the autoscaler expects from a pod that just started).
    pub fn new(rev: Arc<Revision>, pod: String, period: Duration) -> StatReporter {
        let latest = ArcSwap::from_pointee(Stat {
            pod_name: pod.clone(),
            ..Stat::default()
        });
        StatReporter {
            rev,
            pod,
            started: Instant::now(),
            period,
            latest,
        }
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Stat> {
        self.latest.load_full()
    }

    /// The revision reported on.
    pub fn revision(&self) -> &Arc<Revision> {
        &self.rev
    }

    /// Closes a period at `now`.
    pub fn tick(&self, now: Instant) {
        let stat = report(&self.rev, &self.pod, self.started, now, self.period);
        self.latest.store(Arc::new(stat));
    }

    /// Closes a period every period, until dropped.
    pub async fn run(self: Arc<Self>) {
        let every = self.period;
        let mut t = tokio::time::interval_at(Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let at = t.tick().await;
            self.tick(at.max(Instant::now()));
        }
    }
}

/// The reporter's figures as Prometheus gauges (queue-proxy's names), read at scrape time.
#[derive(Debug)]
pub struct StatCollector {
    reporter: Arc<OnceLock<Arc<StatReporter>>>,
    namespace: String,
    configuration: String,
}

impl StatCollector {
    /// Reports whatever reporter `slot` holds by scrape time (nothing before).
    pub fn new(
        slot: Arc<OnceLock<Arc<StatReporter>>>,
        namespace: &str,
        configuration: &str,
    ) -> StatCollector {
        StatCollector {
            reporter: slot,
            namespace: namespace.to_owned(),
            configuration: configuration.to_owned(),
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
    labels: &[(&str, &str)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let mut e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(e.encode_family(&labels)?)
}

impl Collector for StatCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(reporter) = self.reporter.get() else {
            return Ok(());
        };
        let s = reporter.latest();
        let r = reporter.revision();
        let labels = [
            ("namespace_name", self.namespace.as_str()),
            ("configuration_name", self.configuration.as_str()),
            ("revision_name", &*r.name),
            ("pod_name", s.pod_name.as_str()),
        ];
        let e = &mut encoder;
        gauge(
            e,
            "kn_serving_queue_depth",
            "Requests in the breaker right now: being served by the app plus waiting for a slot",
            f64::from(r.in_flight()) + r.held() as f64,
            &labels,
        )?;
        gauge(
            e,
            "queue_requests_per_second",
            "Requests per second that arrived in the last reporting period",
            s.request_count,
            &labels,
        )?;
        gauge(
            e,
            "queue_proxied_operations_per_second",
            "Requests per second that arrived through an activator in the last reporting period",
            s.proxied_request_count,
            &labels,
        )?;
        gauge(
            e,
            "queue_average_concurrent_requests",
            "Time-weighted average of active requests over the last reporting period",
            s.average_concurrent_requests,
            &labels,
        )?;
        gauge(
            e,
            "queue_average_proxied_concurrent_requests",
            "Time-weighted average of active requests sent by an activator over the last reporting period",
            s.average_proxied_concurrent_requests,
            &labels,
        )?;
        gauge(
            e,
            "process_uptime",
            "Seconds since the sidecar started",
            s.process_uptime,
            &labels,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn classifies_like_queue_proxy() {
        assert_eq!(
            classify(&headers(&[("k-network-probe", "probe")])),
            Kind::NetworkProbe
        );
        assert_eq!(
            classify(&headers(&[
                ("k-network-probe", "queue"),
                ("user-agent", "kube-probe/1.30")
            ])),
            Kind::HealthCheck("queue".into())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "kube-probe/1.30")])),
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "Knative-Activator-Probe")])),
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            classify(&headers(&[("k-network-probe", "activator")])),
            Kind::HealthCheck("activator".into())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "curl/8")])),
            Kind::Traffic
        );
    }

    fn revision() -> Arc<Revision> {
        use crate::revision::{ColdStart, QueueLimits, RevisionSettings, RevisionSpec};
        let m = Arc::new(crate::metrics::Metrics::new());
        Arc::new(Revision::new(
            RevisionSpec {
                service: "s".into(),
                name: "r".into(),
                protocol: crate::config::Protocol::Http1,
                settings: RevisionSettings {
                    container_concurrency: 0,
                    limits: QueueLimits {
                        max_requests: 10,
                        max_bytes: 0,
                        max_wait: None,
                    },
                    eject_for: Duration::from_secs(1),
                    pool: crate::upstream::PoolSettings::default(),
                    cold_start: ColdStart::default(),
                },
            },
            Vec::new(),
            &m,
        ))
    }

    /// Brute force: the active count sampled every millisecond of `[from, to)`.
    fn model(events: &[(u64, u64, bool)], from: u64, to: u64, proxied_only: bool) -> f64 {
        let n: usize = (from..to)
            .map(|t| {
                events
                    .iter()
                    .filter(|(a, d, p)| *a <= t && t < *d && (*p || !proxied_only))
                    .count()
            })
            .sum();
        n as f64 / (to - from) as f64
    }

    #[tokio::test(start_paused = true)]
    async fn stats_match_a_brute_force_model_with_proxied_requests_apart() {
        // (arrival ms, departure ms, sent by an activator)
        let timelines: [&[(u64, u64, bool)]; 3] = [
            &[(0, 500, false), (500, 1000, false)],
            &[
                (100, 600, true),
                (200, 1700, false),
                (900, 950, true),
                (1500, 2500, false),
                (1999, 2001, true),
            ],
            &[
                (0, 3000, true),
                (0, 3000, false),
                (10, 20, false),
                (2990, 3000, true),
            ],
        ];
        for events in timelines {
            let rev = revision();
            let t0 = Instant::now();
            let mut guards: Vec<Option<crate::revision::Active>> =
                (0..events.len()).map(|_| None).collect();
            let mut points: Vec<(u64, bool, usize)> = events
                .iter()
                .enumerate()
                .flat_map(|(i, &(a, d, _))| [(a, true, i), (d, false, i)])
                .collect();
            points.sort_by_key(|&(t, arrive, _)| (t, arrive));
            let mut stats = Vec::new();
            let mut edge = 1000;
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let goto = |ms: u64| {
                let d = at(ms).saturating_duration_since(Instant::now());
                tokio::time::advance(d)
            };
            for (t, arrive, i) in points {
                while t >= edge {
                    goto(edge).await;
                    stats.push(report(&rev, "p", t0, at(edge), Duration::from_secs(1)));
                    edge += 1000;
                }
                goto(t).await;
                if arrive {
                    guards[i] = Some(rev.begin(events[i].2));
                } else {
                    guards[i] = None;
                }
            }
            while edge <= 3000 {
                goto(edge).await;
                stats.push(report(&rev, "p", t0, at(edge), Duration::from_secs(1)));
                edge += 1000;
            }
            for (w, s) in stats.iter().enumerate() {
                let (from, to) = (w as u64 * 1000, (w as u64 + 1) * 1000);
                let arrived = |proxied_only: bool| {
                    events
                        .iter()
                        .filter(|(a, _, p)| (from..to).contains(a) && (*p || !proxied_only))
                        .count() as f64
                };
                let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
                assert!(
                    close(
                        s.average_concurrent_requests,
                        model(events, from, to, false)
                    ),
                    "window {w} of {events:?}: {s:?}"
                );
                assert!(
                    close(
                        s.average_proxied_concurrent_requests,
                        model(events, from, to, true)
                    ),
                    "window {w} of {events:?}: {s:?}"
                );
                assert_eq!(s.request_count, arrived(false), "window {w}: {s:?}");
                assert_eq!(s.proxied_request_count, arrived(true), "window {w}: {s:?}");
                assert!(close(s.process_uptime, (to / 1000) as f64));
                assert_eq!(s.pod_name, "p");
            }
        }
    }

    #[test]
    fn restores_host_and_strips_routing_headers() {
        let mut h = headers(&[
            ("host", "activator-service"),
            ("k-original-host", "app.example.com"),
            ("knative-serving-revision", "app-00001"),
            ("knative-serving-namespace", "default"),
            ("x-keep", "1"),
        ]);
        restore_request_headers(&mut h);
        assert_eq!(h.get("host").unwrap(), "app.example.com");
        assert!(h.get("k-original-host").is_none());
        assert!(h.get("knative-serving-revision").is_none());
        assert!(h.get("knative-serving-namespace").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }
}
