//! A revision's endpoints from the EndpointSlices of one Service, by watch: each change to a
//! slice recomputes the ready addresses and hands them to the revision at once, so a pod that
//! turns ready wakes held requests in the same moment the event arrives (no probe period).
//!
//! Only endpoints whose `ready` condition holds get new requests. Not-ready and terminating
//! ones leave the set; requests already on them run to completion, because each request holds
//! its endpoint until its response ends. Dual-stack Services list every pod twice (an IPv4 and
//! an IPv6 slice); a pod is one endpoint (its `containerConcurrency` is per pod), reached over
//! the first family listed for it.

use super::health::{Health, describe_watch};
use crate::config::PortRef;
use crate::revision::Revision;
use crate::scale::scaler::Backoff;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Which Service and port a revision takes its endpoints from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The port, or `None` when the slices list exactly one.
    pub port: Option<PortRef>,
    /// The pods' gRPC port, when they serve gRPC on a port of their own
    /// (`kubernetes.grpc_port`).
    pub grpc_port: Option<PortRef>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)
    }
}

/// What the slices of a Service say right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ready {
    /// The ready endpoints, one per pod, in a stable order.
    pub addrs: Vec<SocketAddr>,
    /// Endpoints listed but not ready, and not terminating: pods on their way up.
    pub not_ready: Vec<SocketAddr>,
    /// Why some endpoints could not be used (no such port, several ports and none named).
    pub problem: Option<String>,
    /// Each listed endpoint's gRPC address (the same pod on the gRPC port), when one was
    /// asked for and its slice lists it; in endpoint order.
    pub grpc: Vec<(SocketAddr, SocketAddr)>,
}

/// The number of `port` among a slice's ports (the only one when `port` is `None`).
fn port_number(ports: &[EndpointPort], port: Option<&PortRef>) -> Option<u16> {
    let n = match port {
        Some(PortRef::Number(n)) => ports
            .iter()
            .find(|p| p.port == Some(i32::from(*n)))
            .and_then(|p| p.port),
        Some(PortRef::Name(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port),
        None if ports.len() == 1 => ports[0].port,
        None => None,
    };
    n.and_then(|n| u16::try_from(n).ok())
}

/// A slice's ports, for messages: `http (8080), grpc (9090)`.
fn list_ports(ports: &[EndpointPort]) -> String {
    let listed: Vec<String> = ports
        .iter()
        .map(|p| match (&p.name, p.port) {
            (Some(n), Some(no)) if !n.is_empty() => format!("{n} ({no})"),
            (_, Some(no)) => no.to_string(),
            _ => "?".to_owned(),
        })
        .collect();
    if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    }
}

/// The ready endpoints among `slices` for `port`, and their addresses on `grpc`.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: Option<&PortRef>,
    grpc: Option<&PortRef>,
) -> Ready {
    let mut out = Ready::default();
    let mut pods = HashSet::new();
    let mut unready: Vec<(SocketAddr, Option<String>)> = Vec::new();
    let mut seen = HashSet::new();
    let mut grpc_of: BTreeMap<SocketAddr, SocketAddr> = BTreeMap::new();
    // Slices in name order, so that the choice between a pod's IPv4 and IPv6 address does
    // not depend on the order events arrived in; IPv4 first.
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by(|a, b| {
        (a.address_type != "IPv4", &a.metadata.name)
            .cmp(&(b.address_type != "IPv4", &b.metadata.name))
    });
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let has_endpoints = slice.endpoints.as_ref().is_some_and(|e| !e.is_empty());
        if port.is_none() && ports.len() > 1 {
            let names: Vec<_> = ports.iter().filter_map(|p| p.name.as_deref()).collect();
            out.problem = Some(format!(
                "the Service has several ports ({}); name one with kubernetes.port",
                names.join(", ")
            ));
            continue;
        }
        let Some(number) = port_number(ports, port) else {
            if has_endpoints {
                out.problem = Some(format!(
                    "no port {} in the Service's EndpointSlices (they list: {})",
                    port.map_or_else(|| "at all".to_owned(), ToString::to_string),
                    list_ports(ports)
                ));
            }
            continue;
        };
        // Without its gRPC port a pod still serves everything else; gRPC to it fails, and
        // the problem says why.
        let grpc_number = grpc.and_then(|g| {
            let n = port_number(ports, Some(g));
            if n.is_none() && has_endpoints {
                out.problem = Some(format!(
                    "no gRPC port {g} (kubernetes.grpc_port) in the Service's EndpointSlices (they list: {})",
                    list_ports(ports)
                ));
            }
            n
        });
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let terminating = ep
                .conditions
                .as_ref()
                .and_then(|c| c.terminating)
                .unwrap_or(false);
            if !ready {
                if !terminating
                    && let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok())
                {
                    let uid = ep.target_ref.as_ref().and_then(|t| t.uid.clone());
                    unready.push((SocketAddr::new(ip, number), uid));
                    if let Some(g) = grpc_number {
                        grpc_of.insert(SocketAddr::new(ip, number), SocketAddr::new(ip, g));
                    }
                }
                continue;
            }
            // One endpoint per pod: its other-family address would double its capacity.
            if let Some(uid) = ep.target_ref.as_ref().and_then(|t| t.uid.as_ref())
                && !pods.insert(uid.clone())
            {
                continue;
            }
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let addr = SocketAddr::new(ip, number);
            if seen.insert(addr) {
                out.addrs.push(addr);
                if let Some(g) = grpc_number {
                    grpc_of.insert(addr, SocketAddr::new(ip, g));
                }
            }
        }
    }
    out.addrs.sort();
    // A pod ready in one family and not yet in the other counts as ready; a pod not ready
    // in both is one endpoint.
    let mut unready_pods = HashSet::new();
    for (addr, uid) in unready {
        let counted = uid
            .as_ref()
            .is_some_and(|u| pods.contains(u) || !unready_pods.insert(u.clone()));
        if !counted && !seen.contains(&addr) && !out.not_ready.contains(&addr) {
            out.not_ready.push(addr);
        }
    }
    out.not_ready.sort();
    out.grpc = grpc_of
        .into_iter()
        .filter(|(a, _)| seen.contains(a) || out.not_ready.contains(a))
        .collect();
    out
}

/// Where the ready endpoints of a watched Service go.
pub trait Sink: Send + 'static {
    /// Who they are for, in log lines.
    fn name(&self) -> String;
    /// The ready endpoints changed.
    fn ready(&mut self, addrs: &[SocketAddr]);
    /// The ready or (when `ready_changed` is false, only) the not-ready endpoints changed;
    /// only the ready ones matter unless the sink says otherwise.
    fn pods(&mut self, ready: &[SocketAddr], not_ready: &[SocketAddr], ready_changed: bool) {
        let _ = not_ready;
        if ready_changed {
            self.ready(ready);
        }
    }
    /// The Service cannot give endpoints at all (`why`); asked again until it can.
    fn missing(&mut self, why: &str);
    /// The endpoints' gRPC addresses (`kubernetes.grpc_port`) changed; told before the
    /// endpoints themselves, so new ones are made with theirs.
    fn grpc(&mut self, by_endpoint: &[(SocketAddr, SocketAddr)]) {
        let _ = by_endpoint;
    }
}

/// A revision's endpoints: the ready pods get new requests; the others' requests finish.
#[derive(Debug)]
pub struct RevisionSink(pub Arc<Revision>);

impl Sink for RevisionSink {
    fn name(&self) -> String {
        format!("revision {} of service {}", self.0.name, self.0.service)
    }

    fn ready(&mut self, addrs: &[SocketAddr]) {
        self.0.set_endpoint_addrs(addrs);
        if !addrs.is_empty() {
            self.0.clear_failure();
        }
    }

    fn grpc(&mut self, by_endpoint: &[(SocketAddr, SocketAddr)]) {
        self.0.set_grpc_addrs(by_endpoint);
    }

    fn missing(&mut self, why: &str) {
        // Requests held for it learn why now instead of waiting out their timeout.
        self.0.fail_start(why, SERVICE_RECHECK);
    }
}

/// Watches `target`'s slices and hands their ready endpoints to `sink` on every change, until
/// `stop` turns true. `synced` turns true once the first full list has been handed over, or
/// the first attempt failed (what is known then is all there is for now).
pub async fn follow(
    client: Client,
    target: Target,
    mut sink: impl Sink,
    health: Arc<Health>,
    synced: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let selector = format!("kubernetes.io/service-name={}", target.service);
    let what = format!("EndpointSlices of Service {target}");
    // What this watch may have reported goes when it does (a revision fixed or removed by a
    // reload), also when its task is aborted.
    let _clear = ClearOnDrop {
        health: health.clone(),
        keys: vec![what.clone(), port_key(&target), format!("Service {target}")],
    };
    let api = Api::<EndpointSlice>::namespaced(client.clone(), &target.namespace);
    let services = Api::<Service>::namespaced(client, &target.namespace);
    let open =
        || watcher::watcher(api.clone(), watcher::Config::default().labels(&selector)).boxed();
    let mut events = open();
    let mut backoff = watch_backoff();
    // When the last full list came: the backoff starts over only after a watch that lasted.
    let mut listed_at: Option<tokio::time::Instant> = None;
    // While the Service has no slices, whether it exists at all is checked again now and then,
    // so a missing one is named (and its requests refused) until someone creates it.
    let mut recheck: Option<tokio::time::Instant> = None;
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
    // None until the first list is handed over, which happens even when it is empty: a
    // revision moved to a Service without pods must lose the old ones.
    let mut last: Option<Ready> = None;
    loop {
        let due = crate::clock::sleep_until_opt(recheck);
        let event = tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
            e = events.next() => match e {
                Some(e) => e,
                None => return,
            },
            () = due => {
                recheck = check_service(&services, &target, &mut sink, &health, slices.is_empty()).await;
                continue;
            }
        };
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(s)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(s.metadata.name.clone().unwrap_or_default(), s);
                }
                false
            }
            Ok(Event::InitDone) => {
                slices = listing.take().unwrap_or_default();
                health.clear(&what);
                listed_at = Some(tokio::time::Instant::now());
                true
            }
            Ok(Event::Apply(s)) => {
                slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                true
            }
            Ok(Event::Delete(s)) => {
                slices.remove(s.metadata.name.as_deref().unwrap_or_default());
                true
            }
            Err(e) => {
                // The last known endpoints stay: traffic keeps flowing while the API server
                // is away. The watch starts over with a fresh list after a pause: its
                // InitDone is the sign that all is well again (a resumed watch with nothing
                // new to say would give none), and nothing missed in between stays missed.
                let why = describe_watch(
                    &e,
                    &format!(
                        "list and watch EndpointSlices in namespace {}",
                        target.namespace
                    ),
                );
                health.api_error();
                health.report(&what, &why);
                // What is known is all there will be for now: readiness need not wait.
                synced.send_replace(true);
                if listed_at.is_some_and(|t| t.elapsed() >= WATCH_STABLE) {
                    backoff.reset();
                }
                let pause = backoff.fail();
                warn!(
                    "{}: watching {what}: {why}; keeping the last known endpoints and retrying in {pause:?}",
                    sink.name()
                );
                tokio::select! {
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                    () = tokio::time::sleep(pause) => {}
                }
                events = open();
                listing = None;
                false
            }
        };
        if !changed {
            continue;
        }
        let now = ready_endpoints(
            slices.values(),
            target.port.as_ref(),
            target.grpc_port.as_ref(),
        );
        match &now.problem {
            Some(p) => health.report(&port_key(&target), p),
            None => health.clear(&port_key(&target)),
        }
        recheck = check_service(&services, &target, &mut sink, &health, slices.is_empty()).await;
        let grpc_changed = last.as_ref().is_none_or(|l| l.grpc != now.grpc);
        if grpc_changed && target.grpc_port.is_some() {
            sink.grpc(&now.grpc);
        }
        if last
            .as_ref()
            .is_none_or(|l| l.addrs != now.addrs || l.not_ready != now.not_ready)
        {
            debug!(endpoints = ?now.addrs, not_ready = ?now.not_ready, "{}: EndpointSlices of {target} changed", sink.name());
            if last
                .as_ref()
                .is_none_or(|l| l.addrs.len() != now.addrs.len())
            {
                info!(
                    ready = now.addrs.len(),
                    "{}: ready endpoints from {target}",
                    sink.name()
                );
            }
            let ready_changed = last.as_ref().is_none_or(|l| l.addrs != now.addrs);
            sink.pods(&now.addrs, &now.not_ready, ready_changed);
        }
        last = Some(now);
        synced.send_replace(true);
    }
}

/// What a problem with `target`'s ports is reported as. It names the ports asked for, so that
/// two revisions that take the same Service's pods on different ports (one of them misnamed)
/// do not clear each other's problem.
fn port_key(target: &Target) -> String {
    let mut asked = Vec::new();
    if let Some(p) = &target.port {
        asked.push(format!("port {p}"));
    }
    if let Some(g) = &target.grpc_port {
        asked.push(format!("gRPC port {g}"));
    }
    match asked.is_empty() {
        true => format!("port of Service {target}"),
        false => format!("port of Service {target} ({})", asked.join(", ")),
    }
}

/// Pauses between attempts of a broken watch: 200 ms doubling to 5 s, from the start again
/// after a watch that lasted. Shorter than client-go's (0.8 s to 30 s): a watch here is a
/// handful of small objects, and the endpoints it brings are what requests wait for, so an API
/// server back from a restart (which may refuse for a moment while its caches fill) is
/// followed within seconds, not half a minute.
fn watch_backoff() -> Backoff {
    Backoff::between(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    )
}

/// A watch that ran this long after its list has recovered: its next failure starts the
/// backoff over (one that fails at once after each list, as when RBAC allows `list` but not
/// `watch`, keeps backing off).
const WATCH_STABLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Clears the problems a task reported when it ends.
struct ClearOnDrop {
    health: Arc<Health>,
    keys: Vec<String>,
}

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        for k in &self.keys {
            self.health.clear(k);
        }
    }
}
/// How often a Service that has no EndpointSlices is looked up again.
pub const SERVICE_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// With no slices, says whether that is because the Service does not exist: a missing one is
/// reported and handed to the sink. Returns when to check again.
async fn check_service(
    services: &Api<Service>,
    target: &Target,
    sink: &mut impl Sink,
    health: &Health,
    no_slices: bool,
) -> Option<tokio::time::Instant> {
    let what = format!("Service {target}");
    if !no_slices {
        health.clear(&what);
        return None;
    }
    let looked_up = super::health::within(SERVICE_RECHECK, services.get_opt(&target.service)).await;
    let why = match looked_up {
        Ok(Some(_)) => {
            // It exists and has no pods yet: a revision at zero, nothing to say. Should it be
            // deleted later, its slices go too, and that event brings us back here.
            health.clear(&what);
            return None;
        }
        Ok(None) => format!(
            "Service {} does not exist in namespace {}; create it, or fix the config of {}",
            target.service,
            target.namespace,
            sink.name()
        ),
        Err(e) => {
            health.api_error();
            super::health::describe(
                &e,
                &format!(
                    "get Service {} in namespace {}",
                    target.service, target.namespace
                ),
            )
        }
    };
    health.report(&what, &why);
    sink.missing(&why);
    Some(tokio::time::Instant::now() + SERVICE_RECHECK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(
        name: &str,
        family: &str,
        ports: &[(&str, i32)],
        eps: &[(&str, &str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            address_type: family.to_owned(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some((*n).to_owned()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, pod, ready)| Endpoint {
                        addresses: vec![(*ip).to_owned()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        target_ref: Some(ObjectReference {
                            uid: Some((*pod).to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn addrs(r: &Ready) -> Vec<String> {
        r.addrs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn only_ready_endpoints_count_and_nil_means_ready() {
        let s = slice(
            "a",
            "IPv4",
            &[("http", 8080)],
            &[
                ("10.0.0.1", "p1", Some(true)),
                ("10.0.0.2", "p2", Some(false)),
                ("10.0.0.3", "p3", None),
            ],
        );
        let r = ready_endpoints([&s], Some(&PortRef::Name("http".into())), None);
        assert_eq!(addrs(&r), ["10.0.0.1:8080", "10.0.0.3:8080"]);
        assert_eq!(r.problem, None);
    }

    #[test]
    fn pods_on_their_way_up_are_listed_apart_and_terminating_ones_not_at_all() {
        let mut s = slice(
            "a-v4",
            "IPv4",
            &[("http", 8012)],
            &[
                ("10.0.0.1", "p1", Some(true)),
                ("10.0.0.2", "p2", Some(false)),
                ("10.0.0.3", "p3", Some(false)),
                ("10.0.0.4", "p4", Some(false)),
            ],
        );
        // p3 is terminating; p4 is ready in the other family.
        s.endpoints.as_mut().unwrap()[2]
            .conditions
            .as_mut()
            .unwrap()
            .terminating = Some(true);
        let v6 = slice(
            "a-v6",
            "IPv6",
            &[("http", 8012)],
            &[
                ("fd00::4", "p4", Some(true)),
                ("fd00::2", "p2", Some(false)),
            ],
        );
        let r = ready_endpoints([&s, &v6], Some(&PortRef::Name("http".into())), None);
        assert_eq!(addrs(&r), ["10.0.0.1:8012", "[fd00::4]:8012"]);
        let not_ready: Vec<String> = r.not_ready.iter().map(ToString::to_string).collect();
        assert_eq!(
            not_ready,
            ["10.0.0.2:8012"],
            "one entry per pod, none terminating"
        );
    }

    #[test]
    fn a_dual_stack_pod_is_one_endpoint_and_ipv6_only_pods_are_used() {
        let v4 = slice(
            "a-v4",
            "IPv4",
            &[("http", 80)],
            &[("10.0.0.1", "p1", Some(true))],
        );
        let v6 = slice(
            "a-v6",
            "IPv6",
            &[("http", 80)],
            &[("fd00::1", "p1", Some(true)), ("fd00::2", "p2", Some(true))],
        );
        let r = ready_endpoints([&v6, &v4], None, None);
        assert_eq!(addrs(&r), ["10.0.0.1:80", "[fd00::2]:80"]);
    }

    #[test]
    fn the_port_is_found_by_name_or_number_and_a_missing_one_is_named() {
        let s = slice(
            "a",
            "IPv4",
            &[("http", 8080), ("grpc", 9000)],
            &[("10.0.0.1", "p1", Some(true))],
        );
        assert_eq!(
            addrs(&ready_endpoints(
                [&s],
                Some(&PortRef::Name("grpc".into())),
                None
            )),
            ["10.0.0.1:9000"]
        );
        assert_eq!(
            addrs(&ready_endpoints([&s], Some(&PortRef::Number(8080)), None)),
            ["10.0.0.1:8080"]
        );
        let r = ready_endpoints([&s], Some(&PortRef::Name("web".into())), None);
        assert!(r.addrs.is_empty());
        let p = r.problem.unwrap();
        assert!(
            p.contains("no port \"web\"") && p.contains("http (8080), grpc (9000)"),
            "{p}"
        );
        let r = ready_endpoints([&s], None, None);
        assert!(r.problem.unwrap().contains("several ports (http, grpc)"));
    }

    #[test]
    fn each_endpoint_gets_its_pods_grpc_port_and_a_missing_one_is_named() {
        let s = slice(
            "a",
            "IPv4",
            &[("http", 8080), ("grpc", 9000)],
            &[
                ("10.0.0.1", "p1", Some(true)),
                ("10.0.0.2", "p2", Some(false)),
            ],
        );
        let http = PortRef::Name("http".into());
        let r = ready_endpoints([&s], Some(&http), Some(&PortRef::Name("grpc".into())));
        assert_eq!(r.problem, None);
        let grpc: Vec<(String, String)> = r
            .grpc
            .iter()
            .map(|(a, g)| (a.to_string(), g.to_string()))
            .collect();
        // The pod on its way up has one too, for when it is taken before the kubelet says so.
        assert_eq!(
            grpc,
            [
                ("10.0.0.1:8080".to_owned(), "10.0.0.1:9000".to_owned()),
                ("10.0.0.2:8080".to_owned(), "10.0.0.2:9000".to_owned()),
            ]
        );
        assert_eq!(
            ready_endpoints([&s], Some(&http), Some(&PortRef::Number(9000))).grpc,
            r.grpc
        );
        // Without it, the pods still serve the rest; gRPC has nowhere to go, and that is said.
        let r = ready_endpoints([&s], Some(&http), Some(&PortRef::Name("grcp".into())));
        assert_eq!(addrs(&r), ["10.0.0.1:8080"]);
        assert!(r.grpc.is_empty());
        let p = r.problem.unwrap();
        assert!(
            p.contains("no gRPC port \"grcp\" (kubernetes.grpc_port)")
                && p.contains("http (8080), grpc (9000)"),
            "{p}"
        );
    }
}
