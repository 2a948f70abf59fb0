//! Gradual rollouts (`services[].rollout`): rouse moves a service's default split, step by
//! step over a duration, from its configured percentages to all of it on one revision. The
//! new revision is warmed first (started from zero, if it is at zero) and gets its first share
//! only once it has an endpoint, so no request waits for its cold start. A rollout can be
//! stopped (`POST /api/rollouts/SERVICE/stop` on the admin port), which freezes the split
//! where it is; a reload with a changed or removed `rollout` replaces it.
//!
//! The request path reads the current split from an `ArcSwap`, and only for a service under
//! a rollout; the steps are taken by a task of the rollout's own, which lives as long as the
//! route table that holds it (and any later table built from the same rollout).

use super::split::Split;
use crate::revision::Revision;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The new revision is being started; it has no share yet.
    Warming = 0,
    /// Shares are moving.
    Moving = 1,
    /// All traffic is on the new revision.
    Done = 2,
    /// Stopped by an operator; the split stays where it was.
    Stopped = 3,
}

impl State {
    /// The state's name, as metrics and the status page spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Warming => "warming",
            State::Moving => "moving",
            State::Done => "done",
            State::Stopped => "stopped",
        }
    }

    /// Every state, for gauges that list them.
    pub const ALL: [State; 4] = [State::Warming, State::Moving, State::Done, State::Stopped];
}

/// What a rollout was configured as: a rollout is kept across reloads only if this is equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The service.
    pub service: Arc<str>,
    /// The split's weights as configured, in arm order.
    pub from: Vec<u32>,
    /// The arm that gets everything.
    pub to: usize,
    /// How long from the first share to the last.
    pub over: Duration,
    /// How many steps.
    pub steps: u32,
}

/// The weights at `step` of `steps`: the target grows linearly from its configured share to
/// 100; the other arms share what is left in proportion to their configured weights (largest
/// remainders first, so the sum stays 100).
pub fn weights(from: &[u32], to: usize, step: u32, steps: u32) -> Vec<u32> {
    let start = from[to];
    let target = start + (100 - start) * step.min(steps) / steps.max(1);
    let rest_before: u32 = from
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != to)
        .map(|(_, w)| w)
        .sum();
    let left = 100 - target;
    let mut out = vec![0u32; from.len()];
    out[to] = target;
    if rest_before == 0 || left == 0 {
        out[to] = 100;
        return out;
    }
    let mut remainders = Vec::new();
    let mut given = 0;
    for (i, w) in from.iter().enumerate() {
        if i == to {
            continue;
        }
        let exact = u64::from(*w) * u64::from(left);
        let share = u32::try_from(exact / u64::from(rest_before)).unwrap_or(0);
        out[i] = share;
        given += share;
        remainders.push((exact % u64::from(rest_before), i));
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders.into_iter().take((left - given) as usize) {
        out[i] += 1;
    }
    out
}

/// A running rollout.
#[derive(Debug)]
pub struct Rollout {
    /// What it was configured as.
    pub spec: Spec,
    /// The revision that gets everything.
    pub revision: Arc<Revision>,
    split: ArcSwap<Split>,
    step: AtomicU32,
    state: AtomicU8,
    stop: AtomicBool,
    wake: Arc<tokio::sync::Notify>,
    task: std::sync::Mutex<Option<AbortOnDropHandle<()>>>,
}

impl Rollout {
    /// Starts a rollout of `spec` to `revision`: the configured split until the revision is
    /// warm, then a step every `over / steps`.
    pub fn start(spec: Spec, revision: Arc<Revision>) -> Arc<Rollout> {
        let r = Arc::new(Rollout {
            split: ArcSwap::from_pointee(Split::new(spec.from.iter().copied())),
            spec,
            revision,
            step: AtomicU32::new(0),
            state: AtomicU8::new(State::Warming as u8),
            stop: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            task: std::sync::Mutex::new(None),
        });
        // The task holds only a weak reference: the rollout ends with the last table that
        // holds it. Outside a runtime (`rouse routes FILE` builds a table to print it) no
        // step is ever taken.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(drive(Arc::downgrade(&r), r.wake.clone()));
            *r.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(AbortOnDropHandle::new(task));
        }
        r
    }

    /// The split requests follow now.
    pub fn split(&self) -> arc_swap::Guard<Arc<Split>> {
        self.split.load()
    }

    /// The weights now, in arm order.
    pub fn current(&self) -> Vec<u32> {
        weights(
            &self.spec.from,
            self.spec.to,
            self.step.load(Ordering::Relaxed),
            self.spec.steps,
        )
    }

    /// The step reached, of `spec.steps`.
    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Relaxed)
    }

    /// Where it is.
    pub fn state(&self) -> State {
        State::ALL[usize::from(self.state.load(Ordering::Relaxed)).min(3)]
    }

    /// Freezes the split where it is; no further step is taken. False if it had already
    /// ended (done, or stopped before).
    pub fn stop(&self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        [State::Warming, State::Moving]
            .into_iter()
            .any(|from| self.to(from, State::Stopped))
    }

    /// Moves from state `from` to `to`, only if it is in `from` (a stop and the last step may
    /// race; whichever comes first wins).
    fn to(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn set_step(&self, step: u32) {
        self.step.store(step, Ordering::Relaxed);
        let w = weights(&self.spec.from, self.spec.to, step, self.spec.steps);
        self.split.store(Arc::new(Split::new(w)));
    }
}

/// Takes the rollout's steps: warm the revision, then the first step, and the last one `over`
/// later (one step: all at once).
async fn drive(weak: std::sync::Weak<Rollout>, wake: Arc<tokio::sync::Notify>) {
    // Warm: ask for the revision (a start from zero if it is there) until it has an endpoint;
    // the ask is renewed every second, so the revision is not let go meanwhile.
    let mut asked = 0u32;
    loop {
        let Some(r) = weak.upgrade() else { return };
        if r.stop.load(Ordering::SeqCst) {
            return;
        }
        if !r.revision.is_cold() {
            break;
        }
        if asked.is_multiple_of(10) {
            r.revision.poke();
        }
        asked = asked.wrapping_add(1);
        drop(r);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let every = {
        let Some(r) = weak.upgrade() else { return };
        if !r.to(State::Warming, State::Moving) {
            return;
        }
        r.spec.over / r.spec.steps.saturating_sub(1).max(1)
    };
    let mut step = 0;
    loop {
        {
            // Not held across the wait: a rollout a reload dropped ends at once.
            let Some(r) = weak.upgrade() else { return };
            if r.stop.load(Ordering::SeqCst) {
                return;
            }
            step += 1;
            r.set_step(step);
            if step >= r.spec.steps {
                r.to(State::Moving, State::Done);
                tracing::info!(service = %r.spec.service, revision = %r.revision.name, "rollout done");
                return;
            }
            tracing::info!(
                service = %r.spec.service, revision = %r.revision.name, step, steps = r.spec.steps,
                share = r.current()[r.spec.to], "rollout step"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wake.notified() => return,
        }
    }
}

/// The rollouts whose gauges are exported: the proxy publishes its table's.
#[derive(Debug, Clone)]
pub struct LiveRollouts(Arc<ArcSwap<Vec<Arc<Rollout>>>>);

impl LiveRollouts {
    /// Registers the gauges in `metrics`.
    pub fn register(metrics: &crate::metrics::Metrics) -> LiveRollouts {
        let live = LiveRollouts(Arc::new(ArcSwap::from_pointee(Vec::new())));
        metrics.add_collector(Box::new(Gauges(live.0.clone())));
        live
    }

    /// Replaces the set whose gauges are exported.
    pub fn publish(&self, rollouts: Vec<Arc<Rollout>>) {
        self.0.store(Arc::new(rollouts));
    }
}

#[derive(Debug)]
struct Gauges(Arc<ArcSwap<Vec<Arc<Rollout>>>>);

impl prometheus_client::collector::Collector for Gauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let all = self.0.load();
        let mut e = encoder.encode_descriptor(
            "rouse_rollout_share",
            "The share (percent) a gradual rollout gives its revision now",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for r in all.iter() {
            let labels = [
                ("service", &*r.spec.service),
                ("revision", &*r.revision.name),
            ];
            let share = i64::from(r.current()[r.spec.to]);
            ConstGauge::new(share).encode(e.encode_family(&labels)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "rouse_rollout_state",
            "1 for the state a gradual rollout is in (warming, moving, done, stopped), 0 for the others",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for r in all.iter() {
            let now = r.state();
            for s in State::ALL {
                let labels = [
                    ("service", &*r.spec.service),
                    ("revision", &*r.revision.name),
                    ("state", s.as_str()),
                ];
                ConstGauge::new(i64::from(s == now)).encode(e.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_move_linearly_and_always_sum_to_100() {
        assert_eq!(weights(&[100, 0], 1, 0, 10), [100, 0]);
        assert_eq!(weights(&[100, 0], 1, 1, 10), [90, 10]);
        assert_eq!(weights(&[100, 0], 1, 10, 10), [0, 100]);
        // Three arms: the others keep their proportions (2:1) of what is left.
        assert_eq!(weights(&[60, 30, 10], 2, 0, 3), [60, 30, 10]);
        assert_eq!(weights(&[60, 30, 10], 2, 1, 3), [40, 20, 40]);
        assert_eq!(weights(&[50, 25, 25], 2, 1, 3), [33, 17, 50]);
        assert_eq!(weights(&[60, 30, 10], 2, 3, 3), [0, 0, 100]);
        for steps in 1..=20 {
            for step in 0..=steps {
                let w = weights(&[33, 33, 34, 0], 3, step, steps);
                assert_eq!(w.iter().sum::<u32>(), 100, "{w:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_warms_the_revision_then_steps_on_schedule_and_can_stop() {
        let rev = Revision::for_test(1, 0);
        let spec = Spec {
            service: "s".into(),
            from: vec![100, 0],
            to: 1,
            over: Duration::from_secs(60),
            steps: 4,
        };
        let r = Rollout::start(spec, rev.clone());
        // Cold: no share, however long it takes.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!((r.state(), r.current()), (State::Warming, vec![100, 0]));
        rev.replace_endpoints(&["127.0.0.1:9".parse().unwrap()]);
        // Within the warm-up's next look (every 100 ms).
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!((r.state(), r.current()), (State::Moving, vec![75, 25]));
        // Four steps over 60 s: one every 20 s after the first.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(r.current(), [50, 50]);
        assert!(r.stop());
        assert!(!r.stop(), "stopped once");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((r.state(), r.current()), (State::Stopped, vec![50, 50]));
        assert_eq!(r.split().total(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_warm_revision_ends_on_schedule() {
        let rev = Revision::for_test(1, 1);
        let spec = Spec {
            service: "s".into(),
            from: vec![80, 20],
            to: 1,
            over: Duration::from_secs(40),
            steps: 4,
        };
        let r = Rollout::start(spec, rev);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(r.current(), [60, 40]);
        // The last of four steps comes `over` (40 s) after the first.
        tokio::time::sleep(Duration::from_secs(39)).await;
        assert_eq!((r.state(), r.current()), (State::Moving, vec![20, 80]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!((r.state(), r.current()), (State::Done, vec![0, 100]));
        assert!(!r.stop(), "a finished rollout does not stop");
    }
}
