//! A cheap monotonic millisecond clock on `tokio::time::Instant`, so deadlines stored in
//! atomics follow paused time in tests; and a timer that serves a limit which keeps moving
//! later ([`Alarm`]).

use std::sync::OnceLock;
use tokio::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The wall-clock time now, moved on by however far tokio's clock runs ahead of the real
/// one: nothing in production, the virtual advance on paused time in tests.
// The real clock is read on purpose here: the difference is what paused time has added.
#[allow(clippy::disallowed_types)]
pub fn wall_now() -> std::time::SystemTime {
    let ahead = Instant::now()
        .into_std()
        .saturating_duration_since(std::time::Instant::now());
    std::time::SystemTime::now() + ahead
}

/// A connection's one timer, for limits that keep moving later and are rarely reached (the
/// wait for each request head of a kept-alive connection, a request's own time limit).
///
/// The timer is left where it was when the limit moves later, and moved only when it fires
/// before the limit: setting a timer for every request, and taking it out of tokio's wheel
/// again, cost about 450 instructions. Once polled by its task, it is not polled again until
/// it is set anew or has fired: it wakes that task at its deadline by itself, and a poll that
/// finds it waiting (about 100 instructions) is asked only when it could answer otherwise.
///
/// Polled by one task only: the task that polled it last is the one it wakes.
pub struct Alarm<'a> {
    sleep: std::pin::Pin<&'a mut tokio::time::Sleep>,
    /// Polled since it was last set, with budget left for the poll to register the task's
    /// waker (tokio answers a task out of budget without registering it).
    armed: bool,
}

impl<'a> Alarm<'a> {
    /// `sleep`, not yet polled.
    pub fn new(sleep: std::pin::Pin<&'a mut tokio::time::Sleep>) -> Alarm<'a> {
        Alarm {
            sleep,
            armed: false,
        }
    }

    /// When it fires.
    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Moves it to `t` if it would fire later than that.
    pub fn no_later_than(&mut self, t: Instant) {
        if t < self.sleep.deadline() {
            self.sleep.as_mut().reset(t);
            self.armed = false;
        }
    }

    /// Ready when `limit` is reached, which must be no earlier than the deadline (set with
    /// [`Alarm::no_later_than`]).
    pub fn poll_until(
        &mut self,
        limit: Instant,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future as _;
        use std::task::Poll;
        if self.armed && self.sleep.deadline() <= limit && !self.sleep.is_elapsed() {
            // It wakes the task at its deadline, no later than the limit.
            return Poll::Pending;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                // A poll that returns waiting gives back the budget it took: budget left now
                // means there was some for the poll, which registered the task.
                self.armed = tokio::task::coop::has_budget_remaining();
                return Poll::Pending;
            }
            self.armed = false;
            if self.sleep.deadline() >= limit {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(limit);
        }
    }
}

/// Sleeps until `t`, or forever if there is none (a `select!` branch that may be off).
pub async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The earlier of two optional deadlines (`None` means none).
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    /// Set earlier than its limit, the timer fires first, moves itself to the limit and is
    /// ready there, not before.
    #[tokio::test(start_paused = true)]
    async fn an_alarm_set_early_is_ready_at_its_limit() {
        let t0 = Instant::now();
        let sleep = pin!(tokio::time::sleep_until(t0 + Duration::from_secs(1)));
        let mut alarm = Alarm::new(sleep);
        let limit = t0 + Duration::from_secs(5);
        poll_fn(|cx| alarm.poll_until(limit, cx)).await;
        assert_eq!(Instant::now(), limit);
        // Fired, it is set again for the next limit.
        let next = limit + Duration::from_secs(10);
        poll_fn(|cx| alarm.poll_until(next, cx)).await;
        assert_eq!(Instant::now(), next);
        // Set later than a limit, it is moved to it; a later limit does not move it back.
        let sleep = pin!(tokio::time::sleep_until(next + Duration::from_secs(60)));
        let mut alarm = Alarm::new(sleep);
        let sooner = next + Duration::from_secs(2);
        alarm.no_later_than(sooner);
        alarm.no_later_than(sooner + Duration::from_secs(1));
        assert_eq!(alarm.deadline(), sooner);
        poll_fn(|cx| alarm.poll_until(sooner, cx)).await;
        assert_eq!(Instant::now(), sooner);
    }

    /// Polled by a task that has used up its budget, the timer does not register the task;
    /// it is not taken as armed, so the next poll registers it and it fires on time.
    #[tokio::test(start_paused = true)]
    async fn an_alarm_polled_out_of_budget_is_polled_again() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        let limit = Instant::now() + Duration::from_secs(3);
        let sleep = pin!(tokio::time::sleep_until(limit));
        let mut alarm = Alarm::new(sleep);
        let mut starved = false;
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            poll_fn(|cx| {
                if !starved {
                    // Each message taken spends budget; the channel says waiting once it is
                    // spent, with messages still in it.
                    while let Poll::Ready(Some(_)) = rx.poll_recv(cx) {}
                    assert!(!rx.is_empty(), "the budget ran out first");
                    starved = true;
                }
                alarm.poll_until(limit, cx)
            }),
        )
        .await;
        assert!(waited.is_ok(), "the alarm fired at its limit");
        assert_eq!(Instant::now(), limit);
    }
}
