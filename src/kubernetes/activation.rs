//! Which of a Knative revision's pods an activating proxy sends requests to, decided the way
//! Knative's activator decides it, minus its delays:
//!
//! - A pod the EndpointSlices list as not ready (and not terminating) is probed directly
//!   (`GET /healthz`, `K-Network-Probe: queue`; ready is 200 with the body `queue`) and used
//!   the moment it answers. Knative's activator probes every 200 ms; here the first probe goes
//!   out when the pod is listed and the next ones every 25 ms, backing off to 200 ms, so a
//!   cold start does not wait a probe period, nor the kubelet's readiness period and the slice
//!   update after it.
//! - With `container_concurrency` set and several activators in front of the revision (the
//!   ready addresses of `shared_by`, Knative's public Service of the revision in proxy
//!   mode), each replica takes its own slice of the pods, as Knative's `assignSlice` cuts it
//!   (addresses compared as text, as Knative sorts them), so a mixed fleet of rouse and
//!   Knative activators never sends one pod more than its concurrency. A replica not listed
//!   there (the revision is in serve mode, or this replica is not in its subset) uses every
//!   pod.

use super::endpoints::{self, Sink, Target};
use super::health::Health;
use super::peers::AddrSink;
use crate::revision::Revision;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use kube::Client;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

/// One probe's time limit (Knative's `PROBE_TIMEOUT`).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// The pause after a pod's first failed probe, growing by half each time up to
/// [`LAST_PAUSE`] (Knative's fixed `PROBE_FREQUENCY`).
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const LAST_PAUSE: Duration = Duration::from_millis(200);

/// What the EndpointSlices list: (ready, not ready).
type Listed = (Vec<SocketAddr>, Vec<SocketAddr>);

/// A revision's pods, fed by the watch of its private Service, and the task that probes the
/// not-ready ones and cuts this replica's share.
#[derive(Debug)]
pub struct PodSink {
    rev: Arc<Revision>,
    listed: watch::Sender<Listed>,
    task: JoinHandle<()>,
}

impl Drop for PodSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How pods are shared with the other activators of a revision.
#[derive(Debug, Clone)]
pub struct Share {
    /// The Service listing them.
    pub target: Target,
    /// This replica's address among them.
    pub own: IpAddr,
}

impl PodSink {
    /// Starts the probing task for `rev`; with `share`, also a watch of the activators listed
    /// by its Service.
    pub fn start(
        rev: Arc<Revision>,
        probe_not_ready: bool,
        share: Option<(Client, Share, Arc<Health>)>,
    ) -> PodSink {
        let (listed, rx) = watch::channel((Vec::new(), Vec::new()));
        let task = tokio::spawn(run(rev.clone(), rx, probe_not_ready, share));
        PodSink { rev, listed, task }
    }
}

impl Sink for PodSink {
    fn name(&self) -> String {
        format!("revision {} of service {}", self.rev.name, self.rev.service)
    }

    fn ready(&mut self, addrs: &[SocketAddr]) {
        self.pods(addrs, &[], true);
    }

    fn pods(&mut self, ready: &[SocketAddr], not_ready: &[SocketAddr], _ready_changed: bool) {
        self.listed
            .send_replace((ready.to_vec(), not_ready.to_vec()));
        if !ready.is_empty() {
            self.rev.clear_failure();
        }
    }

    fn grpc(&mut self, by_endpoint: &[(SocketAddr, SocketAddr)]) {
        self.rev.set_grpc_addrs(by_endpoint);
    }

    fn missing(&mut self, _why: &str) {
        // Knative creates a revision's private Service a moment after the Revision: requests
        // wait for it (within their timeout) instead of failing, as with Knative's activator.
        // The watch says what is missing on /readyz meanwhile.
        self.listed.send_replace((Vec::new(), Vec::new()));
    }
}

async fn run(
    rev: Arc<Revision>,
    mut listed: watch::Receiver<Listed>,
    probe_not_ready: bool,
    share: Option<(Client, Share, Arc<Health>)>,
) {
    let (peers_tx, mut peers) = watch::channel(Vec::new());
    let own = share.as_ref().map(|(_, s, _)| s.own);
    // Stopped with this task (its sender is dropped when the task is aborted).
    let (_stop_peers, stop_rx) = watch::channel(false);
    let _peers_task = share.map(|(client, s, health)| {
        AbortOnDropHandle::new(tokio::spawn(endpoints::follow(
            client,
            s.target,
            AddrSink(peers_tx),
            health,
            watch::channel(false).0,
            stop_rx,
        )))
    });
    // Not-ready pods that answered their probe.
    let mut answered: BTreeSet<SocketAddr> = BTreeSet::new();
    // Stopped with this task: a JoinSet aborts what it holds when dropped.
    let mut probes: JoinSet<SocketAddr> = JoinSet::new();
    let mut probing: HashMap<SocketAddr, tokio::task::AbortHandle> = HashMap::new();
    let mut last: Option<Vec<SocketAddr>> = None;
    // This replica's place among the activators, once known (Knative's keeps its last one
    // while it is not listed).
    let mut place: Option<(usize, usize)> = None;
    loop {
        let (ready, not_ready) = listed.borrow_and_update().clone();
        if probe_not_ready {
            answered.retain(|a| not_ready.contains(a));
            probing.retain(|a, h| {
                let keep = not_ready.contains(a);
                if !keep {
                    h.abort();
                }
                keep
            });
            for a in &not_ready {
                if !answered.contains(a) && !probing.contains_key(a) {
                    let h = probes.spawn(probe_until_up(*a));
                    probing.insert(*a, h);
                }
            }
        }
        let mut usable: Vec<SocketAddr> = ready;
        usable.extend(answered.iter().copied());
        let mine = match own {
            Some(own) => {
                let peers: Vec<IpAddr> = peers
                    .borrow_and_update()
                    .iter()
                    .map(SocketAddr::ip)
                    .collect();
                place = locate(&peers, own).or(place);
                assign(usable, place, rev.settings().container_concurrency)
            }
            None => usable,
        };
        if last.as_ref() != Some(&mine) {
            if mine.len() != last.as_ref().map_or(0, Vec::len) {
                info!(
                    endpoints = mine.len(),
                    probed = answered.len(),
                    "revision {} of service {}: endpoints in use",
                    rev.name,
                    rev.service
                );
            }
            rev.set_endpoint_addrs(&mine);
            last = Some(mine);
        }
        tokio::select! {
            r = listed.changed() => if r.is_err() { return },
            r = peers.changed(), if own.is_some() => if r.is_err() { return },
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let Ok(a) = done
                    && probing.remove(&a).is_some()
                {
                    debug!(pod = %a, "answered its probe before the kubelet marked it ready");
                    answered.insert(a);
                }
            }
        }
    }
}

/// Probes `addr` until it answers as ready; returns it then.
async fn probe_until_up(addr: SocketAddr) -> SocketAddr {
    let mut pause = FIRST_PAUSE;
    loop {
        let began = Instant::now();
        if matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe(addr)).await,
            Ok(Ok(true))
        ) {
            return addr;
        }
        tokio::time::sleep_until(began + pause).await;
        pause = (pause + pause / 2).min(LAST_PAUSE);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Knative's activator probe of one pod's queue-proxy: true when it answers 200 `queue`.
pub async fn probe(addr: SocketAddr) -> Result<bool, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let _conn = AbortOnDropHandle::new(tokio::spawn(conn));
    let req = Request::get("/healthz")
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "Knative-Activator-Probe")
        .header("k-network-probe", "queue")
        .body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await?;
    if res.status() != StatusCode::OK {
        return Ok(false);
    }
    let body = Limited::new(res.into_body(), 64)
        .collect()
        .await?
        .to_bytes();
    Ok(body.as_ref() == b"queue")
}

/// This replica's place among `peers`: (its index with the addresses sorted as text, as
/// Knative sorts them; how many there are), or `None` when it is not listed.
pub fn locate(peers: &[IpAddr], own: IpAddr) -> Option<(usize, usize)> {
    let mut names: Vec<String> = peers.iter().map(ToString::to_string).collect();
    names.sort();
    names.dedup();
    let me = names.binary_search(&own.to_string()).ok()?;
    Some((me, names.len()))
}

/// This replica's share of `pods` from its `place` (Knative's `assignSlice`): every pod when
/// the revision has no concurrency limit, when the place is unknown, or when it is the only
/// replica; otherwise a contiguous slice of the pods sorted as text, plus one of the remainder
/// for the first replicas, or a single pod when there are more replicas than pods.
pub fn assign(
    mut pods: Vec<SocketAddr>,
    place: Option<(usize, usize)>,
    container_concurrency: u32,
) -> Vec<SocketAddr> {
    if container_concurrency == 0 || pods.len() <= 1 {
        return pods;
    }
    let Some((me, n)) = place else {
        return pods;
    };
    if n == 1 {
        return pods;
    }
    pods.sort_by_cached_key(ToString::to_string);
    let total = pods.len();
    if n > total {
        return vec![pods[me % total]];
    }
    let size = total / n;
    let mut mine = pods[me * size..me * size + size].to_vec();
    let remnants = total % n;
    if me < remnants {
        mine.push(pods[total - remnants + me]);
    }
    mine
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers every request with `status` and `body`, and counts them.
    async fn answering(status: u16, body: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let res = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(res.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_pod_not_ready_yet_is_used_once_its_queue_proxy_answers_and_no_sooner() {
        let queue = answering(200, "queue").await;
        let other_app = answering(200, "hello").await;
        let starting = answering(503, "not yet").await;
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let rev = Revision::for_test(1, 0);
        let mut sink = PodSink::start(rev.clone(), true, None);
        sink.pods(&[], &[queue, other_app, starting, closed], true);
        tokio::time::timeout(Duration::from_secs(5), async {
            while rev.endpoints().is_empty() {
                rev.endpoints_changed().await;
            }
        })
        .await
        .expect("the pod that answered its probe is used");
        // A few more probe rounds: the others never qualify.
        tokio::time::sleep(LAST_PAUSE * 3).await;
        let used: Vec<SocketAddr> = rev.endpoints().iter().map(|e| e.addr).collect();
        assert_eq!(used, [queue]);

        // Listed ready: used without a probe; gone from the slices: dropped.
        sink.pods(&[closed], &[], true);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let used: Vec<SocketAddr> = rev.endpoints().iter().map(|e| e.addr).collect();
                if used == [closed] {
                    return;
                }
                rev.endpoints_changed().await;
            }
        })
        .await
        .expect("the set follows the slices");

        // Without probing, not-ready pods are never used.
        let rev = Revision::for_test(1, 0);
        let mut sink = PodSink::start(rev.clone(), false, None);
        sink.pods(&[], &[queue], true);
        tokio::time::sleep(LAST_PAUSE * 2).await;
        assert!(rev.endpoints().is_empty());
    }

    fn pods(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8012)))
            .collect()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 1, 0, last])
    }

    #[test]
    fn each_activator_takes_a_disjoint_slice_covering_every_pod() {
        // 20 pods, 3 activators: slices of 6, and the 2 left over go to the first two.
        let peers = [ip(1), ip(2), ip(3)];
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for me in peers {
            let mine = assign(pods(20), locate(&peers, me), 1);
            sizes.push(mine.len());
            all.extend(mine);
        }
        assert_eq!(sizes, [7, 7, 6]);
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "a pod went to two activators");
        assert_eq!(all, pods(20));
    }

    #[test]
    fn addresses_are_ordered_as_text_as_knative_orders_them() {
        // As text 10.1.0.10 < 10.1.0.9, so the activator at .10 is index 0 and takes the
        // first pod in text order (10.0.0.1:8012), the one at .9 the next (10.0.0.2:8012).
        let peers = [ip(9), ip(10)];
        assert_eq!(locate(&peers, ip(10)), Some((0, 2)));
        assert_eq!(
            assign(pods(2), locate(&peers, ip(10)), 2),
            vec![SocketAddr::from(([10, 0, 0, 1], 8012))]
        );
        assert_eq!(
            assign(pods(2), locate(&peers, ip(9)), 2),
            vec![SocketAddr::from(([10, 0, 0, 2], 8012))]
        );
        // Pods as text: 10.0.0.10 sorts before 10.0.0.2.
        let p = vec![
            SocketAddr::from(([10, 0, 0, 2], 8012)),
            SocketAddr::from(([10, 0, 0, 10], 8012)),
        ];
        assert_eq!(
            assign(p, locate(&peers, ip(10)), 2),
            vec![SocketAddr::from(([10, 0, 0, 10], 8012))]
        );
    }

    #[test]
    fn more_activators_than_pods_share_round_robin() {
        let peers = [ip(1), ip(2), ip(3)];
        assert_eq!(assign(pods(2), locate(&peers, ip(3)), 1), vec![pods(2)[0]]);
        assert_eq!(assign(pods(2), locate(&peers, ip(2)), 1), vec![pods(2)[1]]);
    }

    #[test]
    fn every_pod_when_unlimited_alone_or_not_listed() {
        let peers = [ip(1), ip(2)];
        assert_eq!(assign(pods(4), locate(&peers, ip(1)), 0), pods(4), "cc 0");
        assert_eq!(locate(&peers, ip(7)), None);
        assert_eq!(assign(pods(4), None, 1), pods(4), "place unknown");
        assert_eq!(
            assign(pods(4), locate(&[ip(1)], ip(1)), 1),
            pods(4),
            "alone"
        );
        assert_eq!(
            assign(pods(1), locate(&peers, ip(2)), 1),
            pods(1),
            "one pod"
        );
    }
}
