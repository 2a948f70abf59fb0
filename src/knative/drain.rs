//! Graceful drain driven by traffic, not by a fixed sleep: once draining begins, health checks
//! fail (so the platform stops sending traffic) while requests are still served; the drain is
//! over when no request has arrived for the quiet period *and* nothing is in flight (upgraded
//! connections included), or when the overall bound runs out.
//!
//! A `/wait-for-drain` caller (the app container's preStop hook) starts the same drain and
//! blocks until it ends. If no termination follows within a second, the drain is called off:
//! the app container is being restarted on its own (a failed liveness probe), and the pod must
//! keep serving.

use crate::clock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a drainer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving normally; health checks pass.
    Serving,
    /// Health checks fail; requests are still served and extend the drain.
    Draining,
    /// Done: the listeners may close.
    Drained,
}

/// The drain state shared by the request path, the admin endpoint and the shutdown sequence.
#[derive(Debug)]
pub struct Drainer {
    quiet: Duration,
    /// `clock::now_ms()` of the last request seen while draining.
    last_ms: AtomicU64,
    draining: AtomicBool,
    terminated: AtomicBool,
    phase: watch::Sender<Phase>,
}

/// How a finished drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Requests still active when the bound ended the wait (0 for a clean drain).
    pub active_left: u32,
    /// How long the drain took.
    pub took: Duration,
}

impl Drainer {
    /// A drainer that needs `quiet` without new requests.
    pub fn new(quiet: Duration) -> Drainer {
        Drainer {
            quiet,
            last_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
            phase: watch::Sender::new(Phase::Serving),
        }
    }

    /// True from the start of a drain (health checks then answer 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Records a request: while draining, it restarts the quiet period. One relaxed load when
    /// not draining, so the request path pays nothing.
    pub fn touch(&self) {
        if self.is_draining() {
            self.last_ms.store(clock::now_ms(), Ordering::Relaxed);
        }
    }

    /// Starts draining, or restarts the quiet period of a drain already going.
    pub fn begin(&self) {
        self.last_ms.store(clock::now_ms(), Ordering::Relaxed);
        self.draining.store(true, Ordering::SeqCst);
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Serving;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    /// Calls a drain off, unless the process has been told to terminate.
    pub fn reset(&self) {
        if self.terminated.load(Ordering::SeqCst) {
            return;
        }
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Draining;
            if changed {
                self.draining.store(false, Ordering::SeqCst);
                *p = Phase::Serving;
            }
            changed
        });
    }

    /// Drains for termination: begins, then waits until no request has arrived for the quiet
    /// period and `active()` is 0, or until `bound` has passed. A drain cannot be reset after
    /// this is called.
    pub async fn terminate(&self, active: impl Fn() -> u32, bound: Duration) -> DrainOutcome {
        let began = Instant::now();
        self.terminated.store(true, Ordering::SeqCst);
        self.begin();
        let until = began + bound;
        loop {
            let now = Instant::now();
            let since = Duration::from_millis(
                clock::now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)),
            );
            let left = active();
            if (since >= self.quiet && left == 0) || now >= until {
                self.phase.send_replace(Phase::Drained);
                return DrainOutcome {
                    active_left: left,
                    took: began.elapsed(),
                };
            }
            // Asleep for the rest of the quiet period; once it has passed, only requests still
            // finishing are waited for, checked every 20 ms.
            let nap = if since < self.quiet {
                self.quiet - since
            } else {
                Duration::from_millis(20)
            };
            tokio::time::sleep_until((now + nap).min(until)).await;
        }
    }

    /// Waits until a drain in progress ends: drained, or called off. Returns the phase then.
    pub async fn wait(&self) -> Phase {
        let mut rx = self.phase.subscribe();
        match rx.wait_for(|p| *p != Phase::Draining).await {
            Ok(p) => *p,
            Err(_) => Phase::Drained,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn quiet_period_restarts_on_traffic_and_waits_for_in_flight() {
        let d = Arc::new(Drainer::new(Duration::from_secs(30)));
        let active = Arc::new(AtomicU32::new(1));
        let (d2, a2) = (d.clone(), active.clone());
        let t = tokio::spawn(async move {
            d2.terminate(|| a2.load(Ordering::SeqCst), Duration::from_secs(300))
                .await
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(d.is_draining());
        // A request at 20 s restarts the quiet period: the drain cannot end before 50 s.
        d.touch();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(d.phase(), Phase::Draining);
        // Quiet since 20 s, but one request is still in flight until 60 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(d.phase(), Phase::Draining);
        active.store(0, Ordering::SeqCst);
        let out = t.await.unwrap();
        assert_eq!(out.active_left, 0);
        assert!(
            out.took >= Duration::from_secs(60) && out.took < Duration::from_millis(60_100),
            "{:?}",
            out.took
        );
        assert_eq!(d.phase(), Phase::Drained);
    }

    #[tokio::test(start_paused = true)]
    async fn bound_ends_a_drain_that_never_settles() {
        let d = Drainer::new(Duration::from_secs(1));
        let out = d.terminate(|| 3, Duration::from_secs(10)).await;
        assert_eq!(out.active_left, 3);
        assert_eq!(out.took, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_calls_off_a_drain_unless_terminating() {
        let d = Arc::new(Drainer::new(Duration::from_secs(30)));
        d.begin();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.wait().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.reset();
        assert_eq!(waiter.await.unwrap(), Phase::Serving);
        assert!(!d.is_draining());
        let d3 = d.clone();
        let t = tokio::spawn(async move { d3.terminate(|| 0, Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.reset();
        assert!(d.is_draining(), "a terminating drain is not called off");
        t.await.unwrap();
        assert_eq!(d.wait().await, Phase::Drained);
    }
}
