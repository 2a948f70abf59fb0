//! The per-connection switch that closes a client connection at once, counts the tunnels
//! that outlive it, and carries the time a request in progress asks its connection's task to
//! wake it at. Apart from the response body, so that the HTTP/1.1 server connection can hold
//! one without depending on what bodies are made of.

use super::signal::Signal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A per-connection switch that closes the connection at once, for what can only be stopped
/// that way (an HTTP/1.1 response cut by a time limit while the client does not read). It also
/// counts the tunnels (upgraded connections) that outlive the connection's HTTP exchange, so
/// that the connection keeps its place under the listener's limit until they end.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<CutInner>);

#[derive(Debug, Default)]
struct CutInner {
    /// Set once the switch has fired; it stays set. The one task that waits for it
    /// ([`Cut::fired`]) is the connection's, which polls it each time it is woken.
    fire: Signal,
    tunnels: std::sync::atomic::AtomicUsize,
    tunnel_ended: Notify,
    /// A tunnel was ever taken over from the connection: it switched protocols.
    switched: std::sync::atomic::AtomicBool,
    /// Set when the connection's task wakes its request at the time the request asks
    /// ([`Cut::wake_at`]).
    wakes: std::sync::atomic::AtomicBool,
    /// That time, while a request in progress has one. An instant under a lock rather than
    /// nanoseconds from a base in an atomic: making the one and the other of an instant cost
    /// more than the uncontended lock (the connection's task alone takes it, bar the
    /// request's one setting).
    wake: parking_lot::Mutex<Option<Instant>>,
    /// Whether `wake` holds a time: read without the lock for the requests that set none.
    asked: std::sync::atomic::AtomicBool,
}

impl Cut {
    /// Asks the connection to close now.
    pub fn fire(&self) {
        self.0.fire.set();
    }

    /// Resolves once the switch has fired (even if it fired before this was called). One task
    /// waits for it: the waker of the last poll is the one woken.
    pub async fn fired(&self) {
        std::future::poll_fn(|cx| self.0.fire.poll_set(cx)).await;
    }

    /// Marks a tunnel taken over from this connection as open until the guard drops.
    pub fn hold(&self) -> TunnelHold {
        self.0
            .switched
            .store(true, std::sync::atomic::Ordering::Release);
        self.0
            .tunnels
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        TunnelHold(self.0.clone())
    }

    /// True once a tunnel was taken over from the connection (it switched protocols): its
    /// bytes are no longer HTTP/1.1 requests.
    pub fn switched(&self) -> bool {
        self.0.switched.load(std::sync::atomic::Ordering::Acquire)
    }

    /// From now on the connection's own task wakes its request in progress at the time the
    /// request asks for: an HTTP/1.1 connection, which keeps one timer for all its time limits
    /// (see `http::downstream`). The request must be polled by that task (as the handler's
    /// future is), not spawned apart: only that task is woken.
    pub fn wakes(&self) {
        self.0.wakes.store(true, Ordering::Relaxed);
    }

    /// Asks the connection's task to wake the request in progress at `t`, its time limit, so
    /// that the request need not set a timer of its own (setting one and taking it out of
    /// tokio's wheel again cost about 700 instructions per request); false if the connection
    /// does not (HTTP/2, whose streams share it), and the request keeps its own timer.
    pub fn wake_at(&self, t: Instant) -> bool {
        if !self.0.wakes.load(Ordering::Relaxed) {
            return false;
        }
        *self.0.wake.lock() = Some(t);
        self.0.asked.store(true, Ordering::Release);
        true
    }

    /// The time the request in progress asked to be woken at, if any.
    pub fn wake_time(&self) -> Option<Instant> {
        if !self.0.asked.load(Ordering::Acquire) {
            return None;
        }
        *self.0.wake.lock()
    }

    /// The request in progress is answered, or was woken: no more waking for it.
    pub fn woken(&self) {
        if self.0.asked.swap(false, Ordering::AcqRel) {
            *self.0.wake.lock() = None;
        }
    }

    /// Resolves once no tunnel of this connection is open.
    pub async fn tunnels_closed(&self) {
        loop {
            let ended = self.0.tunnel_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.0.tunnels.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// An open tunnel of a connection (see [`Cut::hold`]).
#[derive(Debug)]
pub struct TunnelHold(Arc<CutInner>);

impl Drop for TunnelHold {
    fn drop(&mut self) {
        self.0
            .tunnels
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.tunnel_ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_switch_wakes_its_waiter_and_stays_fired() {
        let cut = Cut::default();
        let waiting = tokio::spawn({
            let cut = cut.clone();
            async move { cut.fired().await }
        });
        // Waiting, and polled again with nothing fired: it keeps waiting.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        cut.fire();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter is woken")
            .unwrap();
        // Fired before it is asked: it resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), cut.fired())
            .await
            .expect("a fired switch stays fired");
    }
}
