//! The scale decision, after Knative's KPA (`shared/spec` §3): time-weighted
//! concurrency averaged over a stable window (60 s) and a panic window (6 s);
//! desired = ceil(average / target), rate-limited up and down; panic mode when the short
//! window demands twice the ready capacity, during which the count never falls.
//!
//! Differences from Knative, on purpose:
//! - Scale to zero is driven by `idle_grace` alone: a revision with nothing active or held for
//!   that long goes to zero at once, whatever older traffic the windows still remember, and a
//!   revision with recent traffic is never scaled below one.
//! - Decisions run every tick (1 s), and immediately when a request finds no endpoint, so a
//!   cold start never waits for the next tick.
//! - An idle revision at zero does not tick at all; it sleeps until a request arrives.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Knobs of the decision.
#[derive(Debug, Clone, Copy)]
pub struct KpaSettings {
    /// Concurrency per endpoint to aim for.
    pub target: f64,
    /// Long averaging window.
    pub stable_window: Duration,
    /// Short averaging window.
    pub panic_window: Duration,
    /// Panic when the short window wants this multiple of the ready count (2.0 = 200 %).
    pub panic_threshold: f64,
    /// At most this multiple of the ready count per decision.
    pub max_scale_up_rate: f64,
    /// At most divide the ready count by this per decision.
    pub max_scale_down_rate: f64,
    /// Decision and bucket interval.
    pub tick: Duration,
    /// Nothing active for this long scales to zero.
    pub idle_grace: Duration,
    /// Floor.
    pub min: u32,
    /// Ceiling (at least 1).
    pub max: u32,
}

/// A window of per-tick averages.
#[derive(Debug)]
struct Buckets {
    cap: usize,
    values: VecDeque<f64>,
}

impl Buckets {
    fn new(window: Duration, tick: Duration) -> Buckets {
        let cap = (window.as_secs_f64() / tick.as_secs_f64()).ceil().max(1.0) as usize;
        Buckets {
            cap,
            values: VecDeque::with_capacity(cap),
        }
    }
    fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }
    /// Average over the ticks recorded so far, up to the window (a partial window right after
    /// start is averaged over what it has, as Knative does).
    fn average(&self) -> f64 {
        if self.values.is_empty() {
            0.0
        } else {
            self.values.iter().sum::<f64>() / self.values.len() as f64
        }
    }
}

/// The decision state of one revision.
#[derive(Debug)]
pub struct Kpa {
    s: KpaSettings,
    stable: Buckets,
    panic: Buckets,
    panic_since: Option<Instant>,
    max_panic: u32,
    last_active: Option<Instant>,
}

/// What one decision saw and chose (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Endpoints wanted.
    pub desired: u32,
    /// Stable-window average concurrency.
    pub stable: f64,
    /// Panic-window average concurrency.
    pub panic: f64,
    /// In panic mode.
    pub panicking: bool,
}

impl Kpa {
    /// A fresh decider.
    pub fn new(s: KpaSettings) -> Kpa {
        Kpa {
            stable: Buckets::new(s.stable_window, s.tick),
            panic: Buckets::new(s.panic_window, s.tick),
            s,
            panic_since: None,
            max_panic: 0,
            last_active: None,
        }
    }

    /// Records one tick: its average concurrency and whether anything was active in it.
    pub fn record(&mut self, now: Instant, avg: f64, active_at_end: u32) {
        self.stable.push(avg);
        self.panic.push(avg);
        if avg > 0.0 || active_at_end > 0 {
            self.last_active = Some(now);
        }
    }

    /// Forgets the windows and panic state (after a sleep at zero).
    pub fn reset(&mut self) {
        self.stable.values.clear();
        self.panic.values.clear();
        self.panic_since = None;
        self.max_panic = 0;
    }

    /// Notes demand seen between ticks (a request waiting for a cold revision).
    pub fn touch(&mut self, now: Instant) {
        self.last_active = Some(now);
    }

    /// Decides the endpoint count given `ready` endpoints and `active` requests right now.
    pub fn decide(&mut self, now: Instant, ready: u32, active: u32) -> Decision {
        let s = self.s;
        if active > 0 {
            self.last_active = Some(now);
        }
        let ready_f = f64::from(ready.max(1));
        let max_up = (s.max_scale_up_rate * ready_f).ceil();
        let max_down = (ready_f / s.max_scale_down_rate).floor();
        let (sv, pv) = (self.stable.average(), self.panic.average());
        let ds = (sv / s.target).ceil();
        let dp = (pv / s.target).ceil();
        let desired_s = ds.clamp(max_down, max_up);
        let desired_p = dp.clamp(max_down, max_up);
        if dp / ready_f >= s.panic_threshold {
            self.panic_since = Some(now);
        } else if self
            .panic_since
            .is_some_and(|t| now.saturating_duration_since(t) >= s.stable_window)
        {
            self.panic_since = None;
            self.max_panic = 0;
        }
        let panicking = self.panic_since.is_some();
        let mut desired = if panicking {
            let d = desired_s.max(desired_p).max(f64::from(self.max_panic));
            self.max_panic = d as u32;
            d as u32
        } else {
            desired_s as u32
        };
        let recent = self
            .last_active
            .is_some_and(|t| now.saturating_duration_since(t) < s.idle_grace);
        if recent {
            desired = desired.max(1);
        } else {
            desired = 0;
            self.max_panic = 0;
            self.panic_since = None;
        }
        Decision {
            desired: desired.clamp(s.min, s.max.max(1).max(s.min)),
            stable: sv,
            panic: pv,
            panicking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KpaSettings {
        KpaSettings {
            target: 10.0,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            tick: Duration::from_secs(1),
            idle_grace: Duration::from_secs(30),
            min: 0,
            max: 100,
        }
    }

    /// The spec's formulas written out directly over the whole history, as a cross-check.
    struct Model {
        history: Vec<f64>,
        panic_since: Option<usize>,
        max_panic: u32,
        last_active: Option<usize>,
    }

    impl Model {
        fn step(&mut self, t: usize, avg: f64, ready: u32, s: &KpaSettings) -> u32 {
            self.history.push(avg);
            if avg > 0.0 {
                self.last_active = Some(t);
            }
            let mean = |n: usize| {
                let h = &self.history[self.history.len().saturating_sub(n)..];
                h.iter().sum::<f64>() / h.len() as f64
            };
            let (sv, pv) = (mean(60), mean(6));
            let r = f64::from(ready.max(1));
            let (up, down) = ((1000.0 * r).ceil(), (r / 2.0).floor());
            let ds = (sv / s.target).ceil().clamp(down, up);
            let dp = (pv / s.target).ceil().clamp(down, up);
            if (pv / s.target).ceil() / r >= 2.0 {
                self.panic_since = Some(t);
            } else if self.panic_since.is_some_and(|p| t - p >= 60) {
                self.panic_since = None;
                self.max_panic = 0;
            }
            let mut d = if self.panic_since.is_some() {
                let d = ds.max(dp).max(f64::from(self.max_panic)) as u32;
                self.max_panic = d;
                d
            } else {
                ds as u32
            };
            if self.last_active.is_some_and(|a| t - a < 30) {
                d = d.max(1);
            } else {
                d = 0;
                self.max_panic = 0;
                self.panic_since = None;
            }
            d.clamp(s.min, s.max)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_match_the_formula_model_over_a_scripted_load() {
        let s = settings();
        let mut kpa = Kpa::new(s);
        let mut model = Model {
            history: vec![],
            panic_since: None,
            max_panic: 0,
            last_active: None,
        };
        // Idle, a slow ramp, a spike that triggers panic, a plateau, then silence.
        let mut load: Vec<f64> = vec![0.0; 5];
        load.extend((0..30).map(|i| f64::from(i) * 2.0));
        load.extend([400.0; 8]);
        load.extend([50.0; 90]);
        load.extend([0.0; 100]);
        let mut ready = 0u32;
        let mut saw_panic = false;
        let mut saw_zero_after_load = false;
        for (t, &avg) in load.iter().enumerate() {
            tokio::time::advance(s.tick).await;
            let now = Instant::now();
            kpa.record(now, avg, 0);
            let d = kpa.decide(now, ready, 0);
            let m = model.step(t, avg, ready, &s);
            assert_eq!(d.desired, m, "tick {t}: load {avg}, ready {ready}: {d:?}");
            saw_panic |= d.panicking;
            saw_zero_after_load |= t > 40 && d.desired == 0;
            ready = d.desired;
        }
        assert!(saw_panic, "the spike must trigger panic mode");
        assert!(saw_zero_after_load, "silence must end at zero");
    }

    #[tokio::test(start_paused = true)]
    async fn scale_to_zero_waits_exactly_for_idle_grace_and_panic_never_scales_down() {
        let s = settings();
        let mut kpa = Kpa::new(s);
        // 20 concurrent for 10 s at target 10 → 2 endpoints.
        for _ in 0..10 {
            tokio::time::advance(s.tick).await;
            kpa.record(Instant::now(), 20.0, 20);
        }
        assert_eq!(kpa.decide(Instant::now(), 2, 20).desired, 2);
        // Spike: panic window says 100 → 10, and stays ≥ 10 while panicking even as load drops.
        for _ in 0..6 {
            tokio::time::advance(s.tick).await;
            kpa.record(Instant::now(), 100.0, 100);
        }
        let d = kpa.decide(Instant::now(), 2, 100);
        assert!(d.panicking && d.desired == 10, "{d:?}");
        for _ in 0..10 {
            tokio::time::advance(s.tick).await;
            kpa.record(Instant::now(), 1.0, 1);
            assert_eq!(kpa.decide(Instant::now(), 10, 1).desired, 10);
        }
        // Quiet: still ≥ 1 until idle_grace passes with nothing active, then 0.
        let quiet_from = Instant::now();
        loop {
            tokio::time::advance(s.tick).await;
            kpa.record(Instant::now(), 0.0, 0);
            let d = kpa.decide(Instant::now(), 1, 0);
            let idle = Instant::now() - quiet_from;
            if idle < s.idle_grace {
                assert!(d.desired >= 1, "scaled to zero after only {idle:?}");
            } else {
                assert_eq!(d.desired, 0, "still {} after {idle:?} idle", d.desired);
                break;
            }
        }
        // A floor holds even when idle, and a ceiling caps a panic.
        let mut floor = Kpa::new(KpaSettings {
            min: 1,
            max: 3,
            ..s
        });
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(floor.decide(Instant::now(), 1, 0).desired, 1);
        floor.record(Instant::now(), 1000.0, 1000);
        assert_eq!(floor.decide(Instant::now(), 1, 1000).desired, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_forgets_old_load() {
        let mut kpa = Kpa::new(settings());
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            kpa.record(Instant::now(), 50.0, 50);
        }
        tokio::time::advance(Duration::from_secs(300)).await;
        kpa.reset();
        kpa.touch(Instant::now());
        assert_eq!(
            kpa.decide(Instant::now(), 0, 1).desired,
            1,
            "not 5 from the old load"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cold_demand_asks_for_one_at_once() {
        let mut kpa = Kpa::new(settings());
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(kpa.decide(Instant::now(), 0, 0).desired, 0);
        kpa.touch(Instant::now());
        assert_eq!(kpa.decide(Instant::now(), 0, 1).desired, 1);
    }
}
