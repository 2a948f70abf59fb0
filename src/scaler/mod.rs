//! The seam between the data plane and whatever runs backends.
//!
//! A [`Scaler`] is told how many endpoints a revision should have and makes it so, reporting
//! back only through the revision itself: [`Revision::set_endpoint_addrs`] when endpoints
//! become ready or go away, [`Revision::fail_start`] when they cannot start. The data plane
//! never learns what a scaler is. A Kubernetes scaler (patch the Deployment's scale
//! subresource; feed EndpointSlice readiness into `set_endpoint_addrs`) or a push to Knative's
//! autoscaler fits the same two calls.

pub mod process;

use crate::autoscaler::{self, KpaSettings};
use crate::config::{self, Config};
use crate::revision::Revision;
use crate::router::RouteTable;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Runs a revision's backends.
pub trait Scaler: Send + Sync + std::fmt::Debug + 'static {
    /// Sets the wanted number of endpoints. Returns at once; the work happens elsewhere.
    fn scale(&self, desired: u32);

    /// Stops every backend this scaler started, gracefully, and waits for them.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The autoscaler and scaler of one revision, stopped together.
#[derive(Debug)]
pub struct ScaleHandle {
    /// The revision they serve.
    pub revision: Arc<Revision>,
    scaler: Arc<dyn Scaler>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ScaleHandle {
    /// Stops deciding, then stops the backends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.scaler.stop().await;
    }
}

/// The autoscaler knobs of a revision's `scale` section.
pub fn kpa_settings(r: &config::Revision, s: &config::Scale) -> KpaSettings {
    let cc = f64::from(r.container_concurrency);
    let target = s
        .target
        .unwrap_or(if cc > 0.0 { (0.7 * cc).max(0.01) } else { 70.0 });
    let stable = s.stable_window.0;
    let panic = stable.mul_f64(s.panic_window_percentage / 100.0);
    KpaSettings {
        target,
        stable_window: stable,
        panic_window: panic.max(s.tick.0),
        panic_threshold: s.panic_threshold_percentage / 100.0,
        max_scale_up_rate: s.max_scale_up_rate,
        max_scale_down_rate: s.max_scale_down_rate,
        tick: s.tick.0,
        idle_grace: s.idle_grace.0,
        min: s.min,
        max: s.max,
    }
}

/// Starts autoscaling for `rev` if its config asks for it (a `scale` section with a process);
/// static revisions get `None`.
pub fn start(rev: &Arc<Revision>, cfg: &config::Revision) -> Option<ScaleHandle> {
    let scale = cfg.scale.as_ref()?;
    let process = scale.process.as_ref()?;
    let scaler: Arc<dyn Scaler> = Arc::new(process::ProcessScaler::start(rev.clone(), process));
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(autoscaler::run(
        rev.clone(),
        scaler.clone(),
        kpa_settings(cfg, scale),
        rx,
    ));
    Some(ScaleHandle {
        revision: rev.clone(),
        scaler,
        stop,
        task,
    })
}

/// Exponential backoff between failed start attempts: 1 s doubling to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 1 s (or `max` if smaller).
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_secs(1).min(max),
            max,
        }
    }

    /// The pause after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1).min(self.max);
    }
}

/// A running scaler with what it was started from: the `scale` section and the
/// `container_concurrency` (the default target derives from it).
type Running = (config::Scale, u32, ScaleHandle);

/// The running scalers of a gateway, kept in step with its config across reloads.
#[derive(Debug, Default)]
pub struct ScalerSet {
    /// Keyed by (service, revision), with the `scale` section each was started from.
    running: Mutex<HashMap<(String, String), Running>>,
}

impl ScalerSet {
    /// Makes the running scalers match `cfg`'s autoscaled revisions in `table`: starts new
    /// ones, restarts those whose `scale` section changed, stops those removed.
    pub async fn sync(&self, cfg: &Config, table: &RouteTable) {
        let mut running = self.running.lock().await;
        let mut next = HashMap::new();
        for s in &cfg.services {
            for r in &s.revisions {
                let Some(scale) = r.scale.as_ref().filter(|sc| sc.process.is_some()) else {
                    continue;
                };
                let key = (s.name.clone(), r.name.clone());
                let Some(rev) = table
                    .revisions()
                    .iter()
                    .find(|x| *x.service == *s.name && *x.name == *r.name)
                else {
                    continue;
                };
                if let Some((old_scale, old_cc, h)) = running.remove(&key) {
                    if old_scale == *scale
                        && old_cc == r.container_concurrency
                        && Arc::ptr_eq(&h.revision, rev)
                    {
                        next.insert(key, (old_scale, old_cc, h));
                        continue;
                    }
                    // A changed scaler hands over a revision with no endpoints, so the old one
                    // stops completely before the new one starts.
                    info!(service = %s.name, revision = %r.name, "scale settings or container_concurrency changed; restarting its scaler");
                    h.stop().await;
                }
                if let Some(h) = start(rev, r) {
                    next.insert(key, (scale.clone(), r.container_concurrency, h));
                }
            }
        }
        // Revisions removed or no longer autoscaled: their backends stop once their in-flight
        // requests finish (bounded by stop_grace).
        for ((service, revision), (_, _, h)) in running.drain() {
            info!(%service, %revision, "revision removed or no longer autoscaled; stopping its backends");
            tokio::spawn(h.stop());
        }
        *running = next;
    }

    /// Stops every scaler and its backends (at shutdown).
    pub async fn stop_all(&self) {
        // All at once: each may wait up to its stop_grace, and those waits should overlap.
        let mut stopping = tokio::task::JoinSet::new();
        for (_, (_, _, h)) in self.running.lock().await.drain() {
            stopping.spawn(h.stop());
        }
        while stopping.join_next().await.is_some() {}
    }
}
