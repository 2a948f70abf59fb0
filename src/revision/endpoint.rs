//! One backend address of a revision: its in-flight count (the slots that enforce
//! `container_concurrency`), its passive-ejection deadline and its connection pool.

use super::balance::Slot;
use crate::clock;
use crate::http::client::{Pool, PoolSettings};
use crate::metrics::EndpointMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// One backend address of a revision.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the same backend takes gRPC (h2c), when it has a port of its own for it
    /// (`grpc_port`).
    pub grpc: Option<SocketAddr>,
    in_flight: AtomicU32,
    /// `clock::now_ms()` until which the balancer avoids this endpoint.
    ejected_until: AtomicU64,
    pub(crate) pool: Pool,
    pub(crate) metrics: EndpointMetrics,
}

impl Endpoint {
    /// Creates an endpoint with an empty connection pool.
    pub fn new(
        addr: SocketAddr,
        grpc: Option<SocketAddr>,
        pool: PoolSettings,
        metrics: EndpointMetrics,
    ) -> Endpoint {
        Endpoint {
            addr,
            grpc,
            in_flight: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            pool: Pool::new(pool),
            metrics,
        }
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Gives back one slot taken by [`Slot::try_take`].
    pub(super) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Keeps the balancer away from this endpoint for `for_` (after a refused connection).
    pub fn eject(&self, for_: Duration) {
        let until = clock::now_ms() + u64::try_from(for_.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until.store(until, Ordering::Relaxed);
    }
}

impl Slot for Arc<Endpoint> {
    fn load(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn healthy(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || clock::now_ms() >= until
    }
    fn try_take(&self, limit: u32) -> bool {
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < limit).then_some(v + 1)
            })
            .is_ok()
    }
}
