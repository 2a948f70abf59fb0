//! rouse as Knative's ingress: Ingresses (`networking.internal.knative.dev/v1alpha1`) of
//! rouse's class become services of the gateway that runs this controller, in the same
//! process, so there is no second component and no config hop between a controller and a
//! proxy.
//!
//! The controller watches Ingresses, Services and TLS Secrets (the Secrets labelled
//! `networking.internal.knative.dev/certificate-uid`, as Knative's certificates are) and, on
//! any change, reads all Ingresses of its class again ([`spec`] checks them, [`translate`]
//! turns each into gateway services), hands the whole set to the gateway (one swap of the route
//! table), then probes every rouse replica ([`probe`]) and marks each Ingress Ready once all
//! of them serve its current spec. An Ingress that cannot be served (bad spec, host already
//! taken, missing Service or Secret) is left out with a status that says why; the others go
//! on. Ingresses of other classes are never read twice and never written.

pub mod probe;
pub mod spec;
pub mod translate;

use self::spec::{CLASS_ANNOTATION, CLASS_ANNOTATION_OLD, IngressSpec};
use self::translate::{Backend, Ingress, Lookup, Refusal};
use super::endpoints::{self, Target};
use super::health::Health;
use super::peers::AddrSink;
use crate::config::{self, PortRef};
use crate::http::tls::{CertStore, certified_key_pem};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Label that marks the Secrets Knative's certificates live in; only those are watched.
pub const CERTIFICATE_LABEL: &str = "networking.internal.knative.dev/certificate-uid";

/// Everything is read again this often even without an event, so that what the watches
/// cannot tell (a name that resolves elsewhere now) is caught up.
const RESYNC: Duration = Duration::from_secs(30);

/// The gateway an Ingress controller feeds.
pub trait Gateway: Send + Sync + 'static {
    /// Serves exactly `services` (besides the config file's own), replacing the previous set.
    fn serve(
        &self,
        services: Vec<config::Service>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// The problems the gateway's config rules find in `services`, each in words.
    fn check(&self, services: &[config::Service]) -> Vec<String>;
    /// Hosts the config file's services claim; Ingresses cannot take them.
    fn file_hosts(&self) -> Vec<String>;
}

/// Where the controller runs and what it reports.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `kubernetes.ingress`.
    pub class: config::IngressClass,
    /// The namespace of rouse's own Services.
    pub namespace: String,
    /// Port of the public cleartext listener on every replica.
    pub public_port: u16,
    /// Port of the cluster-local listener on every replica.
    pub internal_port: u16,
    /// Where this replica's cluster-local listener is reached from itself (for a backend that
    /// is an `ExternalName` for rouse's own Service: Knative's `rewriteHost` targets).
    pub internal_addr: SocketAddr,
}

impl Settings {
    fn fqdn(&self, service: &str) -> String {
        format!(
            "{service}.{}.svc.{}",
            self.namespace, self.class.cluster_domain
        )
    }
}

/// An Ingress's class: its annotation, in the current spelling or else the older one.
fn class_of(o: &DynamicObject) -> Option<&String> {
    let a = o.metadata.annotations.as_ref()?;
    a.get(CLASS_ANNOTATION)
        .or_else(|| a.get(CLASS_ANNOTATION_OLD))
}

/// Knative's Ingress resource, for the dynamic API.
pub fn ingress_resource() -> ApiResource {
    ApiResource {
        group: "networking.internal.knative.dev".into(),
        version: "v1alpha1".into(),
        api_version: "networking.internal.knative.dev/v1alpha1".into(),
        kind: "Ingress".into(),
        plural: "ingresses".into(),
    }
}

/// What the controller reports in `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Ingresses of rouse's class by state, after the last pass: Ready, being probed, refused.
    states: [AtomicI64; 3],
    /// Passes over all Ingresses.
    passes: AtomicU64,
    /// Their total duration, in microseconds.
    pass_micros: AtomicU64,
    /// The last one's, in microseconds.
    last_micros: AtomicU64,
}

/// Exports [`Stats`] as metrics.
#[derive(Debug)]
pub struct StatsMetrics(pub Arc<Stats>);

impl Collector for StatsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "rouse_ingresses",
            "Knative Ingresses of rouse's class by state: ready (every replica serves the current spec), probing, refused (see the Ingress's status)",
            None,
            gauge.metric_type(),
        )?;
        for (state, v) in ["ready", "probing", "refused"].iter().zip(&stats.states) {
            ConstGauge::new(v.load(Ordering::Relaxed))
                .encode(e.encode_family(&[("state", *state)])?)?;
        }
        let counter = ConstCounter::new(0u64);
        let e = encoder.encode_descriptor(
            "rouse_ingress_passes",
            "Times the controller read every Ingress again and brought the route table in step",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(stats.passes.load(Ordering::Relaxed)).encode(e)?;
        let secs = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / 1e6;
        let e = encoder.encode_descriptor(
            "rouse_ingress_pass_seconds",
            "Time spent in those passes (reading, translating, swapping the route table, starting probes, writing statuses)",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(secs(&stats.pass_micros)).encode(e)?;
        let e = encoder.encode_descriptor(
            "rouse_ingress_last_pass_seconds",
            "How long the last pass took",
            None,
            gauge.metric_type(),
        )?;
        ConstGauge::new(secs(&stats.last_micros)).encode(e)?;
        Ok(())
    }
}

/// Runs the controller until `stop`, reporting into `stats`.
pub async fn run(
    settings: Settings,
    gateway: Arc<impl Gateway>,
    certs: Option<Arc<CertStore>>,
    health: Arc<Health>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(client) =
        super::health::client_until(&health, "ingress", "for the Ingress controller", &mut stop)
            .await
    else {
        return;
    };
    let changed = Arc::new(Notify::new());
    let ar = ingress_resource();
    let writer = reflector::store::Writer::new(ar.clone());
    let ingresses = writer.as_reader();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    tasks.push(drive(
        reflector::reflector(
            writer,
            watcher(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                watcher::Config::default(),
            ),
        ),
        changed.clone(),
        health.clone(),
        "Ingresses",
        // Its own status writes (and anyone's) change nothing rouse serves: only the spec
        // (its generation), the class and deletion do.
        |o: &DynamicObject| {
            let class = class_of(o);
            Some((
                format!("{:?}/{:?}", o.metadata.namespace, o.metadata.name),
                format!(
                    "{:?}/{:?}/{:?}/{class:?}",
                    o.metadata.uid,
                    o.metadata.generation,
                    o.metadata.deletion_timestamp.is_some()
                ),
            ))
        },
    ));
    let (services, writer) = reflector::store::<Service>();
    tasks.push(drive(
        reflector::reflector(
            writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        ),
        changed.clone(),
        health.clone(),
        "Services",
        |_| None,
    ));
    let (secrets, writer) = reflector::store::<Secret>();
    tasks.push(drive(
        reflector::reflector(
            writer,
            watcher(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().labels(CERTIFICATE_LABEL),
            ),
        ),
        changed.clone(),
        health.clone(),
        "Secrets",
        |_| None,
    ));
    let (pods_tx, mut pods) = watch::channel(Vec::new());
    let (_stop_pods, stop_rx) = watch::channel(false);
    let (listed, mut replicas_listed) = watch::channel(false);
    tasks.push(tokio::spawn(endpoints::follow(
        client.clone(),
        Target {
            namespace: settings.namespace.clone(),
            service: settings.class.private_service.clone(),
            port: Some(PortRef::Name("http".to_owned())),
            grpc_port: None,
        },
        AddrSink(pods_tx),
        health.clone(),
        listed,
        stop_rx,
    )));
    // The first pass waits for every cache: one made from half a picture would refuse
    // Ingresses whose Services are simply not listed yet.
    let caches = async {
        let _ = ingresses.wait_until_ready().await;
        let _ = services.wait_until_ready().await;
        let _ = secrets.wait_until_ready().await;
        let _ = replicas_listed.wait_for(|l| *l).await;
    };
    tokio::select! {
        () = caches => {}
        _ = stop.changed() => {
            for t in tasks {
                t.abort();
            }
            return;
        }
    }
    let mut c = Controller {
        settings,
        client,
        ingresses,
        services,
        secrets,
        probes: HashMap::new(),
        done: mpsc::unbounded_channel(),
        next_probe: 0,
        ready: HashMap::new(),
        last_served: None,
        accepted: Default::default(),
        current: HashMap::new(),
        last_good: HashMap::new(),
        stats: stats.clone(),
    };
    info!(class = %c.settings.class.class, "serving Knative Ingresses");
    let mut resync = tokio::time::Instant::now();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = changed.notified() => {}
                r = pods.changed() => {
                    if r.is_err() { break; }
                    // A replica came or went: what is not Ready yet is probed again on the
                    // new set, and results of probes of the old set no longer count.
                    c.probes.clear();
                }
                Some(done) = c.done.1.recv() => {
                    // Only this Ingress's status changes: no pass over all of them.
                    c.confirm(done).await;
                    continue;
                }
                _ = tokio::time::sleep_until(resync) => {}
                _ = stop.changed() => break,
            }
        }
        resync = tokio::time::Instant::now() + RESYNC;
        let replicas: Vec<IpAddr> = pods.borrow().iter().map(SocketAddr::ip).collect();
        let began = tokio::time::Instant::now();
        let states = c.reconcile(&*gateway, certs.as_deref(), &replicas).await;
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        for (v, n) in stats.states.iter().zip(states) {
            v.store(n, Ordering::Relaxed);
        }
        stats.passes.fetch_add(1, Ordering::Relaxed);
        if first {
            first = false;
            health.ingress_pending.store(false, Ordering::Relaxed);
        }
        stats.pass_micros.fetch_add(took, Ordering::Relaxed);
        stats.last_micros.store(took, Ordering::Relaxed);
    }
    for t in tasks {
        t.abort();
    }
}

/// Runs one watch into its store, waking the controller on events that may change what it
/// does: all of them, unless `relevant` gives an object a fingerprint, in which case only a new
/// fingerprint for its key (or a deletion) wakes it. Errors are retried with the watcher's
/// backoff and said on `/readyz` until the watch works again.
pub(crate) fn drive<K>(
    stream: impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    changed: Arc<Notify>,
    health: Arc<Health>,
    what: &'static str,
    relevant: fn(&K) -> Option<(String, String)>,
) -> JoinHandle<()>
where
    K: Send + 'static,
{
    let key = format!("ingress watch of {what}");
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        let mut seen: HashMap<String, String> = HashMap::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::Apply(o)) => {
                    health.clear(&key);
                    if let Some((k, fp)) = relevant(&o) {
                        if seen.get(&k) == Some(&fp) {
                            continue;
                        }
                        seen.insert(k, fp);
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::Delete(o)) => {
                    if let Some((k, _)) = relevant(&o) {
                        seen.remove(&k);
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::InitDone) => {
                    health.clear(&key);
                    changed.notify_one();
                }
                Err(e) => {
                    health.api_error();
                    health.report(
                        &key,
                        &super::health::describe_watch(&e, &format!("watch {what}")),
                    );
                }
            }
        }
    })
}

struct Controller {
    settings: Settings,
    client: Client,
    ingresses: Store<DynamicObject>,
    services: Store<Service>,
    secrets: Store<Secret>,
    /// Probes running, by Ingress key, with the hash they wait for.
    probes: HashMap<String, (String, ProbeTask)>,
    /// Finished probes report here.
    done: (
        mpsc::UnboundedSender<Probed>,
        mpsc::UnboundedReceiver<Probed>,
    ),
    /// The number of the next probe: a result counts only while its probe is the current one.
    next_probe: u64,
    /// The hash every replica was last found serving, by Ingress key.
    ready: HashMap<String, String>,
    /// What the gateway was last given, to skip swaps that change nothing.
    last_served: Option<Vec<String>>,
    /// The Ingresses served after the last pass.
    accepted: std::collections::HashSet<String>,
    /// Each Ingress served after the last pass, with its generation and hash.
    current: HashMap<String, (Arc<DynamicObject>, i64, String)>,
    /// The last translation that could be served, by Ingress key.
    last_good: HashMap<String, LastGood>,
    stats: Arc<Stats>,
}

/// A finished probe: the Ingress key, the hash every replica was found serving, and the
/// probe's number.
type Probed = (String, String, u64);

/// Certificates by the host names they serve.
type Certs = Vec<(Vec<String>, Arc<CertifiedKey>)>;

/// A probe, by number, that stops when dropped.
struct ProbeTask(u64, JoinHandle<()>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.1.abort();
    }
}

/// One Ingress of rouse's class, as this pass sees it.
struct Seen {
    obj: Arc<DynamicObject>,
    key: String,
    generation: i64,
    outcome: Result<(Ingress, Vec<config::Service>), Refusal>,
    /// For a refused Ingress that was served before: what it served then, still served.
    kept: Vec<config::Service>,
}

/// The last translation of an Ingress that could be served.
#[derive(Clone)]
struct LastGood {
    services: Vec<config::Service>,
    tls: Certs,
    hosts: Vec<String>,
}

impl Controller {
    fn ours(&self, o: &DynamicObject) -> bool {
        class_of(o).is_some_and(|c| *c == self.settings.class.class)
    }

    /// One pass; returns how many Ingresses are ready, being probed and refused.
    async fn reconcile(
        &mut self,
        gateway: &impl Gateway,
        certs: Option<&CertStore>,
        replicas: &[IpAddr],
    ) -> [i64; 3] {
        let mut objs: Vec<Arc<DynamicObject>> = self
            .ingresses
            .state()
            .into_iter()
            .filter(|o| self.ours(o) && o.metadata.deletion_timestamp.is_none())
            .collect();
        // A host stays with the Ingress that has it; among the others the first created claims
        // it (creation times are in seconds, so what was served last time goes first).
        let served = |o: &DynamicObject| {
            let key = format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default()
            );
            !self.accepted.contains(&key)
        };
        objs.sort_by(|a, b| {
            let t = |o: &DynamicObject| o.metadata.creation_timestamp.as_ref().map(|t| t.0);
            served(a)
                .cmp(&served(b))
                .then_with(|| t(a).cmp(&t(b)))
                .then_with(|| a.metadata.namespace.cmp(&b.metadata.namespace))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let lookup = self.lookup().await;
        let mut claimed: HashMap<String, String> = gateway
            .file_hosts()
            .into_iter()
            .map(|h| (h, "rouse's config file".to_owned()))
            .collect();
        let mut seen = Vec::with_capacity(objs.len());
        let mut given: Certs = Vec::new();
        for obj in objs {
            let namespace = obj.metadata.namespace.clone().unwrap_or_default();
            let name = obj.metadata.name.clone().unwrap_or_default();
            let key = format!("{namespace}/{name}");
            let generation = obj.metadata.generation.unwrap_or(0);
            let mut outcome = self
                .read(
                    &obj,
                    &namespace,
                    &name,
                    &lookup,
                    gateway,
                    certs,
                    &mut claimed,
                )
                .map(|(ing, services, tls)| {
                    given.extend(tls.iter().cloned());
                    let hosts = ing.hosts(&self.settings.class.cluster_domain);
                    self.last_good.insert(
                        key.clone(),
                        LastGood {
                            services: services.clone(),
                            tls,
                            hosts: hosts.into_iter().map(|(h, _)| h).collect(),
                        },
                    );
                    (ing, services)
                });
            let mut kept = Vec::new();
            if let Err(r) = &mut outcome {
                debug!(ingress = %key, reason = r.reason, "not served: {}", r.message);
                // An Ingress that was served goes on with what it served (a Secret rotated by
                // delete and create, a Service replaced), unless its hosts went to another.
                let owner = format!("Ingress {key}");
                if let Some(lg) = self.last_good.get(&key)
                    && lg
                        .hosts
                        .iter()
                        .all(|h| claimed.get(h).is_none_or(|o| *o == owner))
                {
                    for h in &lg.hosts {
                        claimed.insert(h.clone(), owner.clone());
                    }
                    given.extend(lg.tls.iter().cloned());
                    kept = lg.services.clone();
                    r.message
                        .push_str(" (the last spec that could be served is served until then)");
                }
            }
            seen.push(Seen {
                obj,
                key,
                generation,
                outcome,
                kept,
            });
        }
        self.accepted = seen
            .iter()
            .filter(|s| s.outcome.is_ok() || !s.kept.is_empty())
            .map(|s| s.key.clone())
            .collect();
        self.current = seen
            .iter()
            .filter_map(|s| {
                let (ing, _) = s.outcome.as_ref().ok()?;
                Some((
                    s.key.clone(),
                    (s.obj.clone(), s.generation, ing.hash.clone()),
                ))
            })
            .collect();
        let services: Vec<config::Service> = seen
            .iter()
            .flat_map(|s| match &s.outcome {
                Ok((_, services)) => services.iter(),
                Err(_) => s.kept.iter(),
            })
            .cloned()
            .collect();
        let fingerprint: Vec<String> = services.iter().map(|s| format!("{s:?}")).collect();
        if self.last_served.as_ref() != Some(&fingerprint) {
            match gateway.serve(services).await {
                Ok(()) => self.last_served = Some(fingerprint),
                // Tried again on the next pass.
                Err(e) => warn!("the gateway refused the Ingresses' routes: {e}"),
            }
        }
        if let Some(c) = certs {
            c.set_given(&given);
        }
        // Forget what is gone.
        let live: std::collections::HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
        self.probes.retain(|k, _| live.contains(k.as_str()));
        self.ready.retain(|k, _| live.contains(k.as_str()));
        self.last_good.retain(|k, _| live.contains(k.as_str()));
        let mut counts = [0; 3];
        for s in &seen {
            let state = match &s.outcome {
                Err(r) => State::Refused(r.clone()),
                Ok((ing, _)) if self.ready.get(&s.key) == Some(&ing.hash) => State::Ready,
                Ok((ing, _)) => {
                    self.start_probe(&s.key, ing, replicas);
                    State::Probing(if replicas.is_empty() {
                        format!(
                            "no rouse replica is listed in the EndpointSlices of Service {}/{} (port \"http\"), so none can be probed; check that Service",
                            self.settings.namespace, self.settings.class.private_service
                        )
                    } else {
                        "Waiting for load balancer to be ready".to_owned()
                    })
                }
            };
            counts[match state {
                State::Ready => 0,
                State::Probing(_) => 1,
                State::Refused(_) => 2,
            }] += 1;
            let status = self.status(s.generation, &state);
            // Another replica (or this one before a restart) may have found every replica
            // serving this generation already: "not yet" from here must not undo that.
            let stored_ready = matches!(state, State::Probing(_))
                && is_ready(s.obj.data.get("status"), s.generation);
            if !stored_ready && !same_status(s.obj.data.get("status"), &status) {
                self.write_status(&s.obj, status).await;
            }
        }
        counts
    }

    /// Every replica serves `hash` for Ingress `key`: marks it Ready if that probe is still
    /// the current one, and the Ingress still rouse's with that spec.
    async fn confirm(&mut self, (key, hash, id): Probed) {
        if self.probes.get(&key).is_none_or(|(_, p)| p.0 != id) {
            return;
        }
        self.probes.remove(&key);
        let Some((obj, generation, current)) = self.current.get(&key).cloned() else {
            return;
        };
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let live = self
            .ingresses
            .get(&ObjectRef::new_with(name, ingress_resource()).within(ns));
        let still = live.is_some_and(|o| {
            self.ours(&o)
                && o.metadata.deletion_timestamp.is_none()
                && o.metadata.generation == Some(generation)
        });
        if current != hash || !still {
            return;
        }
        if self.ready.insert(key, hash.clone()).as_ref() != Some(&hash) {
            self.stats.states[1].fetch_sub(1, Ordering::Relaxed);
            self.stats.states[0].fetch_add(1, Ordering::Relaxed);
        }
        let status = self.status(generation, &State::Ready);
        if !same_status(obj.data.get("status"), &status) {
            self.write_status(&obj, status).await;
        }
    }

    /// Reads and translates one Ingress, claiming its hosts: its services and TLS
    /// certificates, or why it cannot be served.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        obj: &DynamicObject,
        namespace: &str,
        name: &str,
        lookup: &ClusterLookup,
        gateway: &impl Gateway,
        certs: Option<&CertStore>,
        claimed: &mut HashMap<String, String>,
    ) -> Result<(Ingress, Vec<config::Service>, Certs), Refusal> {
        let invalid = |message: String| Refusal {
            reason: "InvalidSpec",
            message,
        };
        let raw = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        let spec: IngressSpec = serde_path_to_error::deserialize(raw)
            .map_err(|e| invalid(format!("spec.{}: {}", e.path(), e.inner())))?;
        let hash = spec::hash(&spec, namespace, name);
        let spec = spec::check(spec, namespace).map_err(|e| invalid(e.join("; ")))?;
        let ing = Ingress {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            spec,
            hash,
        };
        let key = ing.key();
        let hosts = ing.hosts(&self.settings.class.cluster_domain);
        if let Some((h, owner)) = hosts
            .iter()
            .find_map(|(h, _)| claimed.get(h).map(|o| (h, o)))
        {
            return Err(Refusal {
                reason: "DomainConflict",
                message: format!(
                    "host {h:?} is already served by {owner}; remove it from one of the two"
                ),
            });
        }
        let services = translate::translate(
            &ing,
            lookup,
            &self.settings.class.cluster_domain,
            self.settings.class.activate,
        )?;
        let problems = gateway.check(&services);
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let mut tls = self.certificates(&ing, certs)?;
        let owner = format!("Ingress {key}");
        for (h, _) in hosts {
            claimed.insert(h, owner.clone());
        }
        // A certificate serves only names no one else has: an Ingress cannot take over the
        // TLS of another's host by listing it.
        for (names, _) in &mut tls {
            names.retain(|h| claimed.get(h).is_none_or(|o| *o == owner));
        }
        Ok((ing, services, tls))
    }

    /// The certificates of `spec.tls`, from their Secrets.
    fn certificates(&self, ing: &Ingress, certs: Option<&CertStore>) -> Result<Certs, Refusal> {
        if ing.spec.tls.is_empty() {
            return Ok(Vec::new());
        }
        if certs.is_none() {
            return Err(Refusal {
                reason: "NoTLSListener",
                message: "spec.tls asks for HTTPS, but this rouse has no TLS listener; add a tls section to its config".into(),
            });
        }
        let public: Vec<String> = ing
            .hosts(&self.settings.class.cluster_domain)
            .into_iter()
            .filter(|(_, local)| !local)
            .map(|(h, _)| h)
            .collect();
        let mut out = Vec::new();
        for (i, t) in ing.spec.tls.iter().enumerate() {
            let r = ObjectRef::new(&t.secret_name).within(&t.secret_namespace);
            let Some(secret) = self.secrets.get(&r) else {
                return Err(Refusal {
                    reason: "SecretMissing",
                    message: format!(
                        "spec.tls[{i}]: Secret {}/{} was not found among Secrets labelled {CERTIFICATE_LABEL}; create it, with that label",
                        t.secret_namespace, t.secret_name
                    ),
                });
            };
            let data = secret.data.clone().unwrap_or_default();
            let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
                return Err(Refusal {
                    reason: "CertificateInvalid",
                    message: format!(
                        "spec.tls[{i}]: Secret {}/{} lacks tls.crt or tls.key",
                        t.secret_namespace, t.secret_name
                    ),
                });
            };
            let ck = certified_key_pem(&crt.0, &key.0).map_err(|e| Refusal {
                reason: "CertificateInvalid",
                message: format!(
                    "spec.tls[{i}]: Secret {}/{}: {e}",
                    t.secret_namespace, t.secret_name
                ),
            })?;
            let hosts = if t.hosts.is_empty() {
                public.clone()
            } else {
                t.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
            };
            out.push((hosts, Arc::new(ck)));
        }
        Ok(out)
    }

    /// The Services as this pass sees them, with `ExternalName`s resolved.
    async fn lookup(&self) -> ClusterLookup {
        let own = [
            self.settings.fqdn(&self.settings.class.private_service),
            self.settings.fqdn(&self.settings.class.public_service),
        ];
        let mut services = HashMap::new();
        let mut resolved = HashMap::new();
        for s in self.services.state() {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            if let Some(ext) = s.spec.as_ref().and_then(|sp| sp.external_name.clone()) {
                let ext = ext.trim_end_matches('.').to_ascii_lowercase();
                resolved.insert((ns.clone(), name.clone()), (ext, Vec::new()));
            }
            services.insert((ns, name), s);
        }
        // Every name at once, each bounded: a pass must not wait on a slow resolver.
        let lookups = resolved.iter().map(|(key, (ext, _))| {
            let ext = ext.clone();
            let own = own.contains(&ext);
            let internal = self.settings.internal_addr;
            async move {
                let addrs = if own {
                    vec![internal]
                } else {
                    let found = tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio::net::lookup_host((ext.as_str(), 80)),
                    )
                    .await;
                    match found {
                        Ok(Ok(a)) => a.map(|a| SocketAddr::new(a.ip(), 0)).collect(),
                        _ => Vec::new(),
                    }
                };
                (key.clone(), addrs)
            }
        });
        for (key, addrs) in futures_util::future::join_all(lookups).await {
            if let Some(r) = resolved.get_mut(&key) {
                r.1 = addrs;
            }
        }
        ClusterLookup {
            services,
            resolved,
            internal: self.settings.internal_addr,
        }
    }

    fn start_probe(&mut self, key: &str, ing: &Ingress, replicas: &[IpAddr]) {
        if self.probes.get(key).is_some_and(|(h, _)| *h == ing.hash) || replicas.is_empty() {
            return;
        }
        let mut targets = Vec::new();
        for r in &ing.spec.rules {
            let local = r.visibility == "ClusterLocal";
            let port = if local {
                self.settings.internal_port
            } else {
                self.settings.public_port
            };
            let host = r
                .hosts
                .first()
                .cloned()
                .unwrap_or_else(|| "probe.invalid".to_owned());
            for ip in replicas {
                targets.push((SocketAddr::new(*ip, port), host.clone()));
            }
        }
        let (tx, key_owned, hash) = (self.done.0.clone(), key.to_owned(), ing.hash.clone());
        let id = self.next_probe;
        self.next_probe += 1;
        let task = tokio::spawn(async move {
            probe::all(targets, hash.clone()).await;
            let _ = tx.send((key_owned, hash, id));
        });
        self.probes
            .insert(key.to_owned(), (ing.hash.clone(), ProbeTask(id, task)));
    }

    fn status(&self, generation: i64, state: &State) -> Value {
        let lb = |svc: &str| json!({"ingress": [{"domainInternal": self.settings.fqdn(svc)}]});
        let cond = |t: &str, status: &str, reason: &str, message: &str| {
            let mut c = json!({"type": t, "status": status});
            if !reason.is_empty() {
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            c
        };
        let (lb_cond, ready) = match state {
            State::Ready => (
                cond("LoadBalancerReady", "True", "", ""),
                cond("Ready", "True", "", ""),
            ),
            State::Probing(why) => (
                cond("LoadBalancerReady", "Unknown", "Uninitialized", why),
                cond("Ready", "Unknown", "Uninitialized", why),
            ),
            State::Refused(r) => (
                cond("LoadBalancerReady", "False", r.reason, &r.message),
                cond("Ready", "False", r.reason, &r.message),
            ),
        };
        json!({
            "observedGeneration": generation,
            // Sorted by type, as Knative keeps them.
            "conditions": [lb_cond, cond("NetworkConfigured", "True", "", ""), ready],
            "publicLoadBalancer": lb(&self.settings.class.public_service),
            "privateLoadBalancer": lb(&self.settings.class.private_service),
        })
    }

    async fn write_status(&self, obj: &DynamicObject, mut status: Value) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        if let Some(cs) = status["conditions"].as_array_mut() {
            for c in cs {
                c["lastTransitionTime"] = json!(now);
            }
        }
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &ingress_resource());
        let patch = json!({"status": status});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(ingress = %format!("{ns}/{name}"), "cannot write the Ingress's status: {e}");
        }
    }
}

enum State {
    Ready,
    Probing(String),
    Refused(Refusal),
}

/// Whether a stored status says Ready for `generation`.
fn is_ready(status: Option<&Value>, generation: i64) -> bool {
    let Some(st) = status else { return false };
    st["observedGeneration"].as_i64() == Some(generation)
        && st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether the stored status already says what `want` says (times aside).
fn same_status(have: Option<&Value>, want: &Value) -> bool {
    let Some(have) = have else { return false };
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs.iter_mut() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                    o.remove("severity");
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("annotations");
        }
        v
    };
    strip(have) == strip(want)
}

/// [`Lookup`] over the Service store.
struct ClusterLookup {
    services: HashMap<(String, String), Arc<Service>>,
    /// `ExternalName` Services: the name and its addresses (port 0: the split's port).
    resolved: HashMap<(String, String), (String, Vec<SocketAddr>)>,
    internal: SocketAddr,
}

impl Lookup for ClusterLookup {
    fn backend(
        &self,
        namespace: &str,
        name: &str,
        port: &spec::IntOrString,
    ) -> Result<Backend, String> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(svc) = self.services.get(&key) else {
            return Err(format!(
                "Service {namespace}/{name} does not exist; create it or change the split"
            ));
        };
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let found = ports.iter().find(|p| match port {
            spec::IntOrString::Int(n) => i64::from(p.port) == *n,
            spec::IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
        });
        let h2c_port = |p: &k8s_openapi::api::core::v1::ServicePort| {
            matches!(p.name.as_deref(), Some("h2c" | "http2"))
                || p.app_protocol.as_deref() == Some("kubernetes.io/h2c")
        };
        if let Some((ext, addrs)) = self.resolved.get(&key) {
            let n = match (port, found) {
                (_, Some(p)) => u16::try_from(p.port).unwrap_or(80),
                (spec::IntOrString::Int(n), None) => u16::try_from(*n).unwrap_or(80),
                _ => 80,
            };
            if addrs.is_empty() {
                return Err(format!(
                    "Service {namespace}/{name} is an ExternalName for {ext:?}, which does not resolve"
                ));
            }
            let addrs = addrs
                .iter()
                .map(|a| {
                    if *a == self.internal {
                        *a
                    } else {
                        SocketAddr::new(a.ip(), n)
                    }
                })
                .collect();
            return Ok(Backend::Addrs {
                addrs,
                h2c: found.is_some_and(h2c_port),
            });
        }
        let Some(p) = found else {
            let list: Vec<String> = ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} ({})", p.port),
                    None => p.port.to_string(),
                })
                .collect();
            return Err(format!(
                "Service {namespace}/{name} has no port {port}; its ports are: {}",
                list.join(", ")
            ));
        };
        Ok(Backend::Pods {
            port: p.name.clone().filter(|n| !n.is_empty()),
            h2c: h2c_port(p),
        })
    }
}

/// The address this replica reaches its own cluster-local listener at.
pub fn local_addr(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
    } else {
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comparison_ignores_times() {
        let want =
            json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]});
        let have = json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "x", "severity": ""}]});
        assert!(same_status(Some(&have), &want));
        let older =
            json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]});
        assert!(!same_status(Some(&older), &want));
        assert!(!same_status(None, &want));
    }
}
