//! The five states of a revision as an operator sees them, read from its live state rather than
//! stored, so they cannot disagree with what requests meet. `docs/autoscaling.md` draws the
//! transitions between them.

use super::Revision;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where a revision is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No endpoint and none wanted: a request wakes it (or gets its placeholder).
    Cold,
    /// No endpoint yet, but the autoscaler wants some or requests are held for one: backends
    /// are starting.
    Activating,
    /// At least one endpoint takes requests.
    Warm,
    /// Scaled to zero, with requests still finishing on endpoints already out of the set.
    Draining,
    /// The last start attempt failed and its backoff is running: arrivals get 503
    /// `start-failed` at once.
    Failed {
        /// Why the start failed.
        reason: Arc<str>,
        /// Until the next attempt.
        retry_in: Duration,
    },
}

impl Phase {
    /// The phase's name, as the docs and the status page spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Activating => "activating",
            Phase::Warm => "warm",
            Phase::Draining => "draining",
            Phase::Failed { .. } => "failed",
        }
    }
}

impl Revision {
    /// The revision's phase right now.
    pub fn phase(&self) -> Phase {
        if !self.is_cold() {
            return Phase::Warm;
        }
        if let Some(f) = self.failure(None) {
            return Phase::Failed {
                retry_in: f.until.saturating_duration_since(Instant::now()),
                reason: f.reason,
            };
        }
        if self.desired() > 0 || self.held() > 0 {
            Phase::Activating
        } else if self.in_flight() > 0 {
            Phase::Draining
        } else {
            Phase::Cold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn phases_follow_the_state_diagram() {
        let r = Revision::for_test(1, 0);
        assert_eq!(r.phase(), Phase::Cold);
        // A request arrives: held, the autoscaler asks for one endpoint.
        let r2 = r.clone();
        let held = tokio::spawn(async move { r2.acquire(0, None).await.map(|a| a.lease) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(r.phase(), Phase::Activating);
        r.set_desired(1);
        // The start fails: Failed while the backoff runs, with the reason.
        r.fail_start("exit status: 3", Duration::from_secs(2));
        assert!(held.await.unwrap().is_err(), "the held request is answered");
        assert_eq!(
            r.phase(),
            Phase::Failed {
                reason: "exit status: 3".into(),
                retry_in: Duration::from_secs(2)
            }
        );
        assert_eq!(r.phase().as_str(), "failed");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.phase(), Phase::Activating, "backoff over, still wanted");
        // An endpoint is ready: warm.
        r.set_endpoint_addrs(&["127.0.0.1:1".parse().unwrap()]);
        assert_eq!(r.phase(), Phase::Warm);
        // Scaled to zero with a request still running on the removed endpoint: draining.
        let lease = r.try_acquire().expect("a free slot");
        r.set_desired(0);
        r.set_endpoint_addrs(&[]);
        assert_eq!(r.phase(), Phase::Draining);
        drop(lease);
        assert_eq!(r.phase(), Phase::Cold);
    }
}
