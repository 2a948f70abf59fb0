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
use crate::config;
use crate::revision::Revision;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
