//! What ends with a proxied exchange: the endpoint [`Lease`], the request's count as active
//! for autoscaling, and its metrics. (An HTTP/1.1 connection goes back to its pool from the
//! response body itself, before the body reports its end, so a request woken by the freed slot
//! finds a warm connection.)
//! The response body carries it ([`crate::http::body::Exchange`]), or the tunnel task for an
//! upgraded connection, so it lives exactly as long as the exchange does.

use crate::http::body::{Exchange, ProxyBody};
use crate::observe::Record;
use crate::revision::{Active, Lease};
use tokio::time::Instant;

/// The proxy's response body.
pub type Body = ProxyBody<Completion>;

/// What happens when a proxied exchange ends.
#[derive(Debug)]
pub struct Completion {
    lease: Option<Lease>,
    active: Active,
    start: Instant,
    status: u16,
    /// The access log line and spans, when observed; ends with the exchange.
    record: Option<Box<Record>>,
}

impl Completion {
    /// Ties a lease to a response of `status`; the
    /// request stays counted as active for autoscaling until this ends.
    pub fn new(lease: Lease, start: Instant, status: u16, active: Active) -> Completion {
        Completion {
            lease: Some(lease),
            active,
            start,
            status,
            record: None,
        }
    }

    /// Carries the request's record until the exchange ends.
    pub fn with_record(mut self, record: Option<Box<Record>>) -> Completion {
        self.record = record;
        self
    }

    fn finish(&mut self, clean: bool) {
        if let Some(lease) = self.lease.take() {
            // One reading of the clock for the latency and the end of the request's activity.
            let now = Instant::now();
            lease.revision().metrics.record(
                self.status,
                now.saturating_duration_since(self.start).as_secs_f64(),
            );
            self.active.end_at(now);
        }
        if let Some(mut r) = self.record.take() {
            r.status = self.status;
            // An upgrade ends when its tunnel closes, which is never "clean".
            if !clean && self.status != 101 {
                r.error = Some("response-incomplete".into());
            }
        }
    }
}

impl Exchange for Completion {
    fn end(mut self, clean: bool) {
        self.finish(clean);
    }

    fn sent(&mut self, bytes: usize) {
        if let Some(r) = &mut self.record {
            r.bytes += bytes as u64;
        }
    }
}

impl Drop for Completion {
    /// Dropped without an end (a tunnel closing, a client gone mid-body): not clean.
    fn drop(&mut self) {
        self.finish(false);
    }
}
#[cfg(test)]
mod tests {
    /// A proxied response moves a dozen times from the exchange to the client's connection:
    /// at 128 bytes or less each move is a few loads and stores, past that a call to
    /// `memcpy` (see `http::body`'s `Kind`).
    #[test]
    fn a_proxied_response_is_small_enough_to_move_inline() {
        use std::mem::size_of;
        type Res = http::Response<super::Body>;
        assert!(size_of::<Res>() <= 128, "{}", size_of::<Res>());
        let result = size_of::<Result<Res, crate::error::ProxyError>>();
        assert!(result <= 128, "{result}");
    }
}
