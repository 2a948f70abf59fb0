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
    // Backends already running or starting (pods rouse did not start, or found on restart)
    // are kept until they have been idle for `idle_grace` as seen from here, not dropped at
    // the first decision.
    let ready = u32::try_from(rev.endpoints().len()).unwrap_or(u32::MAX);
    let running = ready.max(scaler.existing().await);
    let mut current = running.clamp(settings.min, settings.max.max(settings.min));
    if running > 0 {
        kpa.touch(Instant::now());
    }
    scaler.scale(current);
    rev.set_desired(current);
    let mut next_tick = Instant::now() + settings.tick;
    loop {
        // Endpoints that exist while the wish is zero (pods another replica started, or ones
        // still going away) keep the loop ticking, so they are noticed and decided on.
        let idle_at_zero = current == 0 && rev.stats().active() == 0 && rev.is_cold();
        let mut demand = false;
        tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            () = rev.demand_notified() => {
                demand = true;
                kpa.touch(Instant::now());
            }
            // Asleep at zero, endpoints that appear (pods another replica started) wake the
            // loop, so that they are decided on rather than left running.
            () = rev.endpoints_changed(), if idle_at_zero => {
                // Endpoints this loop did not ask for (another replica's scale from zero):
                // in use somewhere, so they get idle_grace before they are scaled away.
                if !rev.is_cold() {
                    demand = true;
                    kpa.touch(Instant::now());
                }
            }
            () = tokio::time::sleep_until(next_tick), if !idle_at_zero => {
                let now = Instant::now();
                let w = rev.stats().take(now);
                let peers = scaler.peer_load();
                kpa.record(now, w.avg_concurrency + peers.avg, w.active + peers.active);
                next_tick = now + settings.tick;
            }
        }
        if idle_at_zero {
            // Woken from sleep at zero: what the windows remember is from before the idle
            // period (which was never recorded), so start them afresh; the demand just seen
            // is kept.
            rev.stats().take(Instant::now());
            kpa.reset();
            if demand {
                kpa.touch(Instant::now());
            }
            next_tick = Instant::now() + settings.tick;
        }
        let now = Instant::now();
        let active = rev.stats().active() + scaler.peer_load().active;
        let d = kpa.decide(now, rev.endpoints().len() as u32, active);
        if d.desired == current && demand && current > 0 && rev.is_cold() {
            // Requests wait, the wish is unchanged, and still no endpoint: say it again, so
            // a scaler whose backends went away behind its back (a workload set to zero by
            // hand) brings them back now.
            scaler.scale(current);
        }
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
