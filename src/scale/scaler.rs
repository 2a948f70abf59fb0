//! The seam between the data plane and whatever runs backends.
//!
//! A [`Scaler`] is told how many endpoints a revision should have and makes it so, reporting
//! back only through the revision itself: [`Revision::set_endpoint_addrs`](crate::revision::Revision::set_endpoint_addrs) when endpoints
//! become ready or go away, [`Revision::fail_start`](crate::revision::Revision::fail_start) when they cannot start. The data plane
//! never learns what a scaler is. A Kubernetes scaler (patch the Deployment's scale
//! subresource; feed EndpointSlice readiness into `set_endpoint_addrs`) or a push to Knative's
//! autoscaler fits the same two calls.

use std::pin::Pin;
use std::time::Duration;

/// Runs a revision's backends.
pub trait Scaler: Send + Sync + std::fmt::Debug + 'static {
    /// Sets the wanted number of endpoints. Returns at once; the work happens elsewhere.
    fn scale(&self, desired: u32);

    /// Stops every backend this scaler started, gracefully, and waits for them.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Exponential backoff between failed start attempts: 1 s doubling to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 1 s (or `max` if smaller).
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_secs(1).min(max),
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
        self.next = Duration::from_secs(1).min(self.max);
    }
}
