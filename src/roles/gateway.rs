//! The standalone gateway: YAML config → route table → data listener + admin listener, with
//! drain on shutdown.

use crate::admin::Admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::router::RouteTable;
use crate::scaler::{self, ScaleHandle};
use crate::server::{self, ServerSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    proxy: Arc<Proxy>,
    draining: Arc<AtomicBool>,
    stop_data: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    data: JoinHandle<usize>,
    admin: Option<JoinHandle<usize>>,
    drain_timeout: Duration,
    scaling: Vec<ScaleHandle>,
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
        let metrics = Arc::new(Metrics::new());
        let table = RouteTable::build(&cfg, &metrics, None);
        let proxy = Arc::new(Proxy::new(table, metrics.clone()));
        let draining = Arc::new(AtomicBool::new(false));
        let settings = ServerSettings {
            max_header_bytes: usize::try_from(cfg.limits.max_header_bytes.0).unwrap_or(usize::MAX),
            header_read_timeout: cfg.limits.header_read_timeout.0,
        };
        let drain_timeout = cfg.drain_timeout.0;
        let listener = TcpListener::bind(cfg.listen.0).await?;
        let addr = listener.local_addr()?;
        let (stop_data, rx) = watch::channel(false);
        let data = tokio::spawn(server::serve(
            listener,
            proxy.clone(),
            settings,
            rx,
            drain_timeout,
        ));
        let (stop_admin, rx) = watch::channel(false);
        let (admin_addr, admin) = match cfg.admin {
            Some(a) => {
                let l = TcpListener::bind(a.0).await?;
                let bound = l.local_addr()?;
                let h = Arc::new(Admin::new(metrics, draining.clone()));
                let t = tokio::spawn(server::serve(l, h, settings, rx, Duration::from_secs(1)));
                (Some(bound), Some(t))
            }
            None => (None, None),
        };
        // Backends start only once rouse can take the requests that wake them.
        let scaling = start_scaling(&proxy.table(), &cfg);
        info!(%addr, admin = ?admin_addr, services = cfg.services.len(), "gateway listening");
        Ok(Gateway {
            addr,
            admin_addr,
            proxy,
            draining,
            stop_data,
            stop_admin,
            data,
            admin,
            drain_timeout,
            scaling,
        })
    }

    /// The data listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's bound address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy (route table, metrics).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Replaces the route table with one built from `cfg` (which must be valid).
    pub fn apply(&self, cfg: &Config) {
        let table = RouteTable::build(cfg, self.proxy.metrics(), Some(&self.proxy.table()));
        self.proxy.swap(table);
    }

    /// Drains: readiness turns 503, the data port stops accepting, connections finish their
    /// current exchanges, and proxied streams run to completion, all within the drain timeout.
    pub async fn shutdown(self) -> DrainReport {
        let began = Instant::now();
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.stop_data.send(true);
        let connections_left = self.data.await.unwrap_or(0);
        // Upgraded connections outlive their HTTP connection; their leases still count.
        let table = self.proxy.table();
        let in_flight = || table.revisions().iter().map(|r| r.in_flight()).sum::<u32>();
        while in_flight() > 0 && began.elapsed() < self.drain_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Backends stop only once nothing is being proxied to them.
        for h in self.scaling {
            h.stop().await;
        }
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

/// Starts autoscaling for every revision whose config has a `scale.process` section.
fn start_scaling(table: &RouteTable, cfg: &Config) -> Vec<ScaleHandle> {
    let mut handles = Vec::new();
    for s in &cfg.services {
        for r in &s.revisions {
            let live = table
                .revisions()
                .iter()
                .find(|x| *x.service == *s.name && *x.name == *r.name);
            if let Some(h) = live.and_then(|rev| scaler::start(rev, r)) {
                handles.push(h);
            }
        }
    }
    handles
}
