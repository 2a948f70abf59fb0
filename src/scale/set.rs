//! The running scalers of a gateway: each autoscaled revision gets its [`Scaler`] and its
//! [`autoscaler`](super::autoscaler) loop, started from the revision's `scale` section and kept
//! in step with the config across reloads.

use super::autoscaler;
use super::keep_warm::KeepWarm;
use super::kpa::KpaSettings;
use super::process::ProcessScaler;
use super::scaler::{MakeScaler, Scaler};
use crate::config::{self, Config};
use crate::revision::Revision;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

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

/// Makes process scalers for revisions with `scale.process`.
#[derive(Debug, Default)]
pub struct Processes;

impl MakeScaler for Processes {
    fn make(&self, rev: &Arc<Revision>, cfg: &config::Revision) -> Option<Arc<dyn Scaler>> {
        let process = cfg.scale.as_ref()?.process.as_ref()?;
        Some(Arc::new(ProcessScaler::start(rev.clone(), process)))
    }
}

/// Starts autoscaling for `rev` if its config asks for it and one of `makers` runs that kind
/// of backend; static revisions get `None`.
pub fn start(
    rev: &Arc<Revision>,
    cfg: &config::Revision,
    makers: &[Arc<dyn MakeScaler>],
) -> Option<ScaleHandle> {
    let scale = cfg.scale.as_ref()?;
    let scaler = makers.iter().find_map(|m| m.make(rev, cfg))?;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(autoscaler::run(
        rev.clone(),
        scaler.clone(),
        kpa_settings(cfg, scale),
        scale.keep_warm.as_ref().and_then(KeepWarm::new),
        rx,
    ));
    Some(ScaleHandle {
        revision: rev.clone(),
        scaler,
        stop,
        task,
    })
}

/// A running scaler with what it was started from: the `scale` section and the
/// `container_concurrency` (the default target derives from it).
type Running = (config::Scale, u32, ScaleHandle);

/// The running scalers of a gateway, kept in step with its config across reloads.
#[derive(Debug)]
pub struct ScalerSet {
    /// Keyed by (service, revision), with the `scale` section each was started from.
    running: Mutex<HashMap<(String, String), Running>>,
    /// The kinds of backend this gateway can run.
    makers: Vec<Arc<dyn MakeScaler>>,
}

impl Default for ScalerSet {
    /// Local processes only.
    fn default() -> Self {
        ScalerSet::new(vec![Arc::new(Processes)])
    }
}

impl ScalerSet {
    /// The kinds of backend this set runs.
    pub fn makers(&self) -> &[Arc<dyn MakeScaler>] {
        &self.makers
    }

    /// A set whose revisions' backends are run by `makers`.
    pub fn new(makers: Vec<Arc<dyn MakeScaler>>) -> ScalerSet {
        ScalerSet {
            running: Mutex::default(),
            makers,
        }
    }

    /// Makes the running scalers match `cfg`'s autoscaled revisions among `revisions` (the
    /// live ones): starts new ones, restarts those whose `scale` section changed, stops those
    /// removed.
    pub async fn sync(&self, cfg: &Config, revisions: &[Arc<Revision>]) {
        let mut running = self.running.lock().await;
        let mut next = HashMap::new();
        for s in &cfg.services {
            for r in &s.revisions {
                let Some(scale) = r.scale.as_ref().filter(|sc| sc.runs_backends()) else {
                    continue;
                };
                let key = (s.name.clone(), r.name.clone());
                let Some(rev) = revisions
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
                if let Some(h) = start(rev, r, &self.makers) {
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
