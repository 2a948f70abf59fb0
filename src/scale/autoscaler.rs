//! The autoscaler loop of one revision: it feeds the revision's concurrency into the
//! [`Kpa`] decision every tick, and at once when a request finds no endpoint, and tells the
//! [`Scaler`] whenever the wanted count changes. An idle revision at zero does not tick at
//! all; it sleeps until a request arrives, unless keep-warm windows ([`KeepWarm`]) may raise
//! its floor, which is read at every tick.

use super::keep_warm::KeepWarm;
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
    keep_warm: Option<KeepWarm>,
    mut stop: watch::Receiver<bool>,
) {
    let mut kpa = Kpa::new(settings);
    rev.set_ceiling(settings.max);
    // The floor now: `min`, raised while a keep-warm window is open.
    let floor = || {
        keep_warm
            .as_ref()
            .map_or(0, KeepWarm::floor)
            .max(settings.min)
            .min(settings.max)
    };
    // Backends already running or starting (pods rouse did not start, or found on restart)
    // are kept until they have been idle for `idle_grace` as seen from here, not dropped at
    // the first decision.
    let ready = u32::try_from(rev.endpoints().len()).unwrap_or(u32::MAX);
    let running = ready.max(scaler.existing().await);
    let mut current = running.clamp(floor(), settings.max.max(settings.min));
    rev.set_floor(floor());
    if running > 0 {
        kpa.touch(Instant::now());
    }
    scaler.scale(current);
    rev.set_desired(current);
    let mut next_tick = Instant::now() + settings.tick;
    loop {
        // Endpoints that exist while the wish is zero (pods another replica started, or ones
        // still going away) keep the loop ticking, so they are noticed and decided on.
        let idle_at_zero =
            current == 0 && keep_warm.is_none() && rev.stats().active() == 0 && rev.is_cold();
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
        let mut d = kpa.decide(now, rev.endpoints().len() as u32, active);
        let low = floor();
        rev.set_floor(low);
        d.desired = d.desired.max(low);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A scaler that only remembers what it was asked for.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<u32>>);

    impl Scaler for Recording {
        fn scale(&self, desired: u32) {
            self.0.lock().unwrap().push(desired);
        }
        fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    impl Recording {
        fn last(&self) -> Option<u32> {
            self.0.lock().unwrap().last().copied()
        }
    }

    fn settings() -> KpaSettings {
        KpaSettings {
            target: 1.0,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            tick: Duration::from_secs(1),
            idle_grace: Duration::from_secs(30),
            min: 0,
            max: 3,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_warm_window_starts_and_stops_a_revision_on_the_clock() {
        // A window opening at the minute 10 minutes from now and closing 10 minutes later, UTC.
        let now = jiff::Timestamp::try_from(clock::wall_now())
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC);
        let minute = |plus: i32| {
            let m = (i32::from(now.hour()) * 60 + i32::from(now.minute()) + plus).rem_euclid(1440);
            format!("{:02}:{:02}", m / 60, m % 60)
        };
        let k: crate::config::KeepWarm = serde_norway::from_str(&format!(
            "{{ windows: [{{ from: '{}', to: '{}', min: 2 }}] }}",
            minute(10),
            minute(20)
        ))
        .unwrap();
        let into_minute = Duration::from_secs(u64::try_from(now.second()).unwrap());
        let rev = Revision::for_test(1, 0);
        let scaler = Arc::new(Recording::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(
            rev.clone(),
            scaler.clone(),
            settings(),
            KeepWarm::new(&k),
            rx,
        ));
        let opens = Duration::from_secs(600) - into_minute;
        tokio::time::sleep(opens - Duration::from_secs(2)).await;
        assert_eq!(scaler.last(), Some(0), "closed: nothing wanted");
        assert_eq!(rev.floor(), 0);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(scaler.last(), Some(2), "open: the window's min");
        assert_eq!(rev.floor(), 2);
        assert_eq!(rev.desired(), 2);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(scaler.last(), Some(0), "closed again: back to zero");
        assert_eq!(rev.floor(), 0);
        assert_eq!(
            *scaler.0.lock().unwrap(),
            [0, 2, 0],
            "one start and one stop, nothing between"
        );
        let _ = stop.send(true);
        task.await.unwrap();
    }

    /// A backend that takes `boot` to start: the revision gets its endpoint then.
    #[derive(Debug)]
    struct SlowBoot {
        rev: Arc<Revision>,
        boot: Duration,
        started: std::sync::atomic::AtomicBool,
    }

    impl Scaler for SlowBoot {
        fn scale(&self, desired: u32) {
            if desired > 0 && !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let (rev, boot) = (self.rev.clone(), self.boot);
                tokio::spawn(async move {
                    tokio::time::sleep(boot).await;
                    rev.replace_endpoints(&["127.0.0.1:9".parse().unwrap()]);
                });
            }
        }
        fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    /// A revision whose backend boots in 4 minutes, held with `max_wait`; the request's
    /// outcome and what `starting_for` said at 2 minutes.
    async fn long_start(
        max_wait: Duration,
    ) -> (
        Result<crate::revision::Acquired, crate::error::ProxyError>,
        Option<Duration>,
    ) {
        let rev = Revision::for_test_with(
            1,
            0,
            crate::revision::queue::QueueLimits {
                max_requests: 10,
                max_bytes: u64::MAX,
                max_wait: Some(max_wait),
                target_wait: None,
            },
        );
        let scaler = Arc::new(SlowBoot {
            rev: rev.clone(),
            boot: Duration::from_secs(240),
            started: Default::default(),
        });
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(rev.clone(), scaler, settings(), None, rx));
        let held = {
            let rev = rev.clone();
            // The request's own limit, as `timeouts.request: 15m` gives it.
            let deadline = Instant::now() + Duration::from_secs(900);
            tokio::spawn(async move {
                // Counted as active while held, as the proxy counts every request.
                let _active = rev.begin(false);
                rev.acquire(0, Some(deadline)).await
            })
        };
        tokio::time::sleep(Duration::from_secs(120)).await;
        let midway = rev.starting_for();
        let got = held.await.unwrap();
        let _ = stop.send(true);
        task.await.unwrap();
        (got, midway)
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_of_minutes_is_waited_for_when_the_limits_allow_it() {
        let began = Instant::now();
        let (got, midway) = long_start(Duration::from_secs(600)).await;
        let acquired = got.expect("held through the 4-minute boot");
        assert!(acquired.cold);
        let waited = began.elapsed();
        assert!(
            (Duration::from_secs(240)..Duration::from_secs(245)).contains(&waited),
            "{waited:?}"
        );
        let m = midway.expect("starting at 2 minutes");
        assert!(
            (Duration::from_secs(119)..=Duration::from_secs(121)).contains(&m),
            "{m:?}"
        );
        // With the default max_wait (10 s) the same start fails the request.
        let (got, _) = long_start(Duration::from_secs(10)).await;
        let e = got.expect_err("the default wait is too short");
        assert_eq!(e.code(), crate::error::Code::QueueTimeout);
    }
}
