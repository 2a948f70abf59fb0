//! The protobuf `Stat` a queue-proxy reports to Knative's autoscaler every second, the same
//! figures as Prometheus gauges under queue-proxy's names, and the reporter that closes a
//! window every period. Reproduced byte for byte so rouse can stand in for a queue-proxy
//! without the autoscaler noticing.

use crate::revision::Revision;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
    reporter: Arc<StatReporter>,
    namespace: String,
    configuration: String,
}

impl StatCollector {
    /// Reports `reporter`'s latest figures.
    pub fn new(reporter: Arc<StatReporter>, namespace: &str, configuration: &str) -> StatCollector {
        StatCollector {
            reporter,
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
        let s = self.reporter.latest();
        let r = self.reporter.revision();
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
            let rev = Revision::for_test(0, 0);
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
}
