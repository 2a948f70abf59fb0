//! The bounded wait queue of one revision: how many requests and declared body bytes are held,
//! and the wake-ups that send them to a freed slot.
//!
//! A held request is a future; its place is a [`Hold`], an RAII guard, so a request that leaves
//! by any road (a slot, a timeout, its client going away) gives its place and bytes back at
//! once.

use crate::clock;
use crate::config;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

/// Bounds of the wait queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most requests held at once.
    pub max_requests: usize,
    /// Most declared body bytes held at once.
    pub max_bytes: u64,
    /// Longest a request is held; `None` = until its request deadline.
    pub max_wait: Option<Duration>,
    /// Under sustained overload, the longest predicted wait a new arrival may join with;
    /// `None` = no shedding.
    pub target_wait: Option<Duration>,
}

impl From<&config::Queue> for QueueLimits {
    fn from(q: &config::Queue) -> Self {
        QueueLimits {
            max_requests: q.max_requests,
            max_bytes: q.max_bytes.0,
            max_wait: (!q.max_wait.0.is_zero()).then_some(q.max_wait.0),
            // A queue whose requests give up sooner sheds at their limit.
            target_wait: (!q.target_wait.0.is_zero()).then(|| match q.max_wait.0 {
                w if w.is_zero() => q.target_wait.0,
                w => q.target_wait.0.min(w),
            }),
        }
    }
}

/// Why a request could not join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_requests` are already held (the count at the time).
    Requests(usize),
    /// Holding its declared body would pass `max_bytes`.
    Bytes,
}

/// The queue's counters and wake-ups.
#[derive(Debug, Default)]
pub struct Queue {
    held: AtomicUsize,
    held_bytes: AtomicU64,
    wake: Notify,
    /// `clock::now_ms()` when the queue was last seen empty: a queue that has not emptied for
    /// a while is a standing one, not a burst being absorbed.
    empty_at: AtomicU64,
    /// Slots freed while requests were held, and the rate they were freed at.
    pace: Pace,
}

/// How fast a revision frees slots while requests wait for them: its capacity, measured where
/// it matters, under saturation.
#[derive(Debug, Default)]
struct Pace {
    freed: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    since: Option<Instant>,
    freed_then: u64,
    per_sec: f64,
}

/// The longest wait a prediction reports.
const MAX_PREDICTED: Duration = Duration::from_secs(3600);

/// The shortest stretch a rate is measured over: enough slots freed to mean something.
const PACE_WINDOW: Duration = Duration::from_millis(250);

impl Pace {
    /// Slots freed per second, averaged over recent windows; `None` until one has been seen.
    fn per_sec(&self, now: Instant) -> Option<f64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let freed = self.freed.load(Ordering::Relaxed);
        match w.since {
            None => {
                w.since = Some(now);
                w.freed_then = freed;
            }
            Some(since) if now.saturating_duration_since(since) >= PACE_WINDOW => {
                let secs = now.saturating_duration_since(since).as_secs_f64();
                let rate = freed.saturating_sub(w.freed_then) as f64 / secs;
                // Half the weight on the newest window: steady, yet it follows a revision
                // whose endpoints came or went within a second or two.
                w.per_sec = if w.per_sec > 0.0 {
                    (w.per_sec + rate) / 2.0
                } else {
                    rate
                };
                w.since = Some(now);
                w.freed_then = freed;
            }
            Some(_) => {}
        }
        (w.per_sec > 0.0).then_some(w.per_sec)
    }
}

impl Queue {
    /// Requests held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// How long requests have been held without the queue emptying; zero while it is empty.
    /// No held request has waited longer.
    pub fn standing(&self) -> Duration {
        if self.held() == 0 {
            return Duration::ZERO;
        }
        let since = self.empty_at.load(Ordering::Relaxed);
        Duration::from_millis(clock::now_ms().saturating_sub(since))
    }

    /// True while nobody waits, so an arrival may take a free slot without queueing (no
    /// barging past those already held).
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// Joins the queue with `bytes` of declared body. `cold` is the revision's cold-start
    /// timer, forgotten when the last held request leaves (`None` when the revision was warm
    /// on arrival); `wait` observes how long the request was held, however it leaves.
    pub fn enter<'a>(
        &'a self,
        limits: &QueueLimits,
        bytes: u64,
        cold: Option<&'a Mutex<Option<Instant>>>,
        wait: &'a Histogram,
    ) -> Result<Hold<'a>, Refused> {
        let prev = self.held.fetch_add(1, Ordering::SeqCst);
        if prev >= limits.max_requests {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Requests(prev));
        }
        if prev == 0 {
            self.empty_at.store(clock::now_ms(), Ordering::Relaxed);
        }
        if bytes > 0 {
            let prev_bytes = self.held_bytes.fetch_add(bytes, Ordering::SeqCst);
            if prev_bytes.saturating_add(bytes) > limits.max_bytes {
                self.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
                self.held.fetch_sub(1, Ordering::SeqCst);
                return Err(Refused::Bytes);
            }
        }
        Ok(Hold {
            queue: self,
            bytes,
            since: Instant::now(),
            cold,
            wait,
        })
    }

    /// A wake-up to register for before checking for a slot again.
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Wakes every waiter (new endpoints, new settings, a start failure).
    pub fn wake_all(&self) {
        self.wake.notify_waiters();
    }

    /// Passes a freed slot on to the oldest waiter, if any. Runs after the slot is free, and a
    /// waiter registers before it checks, so either the waiter sees the slot or it receives
    /// this wake-up. Counted towards the pace only then, so the fast path pays nothing.
    pub fn slot_freed(&self) {
        if self.held.load(Ordering::SeqCst) > 0 {
            self.pace.freed.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Hands a wake-up this waiter will not use to the next one.
    pub fn pass_on(&self) {
        self.wake.notify_one();
    }

    /// The wait an arrival is predicted to have, if it should be turned away now: the queue
    /// has stood for at least `target` without emptying (sustained overload, not a burst) and
    /// the slots are freed too slowly for this arrival to be served within `target`.
    pub fn overloaded(&self, target: Duration) -> Option<Duration> {
        let held = self.held.load(Ordering::SeqCst);
        if held == 0 {
            return None;
        }
        let target_ms = u64::try_from(target.as_millis()).unwrap_or(u64::MAX);
        let stood = clock::now_ms().saturating_sub(self.empty_at.load(Ordering::Relaxed));
        let rate = self.pace.per_sec(Instant::now())?;
        // A rate that has decayed towards nothing (every slot held by long streams) predicts
        // an unbounded wait; an hour says as much, and stays a sane Retry-After.
        let predicted = Duration::try_from_secs_f64((held + 1) as f64 / rate)
            .unwrap_or(MAX_PREDICTED)
            .min(MAX_PREDICTED);
        (stood >= target_ms && predicted > target).then_some(predicted)
    }
}

/// A place in the queue; leaving (by success, timeout or client disconnect) frees it.
#[derive(Debug)]
pub struct Hold<'a> {
    queue: &'a Queue,
    bytes: u64,
    /// When the request joined.
    pub since: Instant,
    cold: Option<&'a Mutex<Option<Instant>>>,
    wait: &'a Histogram,
}

impl Hold<'_> {
    /// How long the request has been held.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let left = self.queue.held.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 {
            self.queue
                .empty_at
                .store(clock::now_ms(), Ordering::Relaxed);
        }
        if left == 0
            && let Some(cold) = self.cold
        {
            // Everyone waiting for this cold start has left (a slot, a timeout, a disconnect):
            // the next cold start is timed from its own first request, not from this one.
            *cold.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        if self.bytes > 0 {
            self.queue
                .held_bytes
                .fetch_sub(self.bytes, Ordering::SeqCst);
        }
        self.wait.observe(self.since.elapsed().as_secs_f64());
        // No wake-up is passed on here. A waiter that leaves after being woken but before
        // taking its slot drops its `Notified`, and tokio forwards that wake-up to the next
        // waiter. An extra wake here would wake the next in line with no slot free, sending it
        // to the back of the queue every time, and under steady churn it could starve.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_stops_moving_predicts_a_long_wait_without_overflowing() {
        let q = Queue::default();
        let limits = QueueLimits {
            max_requests: 100,
            max_bytes: u64::MAX,
            max_wait: None,
            target_wait: None,
        };
        let wait = Histogram::new([1.0].into_iter());
        let _held: Vec<_> = (0..10)
            .map(|_| q.enter(&limits, 0, None, &wait).unwrap())
            .collect();
        // Ten slots freed in the first window, none ever after (long streams hold them all).
        q.overloaded(Duration::ZERO);
        for _ in 0..10 {
            q.slot_freed();
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        let first = q.overloaded(Duration::ZERO).expect("a rate is known");
        assert!(first < Duration::from_secs(1), "{first:?}");
        let mut last = first;
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(300)).await;
            last = q.overloaded(Duration::ZERO).expect("still overloaded");
        }
        assert_eq!(last, MAX_PREDICTED, "decayed to the cap, not past it");
    }
}
