//! A cheap monotonic millisecond clock on `tokio::time::Instant`, so deadlines stored in
//! atomics follow paused time in tests; and a timer that serves a limit which keeps moving
//! later ([`poll_until`]).

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

/// Ready when `limit` is reached, on a timer that may be set earlier: a limit that moves later
/// often and is rarely reached (the wait for each request head of a kept-alive connection)
/// keeps one timer, left where it was when the limit moves and moved only when it fires before
/// the limit. Setting a timer for every request, and taking it out of tokio's wheel again,
/// cost about 450 instructions; this costs none until the timer fires.
pub fn poll_until(
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    limit: Instant,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    use std::future::Future as _;
    loop {
        std::task::ready!(timer.as_mut().poll(cx));
        if timer.deadline() >= limit {
            return std::task::Poll::Ready(());
        }
        timer.as_mut().reset(limit);
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
