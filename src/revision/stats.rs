//! Time-weighted concurrency: the average number of requests active over a window, where a
//! request active for half the window counts one half. This is the signal autoscaling runs on
//! (Knative's `RequestStats`): counting requests per window would over-weight short requests
//! and miss long ones.
//!
//! The accumulator sits behind a mutex rather than atomics because the area under the curve
//! and the active count must change together; read separately, a reader racing an arrival
//! would see an error as large as the clock value itself. The critical sections are a few
//! arithmetic operations and never span an `.await`.

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One window's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Time-weighted average of active requests over the window.
    pub avg_concurrency: f64,
    /// Requests that arrived during the window.
    pub arrivals: u64,
    /// Requests active at the window's end.
    pub active: u32,
    /// The window's length.
    pub length: Duration,
}

#[derive(Debug)]
struct Inner {
    active: u32,
    /// Request-seconds accumulated since `window_start`, up to `last`.
    area: f64,
    arrivals: u64,
    last: Instant,
    window_start: Instant,
    /// Request-seconds and arrivals since the start, never reset: what another replica's
    /// leader reads, as counters, to get this replica's average over its own interval.
    total_area: f64,
    total_arrivals: u64,
}

impl Inner {
    fn advance(&mut self, now: Instant) {
        if now > self.last {
            let a = f64::from(self.active) * (now - self.last).as_secs_f64();
            self.area += a;
            self.total_area += a;
            self.last = now;
        }
    }
}

/// Running totals since the start, for a reader that keeps its own windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Request-seconds: the area under the active-requests curve.
    pub area: f64,
    /// Requests that arrived.
    pub arrivals: u64,
    /// Requests active now.
    pub active: u32,
}

/// Accumulates arrivals and departures; [`ConcurrencyStats::take`] closes a window.
#[derive(Debug)]
pub struct ConcurrencyStats(Mutex<Inner>);

impl Default for ConcurrencyStats {
    fn default() -> Self {
        ConcurrencyStats::new(Instant::now())
    }
}

impl ConcurrencyStats {
    /// Starts the first window at `now`.
    pub fn new(now: Instant) -> ConcurrencyStats {
        ConcurrencyStats(Mutex::new(Inner {
            active: 0,
            area: 0.0,
            arrivals: 0,
            last: now,
            window_start: now,
            total_area: 0.0,
            total_arrivals: 0,
        }))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.0.lock()
    }

    /// A request became active.
    pub fn arrive(&self, now: Instant) {
        let mut s = self.lock();
        s.advance(now);
        s.active += 1;
        s.arrivals += 1;
        s.total_arrivals += 1;
    }

    /// A request finished.
    pub fn depart(&self, now: Instant) {
        let mut s = self.lock();
        s.advance(now);
        s.active = s.active.saturating_sub(1);
    }

    /// Requests active right now.
    pub fn active(&self) -> u32 {
        self.lock().active
    }

    /// The totals up to `now` (windows are not touched).
    pub fn totals(&self, now: Instant) -> Totals {
        let mut s = self.lock();
        s.advance(now);
        Totals {
            area: s.total_area,
            arrivals: s.total_arrivals,
            active: s.active,
        }
    }

    /// Closes the current window at `now`, returns its figures and starts the next.
    pub fn take(&self, now: Instant) -> Window {
        let mut s = self.lock();
        s.advance(now);
        let length = now.saturating_duration_since(s.window_start);
        let secs = length.as_secs_f64();
        let w = Window {
            avg_concurrency: if secs > 0.0 {
                s.area / secs
            } else {
                f64::from(s.active)
            },
            arrivals: s.arrivals,
            active: s.active,
            length,
        };
        s.area = 0.0;
        s.arrivals = 0;
        s.window_start = now;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: sample the active count every millisecond.
    fn model(events: &[(u64, u64)], from: u64, to: u64) -> f64 {
        let mut total = 0u64;
        for t in from..to {
            total += events.iter().filter(|(a, d)| *a <= t && t < *d).count() as u64;
        }
        total as f64 / (to - from) as f64
    }

    #[test]
    fn matches_brute_force_over_scripted_timelines() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // (arrival ms, departure ms) pairs, overlapping and spanning window edges.
        let timelines: [&[(u64, u64)]; 3] = [
            &[(0, 1000)],
            &[
                (100, 600),
                (200, 1700),
                (900, 950),
                (1500, 2500),
                (1999, 2001),
            ],
            &[(0, 3000), (0, 3000), (10, 20), (2990, 3000)],
        ];
        for events in timelines {
            let s = ConcurrencyStats::new(t0);
            let mut points: Vec<(u64, bool)> = events
                .iter()
                .flat_map(|&(a, d)| [(a, true), (d, false)])
                .collect();
            // Departures before arrivals at the same instant, as the model counts [a, d).
            points.sort_by_key(|&(t, arrive)| (t, arrive));
            let mut windows = Vec::new();
            let mut edge = 1000;
            for (t, arrive) in points {
                while t >= edge {
                    windows.push(s.take(at(edge)));
                    edge += 1000;
                }
                if arrive {
                    s.arrive(at(t));
                } else {
                    s.depart(at(t));
                }
            }
            while edge <= 3000 {
                windows.push(s.take(at(edge)));
                edge += 1000;
            }
            for (i, w) in windows.iter().enumerate() {
                let (from, to) = (i as u64 * 1000, (i as u64 + 1) * 1000);
                let expect = model(events, from, to);
                assert!(
                    (w.avg_concurrency - expect).abs() < 1e-9,
                    "window {i} of {events:?}: {} vs model {expect}",
                    w.avg_concurrency
                );
                let arrivals = events
                    .iter()
                    .filter(|(a, _)| (from..to).contains(a))
                    .count();
                assert_eq!(w.arrivals, arrivals as u64);
            }
        }
    }
}
