//! The standalone gateway: YAML config → route table → data, TLS and admin listeners → a scaler
//! for every autoscaled revision, with live reload and drain on shutdown.

use crate::admin::Admin;
use crate::admin::status::Status;
use crate::config::reload::{self, Applied, StartOnly};
use crate::config::{Config, ConfigError};
use crate::discovery::Outside;
use crate::http::server::{self, Connections, ServerSettings, TlsListener};
use crate::http::tls::{CertStore, TlsError};
use crate::knative::activator::ActivatorFront;
use crate::metrics::{ConnectionGauges, Metrics};
use crate::proxy::Proxy;
use crate::proxy::router::RouteTable;
use crate::scale::set::ScalerSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// What a reload can change, shared by the gateway and its reloader.
#[derive(Debug)]
pub struct Live {
    proxy: Arc<Proxy>,
    /// Endpoint sources outside the file (Kubernetes), synced before the scalers.
    outside: Outside,
    scalers: ScalerSet,
    /// Settings fixed at start; a reload that changes them is told so.
    fixed: StartOnly,
    /// Serializes reloads (watcher and SIGHUP); shutdown holds it to stop them.
    applied: Applied,
    /// The config file's last applied config and the services that Ingresses add to it.
    merged: tokio::sync::Mutex<Merged>,
    /// The config file's config as last applied, without its services, and the hosts those
    /// services claim: what Ingresses are checked against, readable without waiting for
    /// `merged`.
    file: arc_swap::ArcSwap<(Config, Vec<String>)>,
}

/// The access log's destination and format, if the config has one.
fn access(cfg: &Config) -> Option<(&str, &str)> {
    cfg.access_log
        .as_ref()
        .map(|a| (a.to.as_str(), a.format.as_str()))
}

/// The file's config without its services, and their hosts.
fn file_view(cfg: &Config) -> (Config, Vec<String>) {
    let hosts = file_hosts(cfg);
    let mut base = cfg.clone();
    base.services = Vec::new();
    (base, hosts)
}

/// What the gateway serves: the file's config, and the services generated from the cluster
/// by each source (Ingresses, Revisions).
#[derive(Debug)]
struct Merged {
    file: Config,
    generated: std::collections::BTreeMap<&'static str, Vec<crate::config::Service>>,
}

impl Merged {
    /// The file's config plus the generated services whose hosts the file leaves free.
    fn config(&self) -> Config {
        let mut cfg = self.file.clone();
        let taken = file_hosts(&self.file);
        cfg.services.extend(
            self.generated
                .values()
                .flatten()
                .filter(|s| !s.hosts.iter().any(|h| taken.contains(h)))
                .cloned(),
        );
        cfg
    }
}

fn file_hosts(cfg: &Config) -> Vec<String> {
    cfg.services
        .iter()
        .flat_map(|s| s.hosts.iter().map(|h| h.trim().to_ascii_lowercase()))
        .collect()
}

/// Re-reads the config file and applies it to a running gateway.
pub type Reloader = reload::Reloader<Live>;

/// Client connections the admin listener keeps open at once: scrapers and health checks.
const ADMIN_CONNECTIONS: usize = 256;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    /// The cluster's controllers: Knative Ingresses (`kubernetes.ingress`), Revisions
    /// (`kubernetes.activator`).
    controllers: Vec<Tasks>,
    /// The stats link to Knative's autoscaler (`kubernetes.autoscaler`): stopped last, as
    /// requests held during the drain still need it to wake their revisions.
    link: Option<Tasks>,
    internal_addr: Option<SocketAddr>,
    internal: Option<JoinHandle<usize>>,
    certs: Option<Arc<CertStore>>,
    admin_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    secure: Option<JoinHandle<usize>>,
    cert_watch: Option<JoinHandle<()>>,
    live: Arc<Live>,
    draining: Arc<AtomicBool>,
    stop_data: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    data: JoinHandle<usize>,
    admin: Option<JoinHandle<usize>>,
    /// The status page's history; stops with the gateway.
    _sampler: Option<AbortOnDropHandle<()>>,
    drain_timeout: Duration,
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Client connections still open when the drain timeout ended the wait.
    pub connections_left: usize,
    /// Proxied requests (streams, upgrades) still running at exit.
    pub requests_left: u32,
}

impl Gateway {
    /// Binds the listeners and starts serving `cfg`.
    pub async fn start(cfg: Config) -> std::io::Result<Gateway> {
        // Every TLS file is loaded here, once, before anything binds: the route table loads
        // upstream CAs, the store the listener's certificates.
        let metrics = Arc::new(Metrics::new());
        let table = RouteTable::build(&cfg, &metrics, None).map_err(std::io::Error::other)?;
        let store = match &cfg.tls {
            Some(t) => Some(Arc::new(
                CertStore::load(&t.certificates).map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let draining = Arc::new(AtomicBool::new(false));
        let observer = Arc::new(crate::observe::start(access(&cfg), &metrics, None).await?);
        let mut proxy = Proxy::new(table, metrics.clone()).with_observer(observer);
        if let Some(a) = &cfg.kubernetes.activator {
            proxy = proxy.with_front(Arc::new(ActivatorFront::new(
                &a.cluster_domain,
                draining.clone(),
            )));
        }
        let proxy = Arc::new(proxy);
        #[cfg(feature = "kubernetes")]
        let kube = Arc::new(crate::kubernetes::Kube::new(&cfg.kubernetes, &metrics));
        let outside = Outside::new(vec![
            #[cfg(feature = "kubernetes")]
            kube.clone(),
        ]);
        let settings = ServerSettings {
            max_header_bytes: usize::try_from(cfg.limits.max_header_bytes.0).unwrap_or(usize::MAX),
            header_read_timeout: cfg.limits.header_read_timeout.0,
            idle_timeout: cfg.limits.idle_timeout.0,
            internal: false,
        };
        let drain_timeout = cfg.drain_timeout.0;
        let listener = server::bind(cfg.listen.0, "listen").await?;
        let addr = listener.local_addr()?;
        let (stop_data, rx) = watch::channel(false);
        let limit = cfg.limits.max_connections;
        let mut gauges = vec![("http", Connections::new(limit))];
        let data = tokio::spawn(server::serve(
            listener,
            proxy.clone(),
            settings,
            rx.clone(),
            drain_timeout,
            None,
            gauges[0].1.clone(),
        ));
        let (internal_addr, internal) = match cfg.listen_internal {
            Some(a) => {
                let l = server::bind(a.0, "listen_internal").await?;
                let bound = l.local_addr()?;
                let conns = Connections::new(limit);
                gauges.push(("http-internal", conns.clone()));
                let settings = ServerSettings {
                    internal: true,
                    ..settings
                };
                let task = tokio::spawn(server::serve(
                    l,
                    proxy.clone(),
                    settings,
                    rx.clone(),
                    drain_timeout,
                    None,
                    conns,
                ));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        let (tls_addr, secure, cert_watch) = match (&cfg.tls, store.clone()) {
            (Some(t), Some(store)) => {
                let l = server::bind(t.listen.0, "tls.listen").await?;
                let bound = l.local_addr()?;
                let listener = TlsListener {
                    acceptor: tokio_rustls::TlsAcceptor::from(store.server_config()),
                    handshake_timeout: t.handshake_timeout.0,
                };
                let conns = Connections::new(limit);
                gauges.push(("https", conns.clone()));
                let task = tokio::spawn(server::serve(
                    l,
                    proxy.clone(),
                    settings,
                    rx,
                    drain_timeout,
                    Some(listener),
                    conns,
                ));
                proxy.set_https(t.redirect_port.unwrap_or(bound.port()), t.redirect_http);
                let every = if cfg.watch_interval.0.is_zero() {
                    Duration::from_secs(1)
                } else {
                    cfg.watch_interval.0
                };
                let watch = tokio::spawn(store.watch(every));
                (Some(bound), Some(task), Some(watch))
            }
            _ => (None, None, None),
        };
        let (stop_admin, rx) = watch::channel(false);
        let mut sampler = None;
        let (admin_addr, admin) = match cfg.admin {
            Some(a) => {
                let l = server::bind(a.0, "admin").await?;
                let bound = l.local_addr()?;
                let conns = Connections::new(ADMIN_CONNECTIONS);
                gauges.push(("admin", conns.clone()));
                let role = match cfg.kubernetes.activator {
                    Some(_) => "activator",
                    None => "gateway",
                };
                let status = Arc::new(Status::new(
                    proxy.clone(),
                    role,
                    draining.clone(),
                    gauges.clone(),
                ));
                sampler = Some(AbortOnDropHandle::new(tokio::spawn(
                    status.clone().run_sampler(),
                )));
                let h = Arc::new(
                    Admin::new(metrics, draining.clone())
                        .with_sources(outside.clone())
                        .with_status(status),
                );
                let t = tokio::spawn(server::serve(
                    l,
                    h,
                    settings,
                    rx,
                    Duration::from_secs(1),
                    None,
                    conns,
                ));
                (Some(bound), Some(t))
            }
            None => (None, None),
        };
        proxy
            .metrics()
            .add_collector(Box::new(ConnectionGauges(gauges)));
        let mut makers = ScalerSet::default().makers().to_vec();
        makers.extend(outside.makers());
        let live = Arc::new(Live {
            proxy,
            outside,
            scalers: ScalerSet::new(makers),
            fixed: StartOnly::of(&cfg),
            applied: Applied::default(),
            merged: tokio::sync::Mutex::new(Merged {
                file: cfg.clone(),
                generated: Default::default(),
            }),
            file: arc_swap::ArcSwap::from_pointee(file_view(&cfg)),
        });
        // Backends start only once rouse can take the requests that wake them, and from the
        // endpoints the outside sources already know.
        let table = live.proxy.table();
        live.outside.sync(&cfg, table.revisions()).await;
        live.scalers.sync(&cfg, table.revisions()).await;
        #[cfg(feature = "kubernetes")]
        let controllers =
            ingress_controller(&cfg, &kube, &live, store.clone(), addr, internal_addr)
                .into_iter()
                .chain(revision_watcher(&cfg, &kube, &live))
                .collect();
        #[cfg(feature = "kubernetes")]
        let link = autoscaler_link(&cfg, &live);
        #[cfg(not(feature = "kubernetes"))]
        let (controllers, link) = (Vec::new(), None);
        info!(%addr, internal = ?internal_addr, tls = ?tls_addr, admin = ?admin_addr, services = cfg.services.len(), "gateway listening");
        Ok(Gateway {
            addr,
            controllers,
            link,
            internal_addr,
            internal,
            certs: store,
            admin_addr,
            tls_addr,
            secure,
            cert_watch,
            live,
            draining,
            stop_data,
            stop_admin,
            data,
            admin,
            _sampler: sampler,
            drain_timeout,
        })
    }

    /// The data listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster-local listener's bound address, if any.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    /// The TLS listener's certificates, if it has one.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// The TLS listener's bound address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The admin listener's bound address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy (route table, metrics).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.live.proxy
    }

    /// Applies a validated config: routes, splits and revision settings change at once;
    /// autoscaled revisions that were added, removed or whose `scale` changed get their
    /// scalers started or stopped.
    pub async fn apply(&self, cfg: &Config) -> Result<(), TlsError> {
        self.live.swap(cfg).await
    }

    /// Starts failing readiness (`/readyz`, and the kubelet's checks answered by a front)
    /// while still serving everything: the time a Kubernetes Service takes to stop sending
    /// new connections here, before [`Gateway::shutdown`].
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A reloader for `path`, for SIGHUP and the file watcher.
    pub fn reloader(&self, path: &Path) -> Reloader {
        self.reloader_with(path, reload::Overrides::default())
    }

    /// A reloader for `path` whose configs get the command line's `overrides`.
    pub fn reloader_with(&self, path: &Path, overrides: reload::Overrides) -> Reloader {
        Reloader::new(
            self.live.clone(),
            path,
            self.live.applied.clone(),
            overrides,
        )
    }

    /// Drains: readiness turns 503, the data port stops accepting, connections finish their
    /// current exchanges, and proxied streams run to completion, all within the drain timeout.
    pub async fn shutdown(self) -> DrainReport {
        let began = Instant::now();
        // A reload in progress finishes first (it may be starting or stopping scalers), and
        // none starts after this point.
        let _no_reloads = self.live.applied.lock().await;
        for (stop, mut task) in self.controllers {
            // They stop between passes; one in progress gets a moment, then is cut short.
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.stop_data.send(true);
        let mut connections_left = self.data.await.unwrap_or(0);
        if let Some(t) = self.internal {
            connections_left += t.await.unwrap_or(0);
        }
        if let Some(t) = self.secure {
            connections_left += t.await.unwrap_or(0);
        }
        if let Some(w) = self.cert_watch {
            w.abort();
        }
        // Upgraded connections outlive their HTTP connection; their leases still count.
        let table = self.live.proxy.table();
        let in_flight = || table.revisions().iter().map(|r| r.in_flight()).sum::<u32>();
        while in_flight() > 0 && began.elapsed() < self.drain_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((stop, task)) = self.link {
            let _ = stop.send(true);
            let _ = task.await;
        }
        // Backends stop only once nothing is being proxied to them.
        self.live.scalers.stop_all().await;
        self.live.outside.stop().await;
        self.live.proxy.observer().shutdown().await;
        let _ = self.stop_admin.send(true);
        if let Some(a) = self.admin {
            let _ = a.await;
        }
        DrainReport {
            connections_left,
            requests_left: in_flight(),
        }
    }
}

impl Live {
    /// Applies a new config file's config, keeping the services Ingresses add.
    async fn swap(&self, cfg: &Config) -> Result<(), TlsError> {
        let mut merged = self.merged.lock().await;
        let previous = std::mem::replace(&mut merged.file, cfg.clone());
        let result = self.build(&merged.config()).await;
        match &result {
            Ok(()) => self.file.store(Arc::new(file_view(cfg))),
            Err(_) => merged.file = previous,
        }
        result
    }

    /// Builds the new table from the old one (revisions updated in place), swaps it in, then
    /// brings the scalers in step.
    async fn build(&self, cfg: &Config) -> Result<(), TlsError> {
        let metrics = self.proxy.metrics().clone();
        let table = RouteTable::build(cfg, &metrics, Some(&self.proxy.table()))?;
        // Only a config that is applied is told what it cannot change.
        let changed = self.fixed.changed(&StartOnly::of(cfg));
        if !changed.is_empty() {
            warn!(
                "{} change only on restart; keeping the current ones",
                changed.join(", ")
            );
        }
        self.proxy.swap(table);
        let table = self.proxy.table();
        self.outside.sync(cfg, table.revisions()).await;
        self.scalers.sync(cfg, table.revisions()).await;
        Ok(())
    }
}

impl reload::Apply for Live {
    async fn apply(&self, cfg: &Config) -> Result<(), ConfigError> {
        Ok(self.swap(cfg).await?)
    }

    fn counted(&self, ok: bool) {
        self.proxy.metrics().config_reload(ok);
    }
}

/// One source's share of the generated services.
#[cfg(feature = "kubernetes")]
#[derive(Debug)]
struct Slot {
    live: Arc<Live>,
    source: &'static str,
}

#[cfg(feature = "kubernetes")]
impl crate::kubernetes::ingress::Gateway for Slot {
    async fn serve(&self, services: Vec<crate::config::Service>) -> Result<(), String> {
        let mut merged = self.live.merged.lock().await;
        let previous = merged.generated.insert(self.source, services);
        let result = self.live.build(&merged.config()).await;
        if result.is_err() {
            // What is served stays what was served; a later file reload must not fail on it.
            match previous {
                Some(p) => merged.generated.insert(self.source, p),
                None => merged.generated.remove(self.source),
            };
        }
        result.map_err(|e| e.to_string())
    }

    fn check(&self, services: &[crate::config::Service]) -> Vec<String> {
        let mut cfg = self.live.file.load().0.clone();
        cfg.services = services.to_vec();
        cfg.validate()
            .into_iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect()
    }

    fn file_hosts(&self) -> Vec<String> {
        self.live.file.load().1.clone()
    }
}

/// Starts serving Knative Ingresses, when the config asks for it.
#[cfg(feature = "kubernetes")]
fn ingress_controller(
    cfg: &Config,
    kube: &crate::kubernetes::Kube,
    live: &Arc<Live>,
    certs: Option<Arc<CertStore>>,
    public: SocketAddr,
    internal: Option<SocketAddr>,
) -> Option<Tasks> {
    use crate::kubernetes::ingress;
    let (class, internal) = (cfg.kubernetes.ingress.clone()?, internal?);
    let settings = ingress::Settings {
        class,
        namespace: kube.own_namespace().to_owned(),
        public_port: public.port(),
        internal_port: internal.port(),
        internal_addr: ingress::local_addr(internal),
    };
    let (stop, rx) = watch::channel(false);
    // Not ready until the controller's first pass: a replica that joins the Service before
    // it serves the cluster's Ingresses would answer 404 for them.
    kube.health()
        .ingress_pending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let stats = Arc::new(ingress::Stats::default());
    live.proxy
        .metrics()
        .add_collector(Box::new(ingress::StatsMetrics(stats.clone())));
    let task = tokio::spawn(ingress::run(
        settings,
        Arc::new(Slot {
            live: live.clone(),
            source: "ingress",
        }),
        certs,
        kube.health(),
        stats,
        rx,
    ));
    Some((stop, task))
}

/// Starts serving Knative's Revisions as their activator, when the config asks for it.
#[cfg(feature = "kubernetes")]
fn revision_watcher(
    cfg: &Config,
    kube: &crate::kubernetes::Kube,
    live: &Arc<Live>,
) -> Option<Tasks> {
    let settings = cfg.kubernetes.activator.clone()?;
    let (stop, rx) = watch::channel(false);
    // Not ready until the Revisions are listed: requests for them would get 404.
    kube.health()
        .revisions_pending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let slot = Arc::new(Slot {
        live: live.clone(),
        source: "activator",
    });
    let task = tokio::spawn(crate::kubernetes::activator::run(
        settings,
        slot,
        kube.health(),
        rx,
    ));
    Some((stop, task))
}

/// Starts reporting demand to Knative's autoscaler, when the config asks for it.
#[cfg(feature = "kubernetes")]
fn autoscaler_link(cfg: &Config, live: &Arc<Live>) -> Option<Tasks> {
    use crate::knative::autoscaler;
    let link = cfg.kubernetes.autoscaler.clone()?;
    let stats = Arc::new(autoscaler::LinkStats::default());
    live.proxy
        .metrics()
        .add_collector(Box::new(autoscaler::LinkMetrics(stats.clone())));
    let proxy = live.proxy.clone();
    let swaps = proxy.swaps();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(autoscaler::run(
        link,
        move || proxy.table().revisions().to_vec(),
        swaps,
        stats,
        rx,
    ));
    Some((stop, task))
}

/// A background task with the switch that stops it.
type Tasks = (watch::Sender<bool>, JoinHandle<()>);
