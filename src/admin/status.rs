//! The status page's data: what an operator asks of a scale-to-zero proxy all day (which
//! revisions are warm, what is held and for how long, how long cold starts take, where traffic
//! goes), as one JSON document (`/api/status`, documented in `docs/metrics.md`), and the route
//! table alone (`/api/routes`, also what `rouse routes` prints).
//!
//! Everything is read from live state when asked, like the gauges, except the short history
//! behind the page's charts: a sampler task reads each revision every [`STEP`] and keeps the
//! last [`SAMPLES`] readings. Nothing here is on a request's way.

use crate::http::server::Connections;
use crate::proxy::Proxy;
use crate::proxy::router::{Route, RouteTable};
use crate::revision::Revision;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Time between two history samples.
pub const STEP: Duration = Duration::from_secs(2);
/// Samples kept per revision: five minutes.
pub const SAMPLES: usize = 150;
/// The window of `request_rate`, in samples (10 s).
const RATE_SAMPLES: usize = 5;

/// A service and where its requests go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// The hosts that lead to it; `*` when it takes every host no other service claims.
    pub hosts: Vec<String>,
    /// Its routes, in the order they are tried.
    pub routes: Vec<RouteView>,
    /// Where requests no route matches go; `None`: they get 404.
    pub default: Option<RouteView>,
}

/// One route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteView {
    /// The path prefix it matches.
    pub path: String,
    /// Headers a request must carry, name and value.
    pub headers: Vec<(String, String)>,
    /// Its split, with each arm's share now.
    pub arms: Vec<ArmView>,
    /// The gradual rollout moving it, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

/// A gradual rollout as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutView {
    /// The revision that ends with all of it.
    pub revision: String,
    /// `warming`, `moving`, `done` or `stopped`.
    pub state: String,
    /// Steps taken.
    pub step: u32,
    /// Steps in all.
    pub steps: u32,
}

/// One arm of a split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmView {
    /// The revision it sends to.
    pub revision: String,
    /// Its share, in percent; 0: only requests that name its tag.
    pub percent: u32,
    /// The tag that selects it.
    pub tag: Option<String>,
}

fn route_view(r: &Route) -> RouteView {
    RouteView {
        path: r.path().to_owned(),
        headers: r
            .match_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        arms: r
            .arms()
            .iter()
            .zip(r.shares())
            .map(|(a, percent)| ArmView {
                revision: a.revision.name.to_string(),
                percent,
                tag: a.tag().map(str::to_owned),
            })
            .collect(),
        rollout: r.rollout().map(|ro| RolloutView {
            revision: ro.revision.name.to_string(),
            state: ro.state().as_str().to_owned(),
            step: ro.step(),
            steps: ro.spec.steps,
        }),
    }
}

/// The route table as data.
pub fn routes(table: &RouteTable) -> Vec<ServiceView> {
    table
        .services()
        .iter()
        .enumerate()
        .map(|(i, s)| ServiceView {
            name: s.name.to_string(),
            hosts: table.hosts_of(i).into_iter().map(str::to_owned).collect(),
            routes: s.routes().iter().map(route_view).collect(),
            default: s.default_route().map(route_view),
        })
        .collect()
}

/// Prints a route table for a terminal: a block per service, a line per route.
pub fn print_routes(services: &[ServiceView]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for s in services {
        let _ = writeln!(out, "{}  hosts: {}", s.name, s.hosts.join(", "));
        let lines = s
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r))
            .chain(s.default.as_ref().map(|d| ("(default)", d)));
        let mut any = false;
        for (label, r) in lines {
            any = true;
            let mut matched = label.to_owned();
            for (k, v) in &r.headers {
                let _ = write!(matched, " {k}={v}");
            }
            let split: Vec<String> = r
                .arms
                .iter()
                .map(|a| {
                    let share = if a.percent == 0 {
                        "tag only".to_owned()
                    } else {
                        format!("{}%", a.percent)
                    };
                    match &a.tag {
                        Some(t) => format!("{} {share} (tag {t})", a.revision),
                        None => format!("{} {share}", a.revision),
                    }
                })
                .collect();
            let _ = writeln!(out, "  {matched:<24} -> {}", split.join(", "));
        }
        if !any {
            let _ = writeln!(out, "  (no routes: every request gets 404)");
        }
        if s.default.is_none() && any {
            let _ = writeln!(out, "  {:<24} -> 404 no-route", "(other paths)");
        }
    }
    out
}

/// One revision's readings, oldest first.
#[derive(Debug, Default)]
struct Ring {
    in_flight: VecDeque<u32>,
    held: VecDeque<u32>,
    /// Requests answered during each step.
    requests: VecDeque<u64>,
    /// The answered total at the last sample.
    last_total: Option<u64>,
}

impl Ring {
    fn push(&mut self, in_flight: u32, held: u32, total: u64) {
        if self.in_flight.len() == SAMPLES {
            self.in_flight.pop_front();
            self.held.pop_front();
            self.requests.pop_front();
        }
        self.in_flight.push_back(in_flight);
        self.held.push_back(held);
        // A revision seen for the first time has no step behind it yet.
        self.requests
            .push_back(total.saturating_sub(self.last_total.unwrap_or(total)));
        self.last_total = Some(total);
    }
}

/// Identity of a revision across reloads, as the registry keeps it.
type Key = (Arc<str>, Arc<str>);

fn answered_total(r: &Revision) -> u64 {
    r.metrics.answered().iter().map(|(_, n)| n).sum()
}

/// The status of one rouse process.
#[derive(Debug)]
pub struct Status {
    proxy: Arc<Proxy>,
    role: &'static str,
    started: Instant,
    draining: Arc<AtomicBool>,
    listeners: Vec<(&'static str, Arc<Connections>)>,
    history: Mutex<HashMap<Key, Ring>>,
}

#[derive(Serialize)]
struct Doc<'a> {
    rouse: Process<'a>,
    listeners: Vec<Listener<'a>>,
    services: Vec<ServiceView>,
    revisions: Vec<RevisionView>,
    history_step_seconds: u64,
    cold_starts: Vec<ColdStartView>,
    unrouted: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct Process<'a> {
    version: &'a str,
    role: &'a str,
    uptime_seconds: f64,
    draining: bool,
    ready: bool,
}

#[derive(Serialize)]
struct Listener<'a> {
    name: &'a str,
    open: usize,
    limit: usize,
}

#[derive(Serialize)]
struct RevisionView {
    service: String,
    name: String,
    phase: &'static str,
    reason: Option<String>,
    retry_in_seconds: Option<f64>,
    desired: u32,
    container_concurrency: u32,
    endpoints: Vec<EndpointView>,
    in_flight: u32,
    held: usize,
    held_for_seconds: f64,
    requests: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    request_rate: f64,
    history: HistoryView,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    in_flight: u32,
}

#[derive(Serialize, Default)]
struct HistoryView {
    in_flight: Vec<u32>,
    held: Vec<u32>,
    requests: Vec<u64>,
}

#[derive(Serialize)]
struct ColdStartView {
    service: String,
    revision: String,
    ago_seconds: f64,
    seconds: f64,
}

/// Seconds with millisecond precision: enough for a page, and short JSON.
fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl Status {
    /// The status of the process serving `proxy` in `role` (gateway, activator, sidecar).
    pub fn new(
        proxy: Arc<Proxy>,
        role: &'static str,
        draining: Arc<AtomicBool>,
        listeners: Vec<(&'static str, Arc<Connections>)>,
    ) -> Status {
        Status {
            proxy,
            role,
            started: Instant::now(),
            draining,
            listeners,
            history: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one history sample of every revision, forgetting revisions that have left.
    pub fn sample(&self) {
        let table = self.proxy.table();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashMap::with_capacity(table.revisions().len());
        for r in table.revisions() {
            let key: Key = (r.service.clone(), r.name.clone());
            let mut ring = h.remove(&key).unwrap_or_default();
            ring.push(
                r.in_flight(),
                u32::try_from(r.held()).unwrap_or(u32::MAX),
                answered_total(r),
            );
            seen.insert(key, ring);
        }
        *h = seen;
    }

    /// Samples every [`STEP`] until dropped.
    pub async fn run_sampler(self: Arc<Self>) {
        let mut every = tokio::time::interval(STEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sample();
        }
    }

    /// Stops the rollout of `service`: `None` if it has none, else whether it was going on
    /// (a finished rollout stays done).
    pub fn stop_rollout(&self, service: &str) -> Option<bool> {
        let table = self.proxy.table();
        let r = table
            .rollouts()
            .iter()
            .find(|r| &*r.spec.service == service)?;
        let stopped = r.stop();
        if stopped {
            tracing::info!(
                service, revision = %r.revision.name, step = r.step(),
                "rollout stopped; it starts again from the configured split when rouse restarts or the rollout in its config changes: write the traffic you want there to keep it"
            );
        }
        Some(stopped)
    }

    /// The route table now.
    pub fn routes_json(&self) -> String {
        serde_json::to_string(&routes(&self.proxy.table())).unwrap_or_default()
    }

    /// The whole status document; `ready` is what `/readyz` would say.
    pub fn json(&self, ready: bool) -> String {
        let table = self.proxy.table();
        let metrics = self.proxy.metrics();
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let revisions = table
            .revisions()
            .iter()
            .map(|r| {
                let phase = r.phase();
                let (reason, retry_in) = match &phase {
                    crate::revision::phase::Phase::Failed { reason, retry_in } => {
                        (Some(reason.to_string()), Some(secs(*retry_in)))
                    }
                    _ => (None, None),
                };
                let ring = history.get(&(r.service.clone(), r.name.clone()));
                let hist = ring.map_or_else(HistoryView::default, |g| HistoryView {
                    in_flight: g.in_flight.iter().copied().collect(),
                    held: g.held.iter().copied().collect(),
                    requests: g.requests.iter().copied().collect(),
                });
                let recent: u64 = hist.requests.iter().rev().take(RATE_SAMPLES).sum();
                let window = hist.requests.len().clamp(1, RATE_SAMPLES) as f64 * STEP.as_secs_f64();
                RevisionView {
                    service: r.service.to_string(),
                    name: r.name.to_string(),
                    phase: phase.as_str(),
                    reason,
                    retry_in_seconds: retry_in,
                    desired: r.desired(),
                    container_concurrency: r.settings().container_concurrency,
                    endpoints: r
                        .endpoints()
                        .iter()
                        .map(|e| EndpointView {
                            address: e.addr.to_string(),
                            in_flight: e.in_flight(),
                        })
                        .collect(),
                    in_flight: r.in_flight(),
                    held: r.held(),
                    held_for_seconds: secs(r.held_for()),
                    requests: r.metrics.answered().into_iter().collect(),
                    rejected: r.metrics.rejections().into_iter().collect(),
                    request_rate: (recent as f64 / window * 100.0).round() / 100.0,
                    history: hist,
                }
            })
            .collect();
        drop(history);
        let cold_starts = metrics
            .cold_starts
            .list()
            .into_iter()
            .rev()
            .map(|c| ColdStartView {
                service: c.service.to_string(),
                revision: c.revision.to_string(),
                ago_seconds: secs(now.saturating_duration_since(c.at)),
                seconds: secs(c.took),
            })
            .collect();
        let doc = Doc {
            rouse: Process {
                version: env!("CARGO_PKG_VERSION"),
                role: self.role,
                uptime_seconds: secs(now.saturating_duration_since(self.started)),
                draining: self.draining.load(Ordering::Relaxed),
                ready,
            },
            listeners: self
                .listeners
                .iter()
                .map(|(name, c)| Listener {
                    name,
                    open: c.open(),
                    limit: c.limit(),
                })
                .collect(),
            services: routes(&table),
            revisions,
            history_step_seconds: STEP.as_secs(),
            cold_starts,
            unrouted: metrics.unrouted_counts().into_iter().collect(),
        };
        serde_json::to_string(&doc).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    const YAML: &str = r#"
listen: "127.0.0.1:0"
services:
  - name: shop
    hosts: ["shop.test", "*"]
    routes:
      - path: /api
        headers: { x-env: beta }
        traffic: [{ revision: b, percent: 100 }]
    traffic:
      - { revision: a, percent: 80, tag: stable }
      - { revision: b, percent: 20 }
      - { revision: c, percent: 0, tag: next }
    revisions:
      - { name: a, endpoints: ["127.0.0.1:1"] }
      - { name: b, endpoints: ["127.0.0.1:2"] }
      - { name: c, endpoints: ["127.0.0.1:3"] }
  - name: admin
    hosts: ["admin.test"]
    routes:
      - path: /
        traffic: [{ revision: x, percent: 100 }]
    revisions:
      - { name: x, endpoints: ["127.0.0.1:4"] }
"#;

    fn table() -> RouteTable {
        RouteTable::build(
            &Config::parse(YAML).unwrap(),
            &Arc::new(Metrics::new()),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_route_view_is_the_table() {
        let v = routes(&table());
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].hosts, ["shop.test", "*"]);
        assert_eq!(v[0].routes[0].path, "/api");
        assert_eq!(v[0].routes[0].headers, [("x-env".into(), "beta".into())]);
        let d = v[0].default.as_ref().unwrap();
        let arms: Vec<_> = d
            .arms
            .iter()
            .map(|a| (a.revision.as_str(), a.percent, a.tag.as_deref()))
            .collect();
        assert_eq!(
            arms,
            [
                ("a", 80, Some("stable")),
                ("b", 20, None),
                ("c", 0, Some("next"))
            ]
        );
        assert!(v[1].default.is_none());
    }

    #[test]
    fn printed_routes_name_every_split_and_the_404s() {
        let out = print_routes(&routes(&table()));
        assert_eq!(
            out,
            "shop  hosts: shop.test, *\n\
             \x20 /api x-env=beta          -> b 100%\n\
             \x20 (default)                -> a 80% (tag stable), b 20%, c tag only (tag next)\n\
             admin  hosts: admin.test\n\
             \x20 /                        -> x 100%\n\
             \x20 (other paths)            -> 404 no-route\n"
        );
    }

    #[test]
    fn history_keeps_the_last_samples_and_counts_per_step() {
        let mut r = Ring::default();
        r.push(1, 0, 10);
        r.push(2, 1, 15);
        assert_eq!(r.requests, [0, 5]);
        for i in 0..SAMPLES as u64 {
            r.push(0, 0, 15 + i);
        }
        assert_eq!(r.in_flight.len(), SAMPLES);
        assert_eq!(r.requests.back(), Some(&1));
    }
}
