//! What ends with a proxied exchange: the endpoint [`Lease`], the HTTP/1.1 connection to give
//! back to its pool (only after a clean end: a connection with unread response bytes cannot
//! carry another exchange), the request's count as active for autoscaling, and its metrics.
//! The response body carries it ([`crate::http::body::Exchange`]), or the tunnel task for an
//! upgraded connection, so it lives exactly as long as the exchange does.

use crate::http::body::{Exchange, ProxyBody};
use crate::http::client::Pooled;
use crate::observe::Record;
use crate::revision::{Active, Lease};
use std::time::Duration;
use tokio::time::Instant;

/// The proxy's response body.
pub type Body = ProxyBody<Completion>;

/// What happens when a proxied exchange ends.
#[derive(Debug)]
pub struct Completion {
    lease: Option<Lease>,
    _active: Active,
    conn: Option<Pooled>,
    /// How long the backend keeps the connection idle, if it said so.
    keep_alive: Option<Duration>,
    start: Instant,
    status: u16,
    /// The access log line and spans, when observed; ends with the exchange.
    record: Option<Box<Record>>,
}

impl Completion {
    /// Ties a lease (and an HTTP/1.1 connection to return) to a response of `status`; the
    /// request stays counted as active for autoscaling until this ends.
    pub fn new(
        lease: Lease,
        conn: Option<Pooled>,
        start: Instant,
        status: u16,
        active: Active,
    ) -> Completion {
        Completion {
            lease: Some(lease),
            _active: active,
            conn,
            keep_alive: None,
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

    /// Notes how long the backend keeps the connection idle (its `Keep-Alive: timeout=`).
    pub fn keep_alive(&mut self, idle: Option<Duration>) {
        self.keep_alive = idle;
    }

    fn finish(&mut self, clean: bool) {
        if let Some(lease) = self.lease.take() {
            // Return the connection before the slot, so a request woken by the freed slot finds
            // a warm connection.
            if let Some(conn) = self.conn.take()
                && clean
            {
                lease.endpoint().pool.put(conn, self.keep_alive);
            }
            lease
                .revision()
                .metrics
                .record(self.status, self.start.elapsed().as_secs_f64());
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
