//! The sidecar: a drop-in for Knative's queue-proxy beside one app container. Settings from
//! the queue-proxy environment → a one-revision route table whose endpoint is the app → the
//! serving listener behind the queue front, plus the admin, stats and metrics listeners; the
//! stats reporter closes a window every second; SIGTERM drains.

use crate::admin::Admin;
use crate::error::Dialect;
use crate::http::server::{self, Connections, Handler, ServerSettings};
use crate::knative::drain::{DrainOutcome, Drainer};
use crate::knative::env::SidecarSettings;
use crate::knative::front::{AdminHandler, QueueHandler, StatsHandler};
use crate::knative::stat::{StatCollector, StatReporter};
use crate::metrics::Metrics;
use crate::observe::trace::KnativeTracing;
use crate::probe::Prober;
use crate::proxy::Proxy;
use crate::proxy::router::RouteTable;
use crate::revision::Revision;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Client connections each of the sidecar's listeners keeps open at once: its clients are the
/// ingress, activators, the kubelet and the autoscaler, each keeping a few.
const SIDECAR_CONNECTIONS: usize = 10_000;

/// How often the autoscaler's `Stat` is refreshed (queue-proxy's reporting period).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    addr: SocketAddr,
    /// The tracer, flushed after the drain.
    observer: Arc<crate::observe::Observer>,
    admin_addr: SocketAddr,
    stats_addr: SocketAddr,
    metrics_addr: SocketAddr,
    revision: Arc<Revision>,
    prober: Arc<Prober>,
    drainer: Arc<Drainer>,
    reporter: Arc<StatReporter>,
    report_task: JoinHandle<()>,
    unready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<usize>>,
    drain_timeout: Duration,
}

async fn listen<H: Handler>(
    at: SocketAddr,
    key: &str,
    handler: Arc<H>,
    stop: &watch::Sender<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<usize>)> {
    let l = server::bind(at, key).await?;
    let bound = l.local_addr()?;
    let task = tokio::spawn(server::serve(
        l,
        handler,
        ServerSettings::default(),
        stop.subscribe(),
        Duration::from_secs(1),
        None,
        Connections::new(SIDECAR_CONNECTIONS),
    ));
    Ok((bound, task))
}

impl Sidecar {
    /// Binds every listener and starts serving.
    pub async fn start(s: SidecarSettings) -> std::io::Result<Sidecar> {
        let cfg = s.gateway_config();
        let metrics = Arc::new(Metrics::new());
        let table = RouteTable::build(&cfg, &metrics, None).map_err(std::io::Error::other)?;
        let revision = table.revisions()[0].clone();
        let reporter = Arc::new(StatReporter::new(
            revision.clone(),
            s.pod.clone(),
            REPORT_EVERY,
        ));
        metrics.add_collector(Box::new(StatCollector::new(
            reporter.clone(),
            &s.namespace,
            &s.configuration,
        )));
        let knative = KnativeTracing::from_env()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let observer = Arc::new(crate::observe::start(None, &metrics, Some(&knative)).await?);
        let proxy = Arc::new(
            Proxy::new(table, metrics.clone())
                .with_dialect(Dialect::Knative)
                .with_observer(observer.clone()),
        );
        let prober = Arc::new(Prober::new(s.probes.clone()));
        let drainer = Arc::new(Drainer::new(s.drain_quiet));
        let unready = Arc::new(AtomicBool::new(false));
        let (stop, _) = watch::channel(false);
        let queue = Arc::new(QueueHandler::new(proxy, prober.clone(), drainer.clone()));
        let (addr, serving) = listen(s.serving, "QUEUE_SERVING_PORT", queue, &stop).await?;
        let (admin_addr, admin) = listen(
            s.admin,
            "ROUSE_ADMIN_PORT",
            Arc::new(AdminHandler::new(drainer.clone())),
            &stop,
        )
        .await?;
        let (stats_addr, stats) = listen(
            s.stats,
            "ROUSE_STATS_PORT",
            Arc::new(StatsHandler(reporter.clone())),
            &stop,
        )
        .await?;
        let (metrics_addr, user_metrics) = listen(
            s.metrics,
            "ROUSE_METRICS_PORT",
            Arc::new(Admin::new(metrics, unready.clone())),
            &stop,
        )
        .await?;
        let report_task = tokio::spawn(reporter.clone().run());
        info!(
            %addr, app = %s.user, admin = %admin_addr, stats = %stats_addr, metrics = %metrics_addr,
            container_concurrency = s.container_concurrency, revision = %s.revision,
            "sidecar listening"
        );
        Ok(Sidecar {
            addr,
            observer,
            admin_addr,
            stats_addr,
            metrics_addr,
            revision,
            prober,
            drainer,
            reporter,
            report_task,
            unready,
            stop,
            listeners: vec![serving, admin, stats, user_metrics],
            drain_timeout: s.drain_timeout,
        })
    }
}

impl Sidecar {
    /// The serving listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin (`/wait-for-drain`) listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The protobuf stats listener's address.
    pub fn stats_addr(&self) -> SocketAddr {
        self.stats_addr
    }

    /// The Prometheus listener's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The app's revision (breaker, stats).
    pub fn revision(&self) -> &Arc<Revision> {
        &self.revision
    }

    /// The readiness prober.
    pub fn prober(&self) -> &Arc<Prober> {
        &self.prober
    }

    /// The drain state.
    pub fn drainer(&self) -> &Arc<Drainer> {
        &self.drainer
    }

    /// The stats reporter.
    pub fn reporter(&self) -> &Arc<StatReporter> {
        &self.reporter
    }

    /// Drains as for SIGTERM (health checks fail at once, requests are still served until
    /// none has come for the quiet period and none is in flight, WebSockets included, bounded
    /// by the drain timeout), then closes every listener.
    pub async fn shutdown(self) -> DrainOutcome {
        self.unready.store(true, Ordering::SeqCst);
        let rev = self.revision.clone();
        let out = self
            .drainer
            .terminate(move || rev.stats().active(), self.drain_timeout)
            .await;
        let _ = self.stop.send(true);
        for l in self.listeners {
            let _ = l.await;
        }
        self.report_task.abort();
        self.observer.shutdown().await;
        out
    }
}
