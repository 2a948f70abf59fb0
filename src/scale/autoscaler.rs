//! The autoscaler loop of one revision: it feeds the revision's concurrency into the
//! [`Kpa`] decision every tick, and at once when a request finds no endpoint, and tells the
//! [`Scaler`] whenever the wanted count changes. An idle revision at zero does not tick at
//! all; it sleeps until a request arrives.

use super::kpa::{Kpa, KpaSettings};
use super::scaler::Scaler;
use crate::revision::Revision;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

/// Runs the decision loop of one revision until `stop` turns true.
pub async fn run(
    rev: Arc<Revision>,
    scaler: Arc<dyn Scaler>,
    settings: KpaSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut kpa = Kpa::new(settings);
    rev.set_ceiling(settings.max);
    let mut current = settings.min;
    scaler.scale(current);
    rev.set_desired(current);
    let mut next_tick = Instant::now() + settings.tick;
    loop {
        let idle_at_zero = current == 0 && rev.stats().active() == 0;
        tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            () = rev.demand_notified() => kpa.touch(Instant::now()),
            () = tokio::time::sleep_until(next_tick), if !idle_at_zero => {
                let now = Instant::now();
                let w = rev.stats().take(now);
                kpa.record(now, w.avg_concurrency, w.active);
                next_tick = now + settings.tick;
            }
        }
        if idle_at_zero {
            // Woken from sleep at zero: what the windows remember is from before the idle
            // period (which was never recorded), so start them afresh; the demand just seen
            // is kept.
            rev.stats().take(Instant::now());
            kpa.reset();
            kpa.touch(Instant::now());
            next_tick = Instant::now() + settings.tick;
        }
        let now = Instant::now();
        let d = kpa.decide(now, rev.endpoints().len() as u32, rev.stats().active());
        if d.desired != current {
            let dir = if d.desired > current { "up" } else { "down" };
            info!(
                service = %rev.service, revision = %rev.name, from = current, to = d.desired,
                stable = format_args!("{:.2}", d.stable), panic = format_args!("{:.2}", d.panic),
                panicking = d.panicking, "scaling {dir}"
            );
            rev.metrics.scale_event(d.desired > current);
            current = d.desired;
            rev.set_desired(current);
            scaler.scale(current);
        }
    }
}
