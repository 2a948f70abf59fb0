//! A cheap monotonic millisecond clock on `tokio::time::Instant`, so deadlines stored in
//! atomics follow paused time in tests.

use std::sync::OnceLock;
use tokio::time::Instant;

fn epoch() -> Instant {
    epochs().0
}

/// The monotonic and the wall clock, read together once.
fn epochs() -> (Instant, std::time::SystemTime) {
    static EPOCH: OnceLock<(Instant, std::time::SystemTime)> = OnceLock::new();
    *EPOCH.get_or_init(|| (Instant::now(), std::time::SystemTime::now()))
}

/// The wall-clock time now, advanced by the monotonic clock from one reading of both: it
/// follows paused time in tests, and a wall clock stepped by NTP does not jump it.
pub fn wall_now() -> std::time::SystemTime {
    let (mono, wall) = epochs();
    wall + mono.elapsed()
}

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
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
