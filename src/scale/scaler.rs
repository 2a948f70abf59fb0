//! The seam between the data plane and whatever runs backends.
//!
//! A [`Scaler`] is told how many endpoints a revision should have and makes it so, reporting
//! back only through the revision itself: [`Revision::set_endpoint_addrs`](crate::revision::Revision::set_endpoint_addrs) when endpoints
//! become ready or go away, [`Revision::fail_start`](crate::revision::Revision::fail_start) when they cannot start. The data plane
//! never learns what a scaler is. A Kubernetes scaler (patch the Deployment's scale
//! subresource; feed EndpointSlice readiness into `set_endpoint_addrs`) or a push to Knative's
//! autoscaler fits the same two calls.

use crate::config;
use crate::revision::Revision;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Makes the scaler a revision's `scale` section asks for, if this maker runs that kind of
/// backend; a gateway holds one maker per kind it supports (local processes, Kubernetes
/// workloads).
pub trait MakeScaler: Send + Sync + std::fmt::Debug + 'static {
    /// The scaler for `rev`, or `None` when `cfg` is not this maker's kind.
    fn make(&self, rev: &Arc<Revision>, cfg: &config::Revision) -> Option<Arc<dyn Scaler>>;
}

/// Runs a revision's backends.
pub trait Scaler: Send + Sync + std::fmt::Debug + 'static {
    /// Sets the wanted number of endpoints. Returns at once; the work happens elsewhere.
    fn scale(&self, desired: u32);

    /// How many backends already run or are on their way when the scaler starts (pods of a
    /// Deployment that rouse finds, not starts): the autoscaler starts from there instead of
    /// cutting them down before they are ready. Local processes: none.
    fn existing(&self) -> Pin<Box<dyn Future<Output = u32> + Send + '_>> {
        Box::pin(std::future::ready(0))
    }

    /// Demand for this revision seen by other rouse replicas, which the autoscaler adds to
    /// its own (a leader deciding for all). None for a scaler that works alone.
    fn peer_load(&self) -> PeerLoad {
        PeerLoad::default()
    }

    /// Stops every backend this scaler started, gracefully, and waits for them.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Other replicas' demand for one revision, over their latest interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerLoad {
    /// Time-weighted average of their active requests.
    pub avg: f64,
    /// Their requests active (held or proxied) at the last look.
    pub active: u32,
}

/// Exponential backoff between failed attempts: `first` doubling to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 1 s (or `max` if smaller).
    pub fn new(max: Duration) -> Backoff {
        Backoff::between(Duration::from_secs(1), max)
    }

    /// Starts at `first` (or `max` if smaller).
    pub fn between(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The pause after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_max_and_starts_over_after_a_success() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(5));
        let pauses: Vec<Duration> = (0..5).map(|_| b.fail()).collect();
        assert_eq!(pauses, [s(1), s(2), s(4), s(5), s(5)]);
        b.reset();
        assert_eq!(b.fail(), s(1));
        // A max below the first step caps it.
        let mut small = Backoff::new(Duration::from_millis(300));
        assert_eq!(small.fail(), Duration::from_millis(300));
    }
}
