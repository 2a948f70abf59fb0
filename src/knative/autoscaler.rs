//! Demand reported to Knative's autoscaler the way Knative's activator reports it: per
//! revision, the time-weighted average concurrency and the request count of the last period,
//! batched into one protobuf `WireStatMessages` per period and sent as a binary websocket frame
//! to the autoscaler's stats server. The first request for an idle revision is announced at
//! once with concurrency 1 (the autoscaler's scale-from-zero signal), and the next period's
//! figures have that 1 taken off, so the autoscaler never counts it twice.
//!
//! The data path never waits for the autoscaler: periods are closed by their own task, and
//! frames go through a bounded channel to the connection task, which drops them (counted) while
//! the websocket is down and reconnects with backoff. Knative's activator drops them too.

use super::stat::Stat;
use crate::config::AutoscalerLink;
use crate::revision::Revision;
use crate::scale::scaler::Backoff;
use futures_util::{SinkExt, StreamExt};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

/// One revision's figures (`pkg/autoscaler/metrics/stat.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessage {
    /// The revision's namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The revision's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its figures.
    #[prost(message, optional, tag = "3")]
    pub stat: Option<Stat>,
}

/// One frame: every revision reported in a period.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessages {
    /// The revisions.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<WireStatMessage>,
}

/// Frames waiting for the connection; beyond this they are dropped, as they are stale by the
/// time the autoscaler could read them.
const FRAMES_QUEUED: usize = 16;

/// Knative's durable connection pings about every 3.3 s; an autoscaler that has gone away is
/// noticed by the failed write.
const PING_EVERY: Duration = Duration::from_millis(3300);

/// Knative's activator reports every second, and the autoscaler adds what it hears into
/// one-second buckets: another period would scale what it sees.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A connection that has heard nothing (no pong) for this long is taken for dead: a
/// peer that vanished without closing leaves writes succeeding for minutes.
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// Knative's handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the link did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    connected: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    connect_errors: AtomicU64,
    pokes: AtomicU64,
}

impl LinkStats {
    /// True while the websocket is open.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Exports [`LinkStats`] as metrics.
#[derive(Debug)]
pub struct LinkMetrics(pub Arc<LinkStats>);

impl Collector for LinkMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let gauge = ConstGauge::new(0i64);
        let e = encoder.encode_descriptor(
            "rouse_autoscaler_connected",
            "1 while the websocket to Knative's autoscaler is open",
            None,
            gauge.metric_type(),
        )?;
        ConstGauge::new(i64::from(s.connected())).encode(e)?;
        let counter = ConstCounter::new(0u64);
        let mut e = encoder.encode_descriptor(
            "rouse_autoscaler_frames",
            "Stats frames for Knative's autoscaler: sent, or dropped while it could not be reached",
            None,
            counter.metric_type(),
        )?;
        for (result, v) in [("sent", &s.sent), ("dropped", &s.dropped)] {
            ConstCounter::new(v.load(Ordering::Relaxed))
                .encode(e.encode_family(&[("result", result)])?)?;
        }
        let e = encoder.encode_descriptor(
            "rouse_autoscaler_connect_errors",
            "Failed attempts to open the websocket to Knative's autoscaler",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(s.connect_errors.load(Ordering::Relaxed)).encode(e)?;
        let e = encoder.encode_descriptor(
            "rouse_autoscaler_wakeups",
            "First requests for idle revisions, announced to the autoscaler at once",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(s.pokes.load(Ordering::Relaxed)).encode(e)?;
        Ok(())
    }
}

/// A revision's key in the stats: (namespace, name).
type Key = Arc<(String, String)>;

/// The reporting side: closes periods and announces wake-ups.
struct Periods {
    pod: String,
    /// Knative revisions reported on in the last period, with the concurrency already
    /// announced by a wake-up (taken off the next period's figures).
    active: HashMap<Key, f64>,
    /// A task per reported revision of the route table, waiting for its first request after
    /// idleness, by the revision's address: one Knative revision may be several (the one-hop
    /// ingress has one per Ingress rule: public, cluster-local, each tag), reported as one.
    watchers: HashMap<usize, Watcher>,
    wakeups: mpsc::UnboundedSender<Key>,
}

struct Watcher {
    key: Key,
    rev: Arc<Revision>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Periods {
    /// Brings the watchers in step with the revisions reported now.
    fn track(&mut self, revisions: Vec<Arc<Revision>>) {
        let mut next = HashMap::with_capacity(revisions.len());
        for rev in revisions {
            let Some(key) = rev.settings().knative.clone() else {
                continue;
            };
            let id = Arc::as_ptr(&rev) as usize;
            if let Some(w) = self.watchers.remove(&id)
                && w.key == key
            {
                next.insert(id, w);
                continue;
            }
            // A revision is idle until a request says otherwise (a request that came before
            // this watcher is announced as soon as it starts).
            let (tx, r, k) = (self.wakeups.clone(), rev.clone(), key.clone());
            let task = tokio::spawn(async move {
                loop {
                    r.woken().await;
                    if tx.send(k.clone()).is_err() {
                        return;
                    }
                }
            });
            next.insert(id, Watcher { key, rev, task });
        }
        // Those left are gone from the table; dropping them stops their tasks.
        self.watchers = next;
        let keys: std::collections::HashSet<&Key> =
            self.watchers.values().map(|w| &w.key).collect();
        self.active.retain(|k, _| keys.contains(k));
    }

    /// Closes the period at `now`: a message per Knative revision that was active in it.
    fn close(&mut self, now: Instant) -> Vec<WireStatMessage> {
        // Every copy of a revision is marked idle before its window is taken, so a request
        // that arrives in between is announced rather than lost; copies found busy are
        // marked busy again below.
        let mut sums: HashMap<&Key, (f64, u64, Vec<&Arc<Revision>>)> = HashMap::new();
        for w in self.watchers.values() {
            w.rev.mark_idle();
            let win = w.rev.stats().take(now);
            let e = sums.entry(&w.key).or_default();
            e.0 += win.avg_concurrency;
            e.1 += win.arrivals;
            e.2.push(&w.rev);
        }
        let mut out = Vec::new();
        for (key, (avg, arrivals, revs)) in sums {
            let announced = self.active.get(key).copied();
            if announced.is_none() && arrivals == 0 && avg == 0.0 {
                continue;
            }
            let first = announced.unwrap_or(0.0);
            out.push(message(
                key,
                &self.pod,
                (avg - first).max(0.0),
                arrivals as f64 - first,
            ));
            if avg == 0.0 {
                // Idle for a whole period: the next request is announced at once.
                self.active.remove(key);
            } else {
                self.active.insert(key.clone(), 0.0);
                for r in revs {
                    r.mark_busy();
                }
            }
        }
        out
    }

    /// The announcement of a first request after idleness, unless the period already counts
    /// the revision.
    fn woken(&mut self, key: Key) -> Option<WireStatMessage> {
        if self.active.contains_key(&key) {
            return None;
        }
        self.active.insert(key.clone(), 1.0);
        Some(message(&key, &self.pod, 1.0, 1.0))
    }
}

fn message(key: &Key, pod: &str, concurrency: f64, count: f64) -> WireStatMessage {
    WireStatMessage {
        namespace: key.0.clone(),
        name: key.1.clone(),
        stat: Some(Stat {
            pod_name: pod.to_owned(),
            average_concurrent_requests: concurrency,
            request_count: count,
            ..Stat::default()
        }),
    }
}

/// The name stats carry as their pod: the configured one, else `POD_NAME`, else the host's.
pub fn pod_name(link: &AutoscalerLink) -> String {
    link.pod_name
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "rouse".to_owned())
        })
}

/// Reports the revisions `revisions` returns (those with a Knative key), read again each
/// time `changed` changes, until `stop`.
pub async fn run(
    link: AutoscalerLink,
    revisions: impl Fn() -> Vec<Arc<Revision>> + Send + 'static,
    mut changed: watch::Receiver<u64>,
    stats: Arc<LinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let (frames, rx) = mpsc::channel(FRAMES_QUEUED);
    let conn = tokio::spawn(connection(link.url.clone(), rx, stats.clone()));
    let (wakeups, mut woken) = mpsc::unbounded_channel();
    let mut p = Periods {
        pod: pod_name(&link),
        active: HashMap::new(),
        watchers: HashMap::new(),
        wakeups,
    };
    p.track(revisions());
    let every = REPORT_EVERY;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send = |msgs: Vec<WireStatMessage>| {
        if msgs.is_empty() {
            return;
        }
        let frame = WireStatMessages { messages: msgs }.encode_to_vec();
        if frames.try_send(frame).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            at = tick.tick() => {
                p.track(revisions());
                send(p.close(at.max(Instant::now())));
            }
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                p.track(revisions());
            }
            Some(key) = woken.recv() => {
                if let Some(m) = p.woken(key) {
                    stats.pokes.fetch_add(1, Ordering::Relaxed);
                    send(vec![m]);
                }
            }
            _ = stop.changed() => break,
        }
    }
    p.watchers.clear();
    conn.abort();
}

/// Keeps the websocket open and writes the frames to it; frames that come while it is down
/// are dropped.
async fn connection(url: String, mut frames: mpsc::Receiver<Vec<u8>>, stats: Arc<LinkStats>) {
    let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let opened =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::connect_async(&url)).await;
        let ws = match opened {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                connect_failed(&stats, &url, &e.to_string());
                if !wait_dropping(&mut frames, backoff.fail(), &stats).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                connect_failed(&stats, &url, "no answer within 3s");
                if !wait_dropping(&mut frames, backoff.fail(), &stats).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        stats.connected.store(true, Ordering::Relaxed);
        info!(%url, "connected to Knative's autoscaler");
        let (mut sink, mut incoming) = ws.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut heard = Instant::now();
        let why = loop {
            tokio::select! {
                f = frames.recv() => {
                    let Some(f) = f else { return };
                    if let Err(e) = sink.send(Message::Binary(f.into())).await {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        break e.to_string();
                    }
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                m = incoming.next() => match m {
                    // Pings are answered by the library as they are read.
                    Some(Ok(Message::Close(_))) | None => break "closed by the autoscaler".to_owned(),
                    Some(Ok(_)) => heard = Instant::now(),
                    Some(Err(e)) => break e.to_string(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT {
                        break format!("no answer to pings for {SILENCE_LIMIT:?}");
                    }
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        break e.to_string();
                    }
                }
            }
        };
        stats.connected.store(false, Ordering::Relaxed);
        warn!(%url, "lost the websocket to Knative's autoscaler ({why}); stats are dropped until it is back");
    }
}

fn connect_failed(stats: &LinkStats, url: &str, why: &str) {
    let n = stats.connect_errors.fetch_add(1, Ordering::Relaxed);
    // One line per outage, then quiet: the counter says how long it lasts.
    if n == 0 || stats.sent.load(Ordering::Relaxed) > 0 && n.is_power_of_two() {
        warn!(%url, "cannot reach Knative's autoscaler ({why}); revisions at zero are not woken until it is reachable, retrying");
    } else {
        debug!(%url, "cannot reach Knative's autoscaler ({why})");
    }
}

/// Waits `d`, dropping the frames that come meanwhile; false once the sender is gone.
async fn wait_dropping(
    frames: &mut mpsc::Receiver<Vec<u8>>,
    d: Duration,
    stats: &LinkStats,
) -> bool {
    let until = Instant::now() + d;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return true,
            f = frames.recv() => match f {
                Some(_) => { stats.dropped.fetch_add(1, Ordering::Relaxed); }
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revision;

    fn keyed(rev: &Arc<Revision>, ns: &str, name: &str) {
        let mut s = (*rev.settings()).clone();
        s.knative = Some(Arc::new((ns.to_owned(), name.to_owned())));
        rev.update(s);
    }

    fn periods() -> (Periods, mpsc::UnboundedReceiver<Key>) {
        let (wakeups, rx) = mpsc::unbounded_channel();
        (
            Periods {
                pod: "activator-1".to_owned(),
                active: HashMap::new(),
                watchers: HashMap::new(),
                wakeups,
            },
            rx,
        )
    }

    fn figures(m: &WireStatMessage) -> (String, f64, f64) {
        let s = m.stat.as_ref().unwrap();
        assert_eq!(s.pod_name, "activator-1");
        (
            format!("{}/{}", m.namespace, m.name),
            s.average_concurrent_requests,
            s.request_count,
        )
    }

    #[test]
    fn wire_messages_encode_as_the_autoscaler_decodes_them() {
        // Field numbers and types of stat.proto: namespace=1, name=2, stat=3 (pod_name=1,
        // average_concurrent_requests=2 as a double, request_count=4 as a double).
        let frame = WireStatMessages {
            messages: vec![message(
                &Arc::new(("ns".to_owned(), "rev".to_owned())),
                "p",
                1.0,
                1.0,
            )],
        }
        .encode_to_vec();
        let one = 1.0f64.to_le_bytes();
        let mut stat = vec![0x0a, 1, b'p', 0x11];
        stat.extend_from_slice(&one);
        stat.push(0x21);
        stat.extend_from_slice(&one);
        let mut msg = vec![0x0a, 2, b'n', b's', 0x12, 3, b'r', b'e', b'v', 0x1a];
        msg.push(stat.len() as u8);
        msg.extend_from_slice(&stat);
        let mut want = vec![0x0a, msg.len() as u8];
        want.extend_from_slice(&msg);
        assert_eq!(frame, want);
        assert_eq!(
            WireStatMessages::decode(frame.as_slice()).unwrap(),
            WireStatMessages {
                messages: vec![message(
                    &Arc::new(("ns".to_owned(), "rev".to_owned())),
                    "p",
                    1.0,
                    1.0
                )]
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_after_idleness_is_announced_once_and_taken_off_the_period() {
        let rev = Revision::for_test(0, 1);
        keyed(&rev, "apps", "hello-00001");
        let other = Revision::for_test(0, 1);
        let (mut p, mut woken) = periods();
        p.track(vec![rev.clone(), other.clone()]);
        assert_eq!(
            p.watchers.len(),
            1,
            "a revision without a Knative key is not reported"
        );

        // Idle: a period closes with nothing to say.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(p.close(Instant::now()).is_empty());

        // The first request wakes the revision: announced with concurrency 1 at once.
        let a = rev.begin(false);
        let key = tokio::time::timeout(Duration::from_secs(1), woken.recv())
            .await
            .expect("the first request is signalled without waiting for the period")
            .unwrap();
        let m = p.woken(key.clone()).expect("announced");
        assert_eq!(figures(&m), ("apps/hello-00001".to_owned(), 1.0, 1.0));
        // A second request in the same period is not another announcement.
        let b = rev.begin(false);
        assert!(p.woken(key).is_none());

        // Half a period later one request ends; the period's figures lose the announced 1.
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(b);
        tokio::time::advance(Duration::from_millis(500)).await;
        let msgs = p.close(Instant::now());
        assert_eq!(msgs.len(), 1);
        let (k, conc, count) = figures(&msgs[0]);
        assert_eq!(k, "apps/hello-00001");
        // Area: 1 request for the whole second and 1 for half of it = 1.5; minus 1.
        assert!((conc - 0.5).abs() < 1e-9, "{conc}");
        assert_eq!(count, 1.0, "two arrivals minus the announced one");

        // Still busy: the next period reports in full.
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, conc, count) = figures(&p.close(Instant::now())[0]);
        assert!((conc - 1.0).abs() < 1e-9, "{conc}");
        assert_eq!(count, 0.0);

        // The request ends at once: a last period with 0, then the revision is idle again
        // and its next request is announced again.
        drop(a);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (_, conc, _) = figures(&p.close(Instant::now())[0]);
        assert_eq!(conc, 0.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            p.close(Instant::now()).is_empty(),
            "idle revisions are not reported"
        );
        let _c = rev.begin(false);
        let key = woken.recv().await.unwrap();
        assert!(p.woken(key).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn copies_of_one_knative_revision_are_reported_as_one_and_each_wakes_it() {
        // The one-hop ingress makes a revision per Ingress rule for one Knative revision.
        let public = Revision::for_test(0, 1);
        let local = Revision::for_test(0, 1);
        keyed(&public, "apps", "hello-00001");
        keyed(&local, "apps", "hello-00001");
        let (mut p, mut woken) = periods();
        p.track(vec![public.clone(), local.clone()]);
        p.track(vec![public.clone(), local.clone()]);
        assert_eq!(p.watchers.len(), 2, "tracked again, not duplicated");

        let a = public.begin(false);
        let key = woken.recv().await.unwrap();
        assert!(p.woken(key).is_some());
        let b = local.begin(false);
        // The other copy was idle too: its first request is signalled, but the revision is
        // already counted in this period.
        let key = woken.recv().await.unwrap();
        assert!(p.woken(key).is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let msgs = p.close(Instant::now());
        assert_eq!(msgs.len(), 1, "one message for both copies");
        let (k, conc, count) = figures(&msgs[0]);
        assert_eq!(k, "apps/hello-00001");
        assert!(
            (conc - 1.0).abs() < 1e-9,
            "2 active minus the announced 1: {conc}"
        );
        assert_eq!(count, 1.0);
        drop((a, b));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(figures(&p.close(Instant::now())[0]).1, 0.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(p.close(Instant::now()).is_empty());
        // Idle again: a request on the cluster-local copy alone wakes it.
        let _c = local.begin(false);
        let key = tokio::time::timeout(Duration::from_secs(1), woken.recv())
            .await
            .expect("the other copy's first request is announced too")
            .unwrap();
        assert!(p.woken(key).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn revisions_that_leave_stop_being_reported() {
        let rev = Revision::for_test(0, 1);
        keyed(&rev, "apps", "gone");
        let (mut p, _woken) = periods();
        p.track(vec![rev.clone()]);
        let _a = rev.begin(false);
        p.track(Vec::new());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(p.close(Instant::now()).is_empty());
        assert!(p.watchers.is_empty());
    }
}
