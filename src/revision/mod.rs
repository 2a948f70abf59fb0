//! A revision's live state: its endpoints, their in-flight counts, and the bounded queue where
//! requests wait when no endpoint can take them (the breaker).
//!
//! Admission is one level, not Knative's two (a revision semaphore plus per-pod breakers that
//! can disagree): a request takes a slot directly on an endpoint with a compare-and-swap
//! ([`balance::pick`]), so `container_concurrency` is never exceeded and a free slot anywhere is
//! never left unused while requests wait.
//!
//! Waiting: while anyone is held, new arrivals queue behind them (no barging), so waiters are
//! served roughly in arrival order. A waiter registers on a [`Notify`] *before* re-checking for
//! a slot, and a finished request (or a new endpoint) notifies after releasing its slot, so no
//! wake-up is lost. A held request is a future: if the client goes away the future is dropped,
//! and its [`Hold`] guard gives the queue slot back at once.
//!
//! The slot itself is a [`Lease`], an RAII guard that the response body carries until it ends,
//! so streaming responses and upgraded connections count as in flight for their whole life.
//!
//! The files of this folder, in the order they build on each other: [`balance`] (the choice of
//! an endpoint), [`stats`] (time-weighted concurrency), [`endpoint`], [`queue`] (the bounded
//! wait), [`settings`], this file (the revision, its leases and the wait for a slot),
//! [`phase`] (the five states an operator sees), [`registry`] (revisions kept across reloads)
//! and [`gauges`] (their live metrics).

pub mod balance;
pub mod endpoint;
pub mod gauges;
pub mod phase;
pub mod queue;
pub mod registry;
pub mod settings;
pub mod stats;

use self::endpoint::Endpoint;
use self::queue::{Queue, Refused};
use self::settings::{RevisionSettings, RevisionSpec};
use self::stats::ConcurrencyStats;
use crate::clock;
use crate::config::Protocol;
use crate::error::{Code, ProxyError};
use crate::metrics::{Metrics, RevisionMetrics};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why the revision's last start attempt failed, and until when new requests fail fast.
#[derive(Debug, Clone)]
struct Failure {
    reason: Arc<str>,
    /// When the attempt failed.
    at: Instant,
    /// New requests fail fast until then.
    until: Instant,
}

/// The live state of one revision, shared by every route that points at it.
#[derive(Debug)]
pub struct Revision {
    /// Owning service's name.
    pub service: Arc<str>,
    /// The revision's name.
    pub name: Arc<str>,
    /// Protocol spoken to endpoints.
    pub protocol: Protocol,
    settings: ArcSwap<RevisionSettings>,
    /// `settings.container_concurrency`, read by every request's slot taking without loading
    /// the settings.
    container_concurrency: AtomicU32,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The endpoint set is empty, read by every request's routing without loading the set.
    no_endpoints: AtomicBool,
    /// Held by a writer of the endpoint set and `no_endpoints` from reading the set to writing
    /// both ([`Revision::write_endpoints`]).
    endpoints_write: Mutex<()>,
    /// Held by a writer of `settings` and `container_concurrency` across both stores
    /// ([`Revision::update`]), so two reloads at once cannot leave one's limit beside the
    /// other's settings.
    settings_write: Mutex<()>,
    queue: Queue,
    /// Pre-resolved metric handles.
    pub metrics: RevisionMetrics,
    root_metrics: Arc<Metrics>,
    stats: ConcurrencyStats,
    /// The part of `stats` that another proxy (an activator) sent on, so an autoscaler that
    /// also hears from that proxy does not count those requests twice.
    proxied: ConcurrencyStats,
    /// Poked when a request finds no endpoint, so the autoscaler acts at once.
    demand: Notify,
    /// Signalled on every change of the endpoint set (for the autoscaler asleep at zero).
    endpoints_changed: Notify,
    failure: Mutex<Option<Failure>>,
    /// When the first request of the current cold start was held.
    cold_since: Mutex<Option<Instant>>,
    desired: AtomicU32,
    /// Leases alive, on any endpoint (including ones already removed from the set).
    leased: AtomicU32,
    /// True while a scaler owns the endpoint set.
    managed: AtomicBool,
    /// The most endpoints a scaler may give it; 0 for a revision nobody scales.
    ceiling: AtomicU32,
    /// The fewest its autoscaler keeps now: `scale.min`, or more in a keep-warm window.
    floor: AtomicU32,
    /// `clock::now_ms()` when its start from zero began; 0 when it is not starting.
    starting_at: AtomicU64,
    /// The gRPC address of each backend given its own (a process given two ports, a pod's
    /// `kubernetes.grpc_port`), by its main address.
    grpc_addrs: Mutex<std::collections::HashMap<SocketAddr, SocketAddr>>,
    /// Set by a stats reporter that found the revision idle for a whole period: the next
    /// request is the first after idleness, which the reporter announces at once.
    idle: AtomicBool,
    /// Signalled on that first request.
    woke: Notify,
}

impl Revision {
    /// Creates a revision with the given endpoints.
    pub fn new(
        spec: RevisionSpec,
        endpoints: Vec<Arc<Endpoint>>,
        metrics: &Arc<Metrics>,
    ) -> Revision {
        let desired = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        Revision {
            metrics: metrics.revision(&spec.service, &spec.name),
            service: spec.service,
            name: spec.name,
            protocol: spec.protocol,
            container_concurrency: AtomicU32::new(spec.settings.container_concurrency),
            settings: ArcSwap::from_pointee(spec.settings),
            no_endpoints: AtomicBool::new(endpoints.is_empty()),
            endpoints_write: Mutex::new(()),
            settings_write: Mutex::new(()),
            endpoints: ArcSwap::from_pointee(endpoints),
            queue: Queue::default(),
            root_metrics: metrics.clone(),
            stats: ConcurrencyStats::default(),
            proxied: ConcurrencyStats::default(),
            demand: Notify::new(),
            endpoints_changed: Notify::new(),
            failure: Mutex::new(None),
            cold_since: Mutex::new(None),
            desired: AtomicU32::new(desired),
            leased: AtomicU32::new(0),
            managed: AtomicBool::new(false),
            ceiling: AtomicU32::new(0),
            floor: AtomicU32::new(0),
            starting_at: AtomicU64::new(0),
            grpc_addrs: Mutex::new(std::collections::HashMap::new()),
            // Idle until a request says otherwise.
            idle: AtomicBool::new(true),
            woke: Notify::new(),
        }
    }

    /// Marks the revision idle: the next request signals [`Revision::woken`].
    pub fn mark_idle(&self) {
        self.idle.store(true, Ordering::Relaxed);
    }

    /// Undoes [`Revision::mark_idle`]: the revision was busy after all.
    pub fn mark_busy(&self) {
        self.idle.store(false, Ordering::Relaxed);
    }

    /// Resolves on the first request after [`Revision::mark_idle`].
    pub async fn woken(&self) {
        self.woke.notified().await;
    }

    /// Sets the fewest endpoints its autoscaler keeps now.
    pub fn set_floor(&self, n: u32) {
        self.floor.store(n, Ordering::Relaxed);
    }

    /// The fewest endpoints its autoscaler keeps now (0 for a revision nobody scales).
    pub fn floor(&self) -> u32 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Marks whether a scaler owns the endpoint set; returns the previous value.
    pub fn set_managed(&self, managed: bool) -> bool {
        self.managed.swap(managed, Ordering::Relaxed)
    }

    /// True while a scaler owns the endpoint set.
    pub fn is_managed(&self) -> bool {
        self.managed.load(Ordering::Relaxed)
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<RevisionSettings> {
        self.settings.load_full()
    }

    /// The current settings, borrowed for a moment (no count of references taken): not to be
    /// held across an `.await`.
    pub fn settings_now(&self) -> arc_swap::Guard<Arc<RevisionSettings>> {
        self.settings.load()
    }

    /// Replaces the settings (on reload) and lets held requests re-check against them.
    pub fn update(&self, settings: RevisionSettings) {
        let one = self
            .settings_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.container_concurrency
            .store(settings.container_concurrency, Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
        drop(one);
        self.queue.wake_all();
    }

    /// Builds an endpoint of this revision (pool settings and metric handles filled in).
    pub fn make_endpoint(&self, addr: SocketAddr) -> Arc<Endpoint> {
        let settings = self.settings.load();
        let grpc = match settings.grpc_port {
            None => None,
            // Each process was given its own.
            Some(0) => self
                .grpc_addrs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&addr)
                .copied(),
            Some(port) => Some(SocketAddr::new(addr.ip(), port)),
        };
        Arc::new(Endpoint::new(
            addr,
            grpc,
            settings.pool.clone(),
            self.root_metrics
                .endpoint(&self.service, &self.name, &addr.to_string()),
        ))
    }

    /// Notes that the backend listening on `addr` takes gRPC on `grpc` (a process given two
    /// ports), for when its endpoint is made; `None` forgets it.
    pub fn set_grpc_addr(&self, addr: SocketAddr, grpc: Option<SocketAddr>) {
        let mut m = self.grpc_addrs.lock().unwrap_or_else(|p| p.into_inner());
        match grpc {
            Some(g) => m.insert(addr, g),
            None => m.remove(&addr),
        };
    }

    /// Replaces every backend's gRPC address (a Service's pods and their gRPC port). An
    /// endpoint whose gRPC address changed is made again; requests on the old one finish.
    pub fn set_grpc_addrs(&self, by_endpoint: &[(SocketAddr, SocketAddr)]) {
        *self.grpc_addrs.lock().unwrap_or_else(|p| p.into_inner()) =
            by_endpoint.iter().copied().collect();
        let want = |e: &Endpoint| by_endpoint.iter().find(|(a, _)| *a == e.addr).map(|g| g.1);
        self.write_endpoints(|old| {
            if old.iter().all(|e| e.grpc == want(e)) {
                return (None, ());
            }
            let next = old
                .iter()
                .map(|e| match e.grpc == want(e) {
                    true => e.clone(),
                    false => self.make_endpoint(e.addr),
                })
                .collect();
            (Some(next), ())
        });
    }

    /// Sets the endpoints by address, keeping the live state of those already present.
    /// Returns the endpoints that were removed (their in-flight requests keep running).
    pub fn set_endpoint_addrs(&self, addrs: &[SocketAddr]) -> Vec<Arc<Endpoint>> {
        self.write_endpoints(|old| {
            let next: Vec<Arc<Endpoint>> = addrs
                .iter()
                .map(|a| {
                    old.iter()
                        .find(|e| e.addr == *a)
                        .cloned()
                        .unwrap_or_else(|| self.make_endpoint(*a))
                })
                .collect();
            let removed = old
                .iter()
                .filter(|e| !addrs.contains(&e.addr))
                .cloned()
                .collect();
            (Some(next), removed)
        })
    }

    /// Replaces every endpoint with a fresh one (new pool) in one swap; requests already on the
    /// old ones finish there.
    pub fn replace_endpoints(&self, addrs: &[SocketAddr]) {
        let fresh = addrs.iter().map(|a| self.make_endpoint(*a)).collect();
        self.set_endpoints(fresh);
    }

    /// Time-weighted concurrency of this revision (held plus proxied).
    pub fn stats(&self) -> &ConcurrencyStats {
        &self.stats
    }

    /// The share of [`Revision::stats`] that arrived through an activator.
    pub fn proxied_stats(&self) -> &ConcurrencyStats {
        &self.proxied
    }

    /// Resolves when a request has found the revision without an endpoint.
    pub async fn demand_notified(&self) {
        self.demand.notified().await;
    }

    /// Resolves when the endpoint set has changed (since the last call, at most once).
    pub async fn endpoints_changed(&self) {
        self.endpoints_changed.notified().await;
    }

    /// Sets the most endpoints a scaler may give this revision (0: none will be added).
    pub fn set_ceiling(&self, max: u32) {
        self.ceiling.store(max, Ordering::Relaxed);
    }

    /// True while a scaler may still add endpoints: a queue then is capacity on its way, not
    /// overload.
    pub fn can_grow(&self) -> bool {
        self.desired() < self.ceiling.load(Ordering::Relaxed)
    }

    /// Endpoints the autoscaler currently wants.
    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    /// Records the autoscaler's wish (for metrics).
    pub fn set_desired(&self, n: u32) {
        self.desired.store(n, Ordering::Relaxed);
        if n > 0 && self.is_cold() {
            // A start from zero begins (kept if one is already under way); `clock::now_ms` is
            // 0 only at its own epoch.
            let _ = self.starting_at.compare_exchange(
                0,
                clock::now_ms().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else if n == 0 {
            self.starting_at.store(0, Ordering::Relaxed);
        }
    }

    /// How long the revision has been starting from zero (wanted, no endpoint yet), for the
    /// progress the waiting page and placeholders show; `None` when it is not starting.
    pub fn starting_for(&self) -> Option<Duration> {
        let at = self.starting_at.load(Ordering::Relaxed);
        (at != 0 && self.is_cold())
            .then(|| Duration::from_millis(clock::now_ms().saturating_sub(at)))
    }

    /// True while the revision has no endpoint at all.
    pub fn is_cold(&self) -> bool {
        self.no_endpoints.load(Ordering::Relaxed)
    }

    /// Signals demand without holding a request (used by placeholder answers).
    pub fn poke(&self) {
        self.demand.notify_one();
    }

    /// Marks the start attempt as failed: held requests that have no endpoint to go to get
    /// 503 with `reason`, and new ones fail fast until `retry_in` has passed.
    pub fn fail_start(&self, reason: &str, retry_in: Duration) {
        self.metrics.start_failure();
        let now = Instant::now();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Failure {
            reason: reason.into(),
            at: now,
            until: now + retry_in,
        });
        // This cold start is over; the next one is timed from its own first request.
        *self.cold_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.queue.wake_all();
    }

    /// Clears a start failure (a new attempt has begun or succeeded).
    pub fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The start failure that concerns a request: for a new arrival, one whose backoff is still
    /// running; for a held request, also one that happened while it was held.
    fn failure(&self, held_since: Option<Instant>) -> Option<Failure> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        f.as_ref()
            .filter(|f| now < f.until || held_since.is_some_and(|t| f.at >= t))
            .cloned()
    }

    fn start_failed(&self, f: Failure) -> ProxyError {
        self.metrics.reject(Code::StartFailed);
        ProxyError::StartFailed {
            revision: self.name.to_string(),
            reason: f.reason.to_string(),
            retry_after: f.until.saturating_duration_since(Instant::now()),
        }
    }

    /// Counts a request as active (held or proxied) until the guard drops; `proxied` marks
    /// one that an activator sent, counted in both windows.
    pub fn begin(self: &Arc<Self>, proxied: bool) -> Active {
        self.begin_at(proxied, Instant::now())
    }

    /// [`Revision::begin`] for a request that arrived at `now`, read by the caller already.
    pub fn begin_at(self: &Arc<Self>, proxied: bool, now: Instant) -> Active {
        self.stats.arrive(now);
        // A read first: the flag is rarely set, and a write on every request would bounce the
        // cache line between cores.
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::Relaxed) {
            self.woke.notify_one();
        }
        if proxied {
            self.proxied.arrive(now);
        }
        Active {
            rev: self.clone(),
            proxied,
            counted: true,
        }
    }

    /// A request that is not demand (`no_wake`): in flight on its slot, but not counted in
    /// the statistics the autoscaler reads, and it does not end an idle period.
    pub fn begin_quiet(self: &Arc<Self>) -> Active {
        Active {
            rev: self.clone(),
            proxied: false,
            counted: false,
        }
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set and wakes every held request to try the new set.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.write_endpoints(|_| (Some(endpoints), ()));
    }

    /// Writes the endpoint set as `change` makes it from the current one (`None`: unchanged),
    /// then wakes every held request to try the new set. Writers go one at a time, so two at
    /// once (an endpoint watch and a port watch) neither lose one another's change nor leave
    /// `no_endpoints` telling of one set while the snapshot holds the other.
    fn write_endpoints<R>(
        &self,
        change: impl FnOnce(&[Arc<Endpoint>]) -> (Option<Vec<Arc<Endpoint>>>, R),
    ) -> R {
        let one = self
            .endpoints_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (next, out) = change(&self.endpoints.load());
        let Some(endpoints) = next else {
            return out;
        };
        if endpoints.is_empty() {
            // The last endpoint went while some are wanted (a crash): a start begins again.
            if self.desired.load(Ordering::Relaxed) > 0 {
                let _ = self.starting_at.compare_exchange(
                    0,
                    clock::now_ms().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        } else {
            self.starting_at.store(0, Ordering::Relaxed);
        }
        self.no_endpoints
            .store(endpoints.is_empty(), Ordering::Relaxed);
        self.endpoints.store(Arc::new(endpoints));
        drop(one);
        self.queue.wake_all();
        self.endpoints_changed.notify_one();
        out
    }

    /// Requests held right now.
    pub fn held(&self) -> usize {
        self.queue.held()
    }

    /// How long requests have been held without a break (no held request waited longer).
    pub fn held_for(&self) -> Duration {
        self.queue.standing()
    }

    /// Requests proxied to endpoints right now, including endpoints already taken out of the
    /// set (a scaled-down backend finishing its last requests).
    pub fn in_flight(&self) -> u32 {
        self.leased.load(Ordering::Relaxed)
    }

    /// Takes a slot on some endpoint without waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Lease> {
        let eps = self.endpoints.load();
        let i = balance::pick(&eps, self.container_concurrency.load(Ordering::Relaxed))?;
        self.leased.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            rev: self.clone(),
            ep: eps[i].clone(),
        })
    }

    /// A slot taken at once, as [`Revision::acquire`] takes it when nobody is waiting and one is
    /// free; `None` when the request would have to wait.
    pub fn acquire_now(self: &Arc<Self>) -> Option<Acquired> {
        if !self.queue.is_empty() {
            return None;
        }
        self.try_acquire().map(|lease| Acquired {
            lease,
            waited: None,
            cold: false,
        })
    }

    /// Takes a slot, holding the request in the bounded queue while none is free.
    ///
    /// `body_bytes` is the declared request body size (counted against `max_bytes` while held);
    /// `deadline` is the request's own deadline, if it has one.
    ///
    /// Written as a function returning an `async move` block rather than an `async fn`, which
    /// would keep its arguments twice in the future (as given, and again as locals): this future
    /// is part of what every request holds while it waits.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn acquire(
        self: &Arc<Self>,
        body_bytes: u64,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Acquired, ProxyError>> {
        async move {
            if let Some(now) = self.acquire_now() {
                return Ok(now);
            }
            let cold = self.is_cold();
            if cold {
                // Tell the autoscaler now rather than at its next tick.
                self.demand.notify_one();
                if let Some(f) = self.failure(None) {
                    return Err(self.start_failed(f));
                }
            }
            let settings = self.settings.load();
            if !cold
                && let Some(target) = settings.limits.target_wait
                && !self.can_grow()
                && let Some(predicted) = self.queue.overloaded(target)
            {
                // A standing queue that cannot get more capacity: holding this request would only
                // make it, and everyone behind it, wait past the point of use. Say so now.
                self.metrics.reject(Code::Overloaded);
                return Err(ProxyError::Overloaded {
                    revision: self.name.to_string(),
                    predicted,
                });
            }
            let hold = self
                .queue
                .enter(
                    &settings.limits,
                    body_bytes,
                    cold.then_some(&self.cold_since),
                    &self.metrics.queue_wait,
                )
                .map_err(|why| self.refused(why))?;
            if cold {
                self.cold_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(hold.since);
            }
            let wait_limit = settings.limits.max_wait.map(|w| hold.since + w);
            let shed_after = settings.limits.target_wait.filter(|_| !cold);
            drop(settings);
            let until = clock::earliest(wait_limit, deadline);
            let mut woken = false;
            loop {
                if woken
                    && let Some(target) = shed_after
                    && hold.waited() > target
                    && !self.is_cold()
                    && !self.can_grow()
                {
                    // Held past target_wait by a revision that cannot get more capacity: sustained
                    // overload. Whatever this wake-up brought goes to the next in line, who has
                    // waited less; this request learns now, not at max_wait, that it will not be
                    // served soon (head drop, as CoDel does).
                    self.queue.pass_on();
                    self.metrics.reject(Code::Overloaded);
                    return Err(ProxyError::Overloaded {
                        revision: self.name.to_string(),
                        predicted: self.queue.overloaded(Duration::ZERO).unwrap_or(target),
                    });
                }
                let notified = self.queue.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(lease) = self.try_acquire() {
                    let waited = hold.waited();
                    // Before the hold is dropped: the last one to leave forgets the cold start.
                    self.end_cold_start();
                    return Ok(Acquired {
                        lease,
                        waited: Some(waited),
                        cold,
                    });
                }
                if self.is_cold()
                    && let Some(f) = self.failure(Some(hold.since))
                {
                    return Err(self.start_failed(f));
                }
                woken = true;
                match until {
                    None => notified.await,
                    Some(t) => {
                        if tokio::time::timeout_at(t, notified).await.is_err() {
                            let waited = hold.waited();
                            if deadline.is_some_and(|d| d <= t) && wait_limit.is_none_or(|w| w > t)
                            {
                                // The request's own deadline came first: the caller reports it.
                                return Err(ProxyError::RequestTimeout(waited));
                            }
                            self.metrics.reject(Code::QueueTimeout);
                            return Err(ProxyError::QueueTimeout {
                                revision: self.name.to_string(),
                                waited,
                            });
                        }
                    }
                }
            }
        }
    }

    /// The answer to a request the queue turned away.
    fn refused(&self, why: Refused) -> ProxyError {
        match why {
            Refused::Requests(held) => {
                self.metrics.reject(Code::QueueFull);
                ProxyError::QueueFull {
                    revision: self.name.to_string(),
                    held,
                }
            }
            Refused::Bytes => {
                self.metrics.reject(Code::QueueBytes);
                ProxyError::QueueBytes {
                    revision: self.name.to_string(),
                }
            }
        }
    }

    fn end_cold_start(&self) {
        let began = self
            .cold_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = began {
            let took = t.elapsed();
            self.metrics.cold_start.observe(took.as_secs_f64());
            self.root_metrics
                .cold_starts
                .record(&self.service, &self.name, took);
            tracing::info!(
                service = %self.service, revision = %self.name,
                "cold start: first held request forwarded after {} ms",
                took.as_millis()
            );
        }
    }
}

/// A slot on an endpoint, and how long the request waited for it.
#[derive(Debug)]
pub struct Acquired {
    /// The slot.
    pub lease: Lease,
    /// `Some` if the request was held.
    pub waited: Option<Duration>,
    /// The request was held while the revision had no endpoint.
    pub cold: bool,
}

/// A request counted as active for autoscaling; departs on drop.
#[derive(Debug)]
pub struct Active {
    rev: Arc<Revision>,
    /// Sent by an activator: also counted in the revision's proxied statistics.
    proxied: bool,
    /// Counted in the statistics (not for requests that are not demand), and not ended yet.
    counted: bool,
}

impl Active {
    /// The request ends at `now`, read by the caller already; dropping it then counts nothing
    /// more.
    pub fn end_at(&mut self, now: Instant) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        self.rev.stats.depart(now);
        if self.proxied {
            self.rev.proxied.depart(now);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.counted {
            self.end_at(Instant::now());
        }
    }
}

/// One taken in-flight slot on one endpoint; releases it (and wakes a waiter) on drop.
#[derive(Debug)]
pub struct Lease {
    rev: Arc<Revision>,
    ep: Arc<Endpoint>,
}

impl Lease {
    /// The endpoint this slot is on.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    /// The revision.
    pub fn revision(&self) -> &Arc<Revision> {
        &self.rev
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.ep.release();
        self.rev.leased.fetch_sub(1, Ordering::Relaxed);
        self.rev.queue.slot_freed();
    }
}

/// A revision `s/r` for unit tests: `cc` per endpoint, `n` endpoints on 127.0.0.1:1000 and up,
/// a queue of 10 with no byte or wait bound.
#[cfg(test)]
impl Revision {
    pub(crate) fn for_test(cc: u32, n: usize) -> Arc<Revision> {
        Revision::for_test_with(
            cc,
            n,
            queue::QueueLimits {
                max_requests: 10,
                max_bytes: u64::MAX,
                max_wait: None,
                target_wait: None,
            },
        )
    }

    pub(crate) fn for_test_with(cc: u32, n: usize, limits: queue::QueueLimits) -> Arc<Revision> {
        let m = Arc::new(Metrics::new());
        let rev = Arc::new(Revision::new(
            RevisionSpec {
                service: "s".into(),
                name: "r".into(),
                protocol: Protocol::Http1,
                settings: RevisionSettings {
                    container_concurrency: cc,
                    limits,
                    eject_for: Duration::from_secs(1),
                    pool: crate::http::client::PoolSettings::default(),
                    cold_start: settings::ColdStart::default(),
                    knative: None,
                    grpc_port: None,
                },
            },
            Vec::new(),
            &m,
        ));
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        rev.set_endpoint_addrs(&addrs);
        rev.set_desired(u32::try_from(n).unwrap_or(u32::MAX));
        rev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::PoolSettings;
    use crate::metrics::Metrics;
    use queue::QueueLimits;

    fn rev(cc: u32, n: usize, limits: QueueLimits) -> Arc<Revision> {
        Revision::for_test_with(cc, n, limits)
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_requests: 2,
        max_bytes: 100,
        max_wait: Some(Duration::from_secs(5)),
        target_wait: None,
    };

    #[test]
    fn a_second_writer_of_the_endpoints_starts_from_the_first_ones_set() {
        let r = rev(1, 1, LIMITS);
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut second = None;
        r.write_endpoints(|old| {
            // A second writer (an endpoint watch) comes while the first (a port watch) has
            // read the set and not yet written its own.
            let (started, starting) = std::sync::mpsc::channel();
            let r2 = r.clone();
            second = Some(std::thread::spawn(move || {
                started.send(()).unwrap();
                r2.set_endpoint_addrs(&[addr(1000), addr(1001)])
            }));
            starting.recv().unwrap();
            for _ in 0..100 {
                std::thread::yield_now();
            }
            let next = vec![old[0].clone(), r.make_endpoint(addr(1002))];
            (Some(next), ())
        });
        let removed = second.unwrap().join().unwrap();
        // It read the first writer's set, so it removed what that one added.
        let removed: Vec<_> = removed.iter().map(|e| e.addr).collect();
        assert_eq!(removed, [addr(1002)]);
        let now: Vec<_> = r.endpoints().iter().map(|e| e.addr).collect();
        assert_eq!(now, [addr(1000), addr(1001)]);
        assert!(!r.is_cold());
    }

    #[test]
    fn a_reload_waits_for_one_under_way_and_stores_its_limit_with_its_settings() {
        let r = rev(1, 1, LIMITS);
        let settings = |cc| {
            let mut s = (*r.settings()).clone();
            s.container_concurrency = cc;
            s
        };
        let (first, second) = (settings(5), settings(7));
        // The first reload is under way (the test holds its place); a second must not store
        // anything until it is done.
        let one = r.settings_write.lock().unwrap();
        let r2 = r.clone();
        let (started, starting) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            started.send(()).unwrap();
            r2.update(second);
        });
        starting.recv().unwrap();
        for _ in 0..100 {
            std::thread::yield_now();
        }
        assert_eq!(r.container_concurrency.load(Ordering::Relaxed), 1);
        assert_eq!(r.settings().container_concurrency, 1);
        r.container_concurrency
            .store(first.container_concurrency, Ordering::Relaxed);
        r.settings.store(Arc::new(first));
        drop(one);
        other.join().unwrap();
        // The limit the hot path reads and the settings are the second reload's, both.
        assert_eq!(r.container_concurrency.load(Ordering::Relaxed), 7);
        assert_eq!(r.settings().container_concurrency, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_gets_the_released_slot_and_bounds_hold() {
        let r = rev(1, 1, LIMITS);
        let first = r.acquire(0, None).await.unwrap();
        assert!(first.waited.is_none());
        let r2 = r.clone();
        let waiter = tokio::spawn(async move { r2.acquire(0, None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.held(), 1);
        // Too many bytes for the queue, then too many requests.
        assert!(matches!(
            r.acquire(101, None).await,
            Err(ProxyError::QueueBytes { .. })
        ));
        let r3 = r.clone();
        let second = tokio::spawn(async move { r3.acquire(0, None).await.map(|a| a.waited) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(matches!(
            r.acquire(0, None).await,
            Err(ProxyError::QueueFull { held: 2, .. })
        ));
        drop(first);
        // Released after the 100 ms wait plus the 1 ms spent starting the second waiter; it
        // keeps the slot, so the second waiter finds none.
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.waited, Some(Duration::from_millis(101)));
        // The second waiter times out after max_wait since nobody releases.
        let err = second.await.unwrap().unwrap_err();
        assert!(matches!(err, ProxyError::QueueTimeout { .. }), "{err:?}");
        assert_eq!(r.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_frees_its_place_and_passes_wakeup() {
        let r = rev(1, 1, LIMITS);
        let first = r.acquire(0, None).await.unwrap();
        let r2 = r.clone();
        let gone = tokio::spawn(async move { r2.acquire(0, None).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let r3 = r.clone();
        let stays = tokio::spawn(async move { r3.acquire(0, None).await.map(|a| a.waited) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(r.held(), 2);
        gone.abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(r.held(), 1);
        drop(first);
        assert!(stays.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let r = rev(
            1,
            1,
            QueueLimits {
                max_requests: 10,
                ..LIMITS
            },
        );
        let first = r.acquire(0, None).await.unwrap();
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for name in ["a", "b", "c", "d"] {
            let (r, tx) = (r.clone(), tx.clone());
            tokio::spawn(async move {
                let got = r.acquire(0, None).await.unwrap();
                tx.send(name).unwrap();
                // Hold the slot briefly, as a real request would.
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(got);
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(first);
        let mut served = Vec::new();
        for _ in 0..4 {
            served.push(order.recv().await.unwrap());
        }
        assert_eq!(served, ["a", "b", "c", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_endpoints_wake_waiters() {
        let r = rev(0, 0, LIMITS);
        let r2 = r.clone();
        let w = tokio::spawn(async move { r2.acquire(0, None).await.map(|a| a.waited) });
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = Metrics::new();
        r.set_endpoints(vec![Arc::new(Endpoint::new(
            "127.0.0.1:1".parse().unwrap(),
            None,
            PoolSettings::default(),
            m.endpoint("s", "r", "e"),
        ))]);
        assert_eq!(w.await.unwrap().unwrap(), Some(Duration::from_millis(250)));
    }

    #[tokio::test(start_paused = true)]
    async fn request_deadline_before_max_wait_is_a_request_timeout() {
        let r = rev(1, 1, LIMITS);
        let _first = r.acquire(0, None).await.unwrap();
        let err = r
            .acquire(0, Some(Instant::now() + Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::RequestTimeout(_)), "{err:?}");
    }

    /// A revision of one slot served at 10 requests a second: each holder keeps its slot
    /// 100 ms, then frees it.
    fn serve_for_100ms(r: &Arc<Revision>) -> tokio::task::JoinHandle<Result<(), ProxyError>> {
        let r = r.clone();
        tokio::spawn(async move {
            let got = r.acquire(0, None).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(got);
            Ok(())
        })
    }

    const SHED: QueueLimits = QueueLimits {
        max_requests: 1000,
        max_bytes: u64::MAX,
        max_wait: Some(Duration::from_secs(60)),
        target_wait: Some(Duration::from_secs(1)),
    };

    /// Offers `per_sec` requests a second for `secs` to a revision of one slot held 100 ms per
    /// request (10 a second); returns, per request, whether it was served and how long it took
    /// to get its slot or its refusal.
    async fn offer(r: &Arc<Revision>, per_sec: u64, secs: u64) -> Vec<(bool, Duration)> {
        let mut tasks = Vec::new();
        for _ in 0..per_sec * secs {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let asked = Instant::now();
                match r.acquire(0, None).await {
                    Ok(got) => {
                        let waited = asked.elapsed();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(got);
                        (true, waited)
                    }
                    Err(e) => {
                        assert!(matches!(e, ProxyError::Overloaded { .. }), "{e:?}");
                        (false, asked.elapsed())
                    }
                }
            }));
            tokio::time::sleep(Duration::from_millis(1000 / per_sec)).await;
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_overload_is_shed_and_the_served_wait_little() {
        // Twice what the revision can serve, for 5 s.
        let r = Revision::for_test_with(1, 1, SHED);
        let got = offer(&r, 20, 5).await;
        let served: Vec<_> = got.iter().filter(|g| g.0).map(|g| g.1).collect();
        let refused: Vec<_> = got.iter().filter(|g| !g.0).map(|g| g.1).collect();
        // Served at about capacity, and none waited much past target_wait...
        assert!(served.len() >= 45, "{} served", served.len());
        let longest = served.iter().max().unwrap();
        assert!(*longest <= Duration::from_millis(1100), "{longest:?}");
        // ...while the rest were told within about target_wait: some at once (too long a wait
        // predicted on arrival), the others when their wait passed it.
        assert!(refused.len() >= 40, "{} refused", refused.len());
        let at_once = refused.iter().filter(|d| d.is_zero()).count();
        assert!(
            at_once > 0 && at_once < refused.len(),
            "{at_once} of {} at once",
            refused.len()
        );
        // A waiter woken without a slot goes to the back of the line, so a refusal can come up
        // to about twice target_wait; never near max_wait (60 s here).
        let slowest = refused.iter().max().unwrap();
        assert!(*slowest <= Duration::from_secs(2), "{slowest:?}");
        assert_eq!(r.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_within_target_wait_is_absorbed_whole() {
        // Nine requests at once: under a second of work for one slot at 10 a second.
        let r = Revision::for_test_with(1, 1, SHED);
        let burst: Vec<_> = (0..9).map(|_| serve_for_100ms(&r)).collect();
        for b in burst {
            assert!(b.await.unwrap().is_ok(), "held and served");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_revision_that_can_still_grow_is_not_shed() {
        let r = Revision::for_test_with(1, 1, SHED);
        r.set_ceiling(5);
        let burst: Vec<_> = (0..40).map(|_| serve_for_100ms(&r)).collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Same queue as above, but a scaler may still add endpoints: held, not shed.
        let held = serve_for_100ms(&r);
        for b in burst {
            assert!(b.await.unwrap().is_ok());
        }
        assert!(held.await.unwrap().is_ok());
    }

    #[test]
    fn a_changed_grpc_address_remakes_only_its_endpoint() {
        let r = rev(1, 2, LIMITS);
        let mut settings = (*r.settings()).clone();
        settings.grpc_port = Some(0);
        r.update(settings);
        let before = r.endpoints();
        let a = before[0].addr;
        let g = SocketAddr::from(([127, 0, 0, 1], 2000));
        r.set_grpc_addrs(&[(a, g)]);
        let after = r.endpoints();
        assert_eq!(after[0].grpc, Some(g));
        assert!(!Arc::ptr_eq(&before[0], &after[0]), "made again");
        assert!(Arc::ptr_eq(&before[1], &after[1]), "kept, with its pool");
        assert_eq!(after[1].grpc, None);
        // The same map again changes nothing; an endpoint added later is made with its own.
        r.set_grpc_addrs(&[(a, g)]);
        assert!(Arc::ptr_eq(&after[0], &r.endpoints()[0]));
        let c = SocketAddr::from(([127, 0, 0, 1], 1005));
        r.set_grpc_addrs(&[(a, g), (c, SocketAddr::from(([127, 0, 0, 1], 2005)))]);
        r.set_endpoint_addrs(&[a, c]);
        assert_eq!(r.endpoints()[1].grpc.map(|g| g.port()), Some(2005));
    }
}
