//! The demand of every rouse replica, for the one that decides.
//!
//! Each replica answers `GET /kubernetes/demand` on its admin port with running totals per
//! revision: request-seconds (the area under its active-requests curve), arrivals, and the
//! requests active now. Totals are counters, so nothing on the replica is reset by being read:
//! the leader keeps the previous reading of each peer, and the difference over the time
//! between two readings is that peer's average concurrency over exactly that interval. Once a
//! second, the leader reads every peer it finds in the EndpointSlices of `kubernetes.peers`
//! and adds their demand to its own in the autoscaler, so a revision busy only through other
//! replicas is neither scaled down nor to zero.
//!
//! A peer that does not answer counts as no demand and is named on `/readyz`; requests it
//! holds still start pods on their own (any replica may scale from zero).

use super::endpoints::Sink;
use super::health::Health;
use crate::revision::Revision;
use crate::scale::scaler::PeerLoad;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// How often the leader reads its peers.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for one peer's answer.
const TIMEOUT: Duration = Duration::from_millis(500);

/// The path every replica answers on its admin port.
pub const PATH: &str = "/kubernetes/demand";

/// The peers' summed demand per (service, revision), as of the last reading.
#[derive(Debug, Default)]
pub struct PeerTable(Mutex<HashMap<(String, String), PeerLoad>>);

impl PeerTable {
    /// The other replicas' demand for a revision.
    pub fn get(&self, service: &str, revision: &str) -> PeerLoad {
        self.lock()
            .get(&(service.to_owned(), revision.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PeerLoad>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This replica's answer: `identity <name>`, then `<service> <revision> <request-seconds>
/// <arrivals> <active>` per revision.
pub fn demand_text(identity: &str, revisions: &[Arc<Revision>]) -> String {
    let now = Instant::now();
    let mut out = format!("identity {identity}\n");
    for r in revisions {
        let t = r.stats().totals(now);
        let _ = writeln!(
            out,
            "{} {} {:.6} {} {}",
            r.service, r.name, t.area, t.arrivals, t.active
        );
    }
    out
}

/// One line of a peer's answer.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    key: (String, String),
    area: f64,
    arrivals: u64,
    active: u32,
}

/// Parses an answer: its identity and lines (malformed lines are skipped).
fn parse(text: &str) -> Option<(String, Vec<Line>)> {
    let mut lines = text.lines();
    let identity = lines.next()?.strip_prefix("identity ")?.to_owned();
    let parsed = lines
        .filter_map(|l| {
            let mut f = l.split(' ');
            let key = (f.next()?.to_owned(), f.next()?.to_owned());
            Some(Line {
                key,
                area: f.next()?.parse().ok()?,
                arrivals: f.next()?.parse().ok()?,
                active: f.next()?.parse().ok()?,
            })
        })
        .collect();
    Some((identity, parsed))
}

/// The peers' addresses, from the EndpointSlices of `kubernetes.peers`.
#[derive(Debug)]
pub struct AddrSink(pub watch::Sender<Vec<SocketAddr>>);

impl Sink for AddrSink {
    fn name(&self) -> String {
        "rouse's peers".to_owned()
    }

    fn ready(&mut self, addrs: &[SocketAddr]) {
        self.0.send_replace(addrs.to_vec());
    }

    fn missing(&mut self, _why: &str) {
        self.0.send_replace(Vec::new());
    }
}

/// Readings kept between rounds: per (peer, service, revision), the totals and when.
type Previous = HashMap<(String, String, String), (f64, u64, Instant)>;

/// While this replica leads, reads every peer each [`INTERVAL`] into `table`.
pub async fn run(
    identity: String,
    peers: watch::Receiver<Vec<SocketAddr>>,
    mut leader: watch::Receiver<bool>,
    table: Arc<PeerTable>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut previous: Previous = HashMap::new();
    // Peers named on /readyz as unreadable, so a peer that is gone stops being named.
    let mut reported: std::collections::HashSet<SocketAddr> = std::collections::HashSet::new();
    loop {
        if *leader.borrow_and_update() {
            let addrs = peers.borrow().clone();
            reported.retain(|a| {
                let keep = addrs.contains(a);
                if !keep {
                    health.clear(&format!("peer {a}"));
                }
                keep
            });
            let answers = futures_util::future::join_all(addrs.iter().map(|a| fetch(*a))).await;
            let now = Instant::now();
            let mut sums: HashMap<(String, String), PeerLoad> = HashMap::new();
            let mut seen = std::collections::HashSet::new();
            for (addr, answer) in addrs.iter().zip(answers) {
                let what = format!("peer {addr}");
                let Some((id, lines)) = answer.as_deref().ok().and_then(parse) else {
                    let why = answer
                        .err()
                        .unwrap_or_else(|| "an answer that is not demand".into());
                    health.report(
                        &what,
                        &format!("cannot read its demand ({why}); counting none"),
                    );
                    reported.insert(*addr);
                    continue;
                };
                health.clear(&what);
                reported.remove(addr);
                if id == identity {
                    continue;
                }
                for l in lines {
                    let k = (id.clone(), l.key.0.clone(), l.key.1.clone());
                    let avg = match previous.get(&k) {
                        Some((area, _, at)) if now > *at => {
                            ((l.area - area) / (now - *at).as_secs_f64()).max(0.0)
                        }
                        // First reading: what is active now is the best guess.
                        _ => f64::from(l.active),
                    };
                    let s = sums.entry(l.key.clone()).or_default();
                    s.avg += avg;
                    s.active += l.active;
                    previous.insert(k.clone(), (l.area, l.arrivals, now));
                    seen.insert(k);
                }
            }
            previous.retain(|k, _| seen.contains(k));
            debug!(peers = addrs.len(), ?sums, "peer demand");
            *table.lock() = sums;
        } else {
            previous.clear();
            table.lock().clear();
            for a in reported.drain() {
                health.clear(&format!("peer {a}"));
            }
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// `GET /kubernetes/demand` from one peer's admin port.
async fn fetch(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(PATH)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let body = Limited::new(res.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_parses_and_bad_lines_are_skipped() {
        let (id, lines) =
            parse("identity rouse-a\nhello v1 2.500000 7 1\nbroken\nhello v2 x 1 1\n").unwrap();
        assert_eq!(id, "rouse-a");
        assert_eq!(
            lines,
            [Line {
                key: ("hello".into(), "v1".into()),
                area: 2.5,
                arrivals: 7,
                active: 1
            }]
        );
        assert!(parse("not an answer").is_none());
    }
}
