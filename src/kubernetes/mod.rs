//! Kubernetes as a source of endpoints and a runner of backends (the `kubernetes` feature):
//! a revision with a `kubernetes` section gets the ready pods of a Service, watched through
//! its EndpointSlices ([`endpoints`]); one whose `scale` names a Deployment or StatefulSet is
//! scaled through the `scale` subresource by the same autoscaler that runs local processes
//! ([`workload`]); replicas of rouse elect one of them to make the decisions that could fight
//! ([`lease`]), and the one elected adds the others' demand to its own ([`peers`]); and
//! whatever rouse cannot get from the cluster is said in words on `/readyz` and in metrics
//! ([`health`]).
//!
//! Nothing here runs until a config has a revision with a `kubernetes` section: then the
//! client is made from `KUBECONFIG` or `~/.kube/config` if there is one, else from the pod's
//! service account.

pub mod activation;
pub mod activator;
pub mod endpoints;
pub mod health;
pub mod ingress;
pub mod inject;
pub mod lease;
pub mod peers;
pub mod workload;

use self::endpoints::Target;
use self::health::{Health, HealthMetrics};
use self::peers::PeerTable;
use self::workload::{Workload, WorkloadScaler};
use crate::config::{self, Config, PortRef};
use crate::discovery::{Readiness, Source};
use crate::metrics::Metrics;
use crate::revision::Revision;
use crate::scale::scaler::{MakeScaler, Scaler};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

/// How long a (re)load waits for new watches to list their endpoints before it starts the
/// scalers anyway (they then start from what is known).
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// Background tasks with the switch that stops them.
type Tasks = (watch::Sender<bool>, Vec<JoinHandle<()>>);

/// One revision's watch.
#[derive(Debug)]
struct Watch {
    target: Target,
    /// How the pods are used: probed while not ready, shared with other activators.
    mode: (bool, Option<String>),
    rev: Arc<Revision>,
    stop: watch::Sender<bool>,
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// The cluster side of a gateway.
pub struct Kube {
    settings: config::Kubernetes,
    health: Arc<Health>,
    /// Made when first needed; tried again on each load while there are no credentials.
    client: SyncMutex<Option<Client>>,
    /// The last load had revisions with a `kubernetes` section.
    wanted: std::sync::atomic::AtomicBool,
    /// The namespace rouse runs in: the default for revisions and the Lease.
    own_namespace: String,
    /// This replica's name in the Lease.
    identity: String,
    leader: watch::Sender<bool>,
    /// The election, and the leader's reading of its peers, stopped together.
    election: SyncMutex<Option<Tasks>>,
    watches: Mutex<HashMap<(String, String), Watch>>,
    /// The other replicas' demand, as the leader last read it.
    peer_demand: Arc<PeerTable>,
    /// The revisions this replica reports to the leader.
    tracked: SyncMutex<Vec<Arc<Revision>>>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("identity", &self.identity)
            .field("own_namespace", &self.own_namespace)
            .field("connected", &self.current_client().is_some())
            .finish_non_exhaustive()
    }
}

impl Kube {
    /// The Kubernetes source of a gateway with `settings` (nothing connects yet).
    pub fn new(settings: &config::Kubernetes, metrics: &Metrics) -> Kube {
        let health = Arc::new(Health::default());
        health.synced.store(true, Ordering::Relaxed);
        metrics.add_collector(Box::new(HealthMetrics(health.clone())));
        let own_namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "rouse".to_owned());
            format!("{host}-{}", std::process::id())
        });
        Kube {
            settings: settings.clone(),
            health,
            client: SyncMutex::new(None),
            wanted: std::sync::atomic::AtomicBool::new(false),
            own_namespace,
            identity,
            leader: watch::channel(false).0,
            election: SyncMutex::new(None),
            watches: Mutex::new(HashMap::new()),
            peer_demand: Arc::default(),
            tracked: SyncMutex::new(Vec::new()),
        }
    }

    /// What rouse cannot get from the cluster, for whoever else talks to it.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The namespace rouse runs in.
    pub fn own_namespace(&self) -> &str {
        &self.own_namespace
    }

    fn current_client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The client, made on first use; `None` (and a problem on `/readyz`, which stays 503)
    /// when there are no credentials to make one from. Tried again on the next load.
    async fn client(&self) -> Option<Client> {
        if let Some(c) = self.current_client() {
            return Some(c);
        }
        match Client::try_default().await {
            Ok(c) => {
                self.health.clear("connection");
                *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                let why = format!(
                    "no Kubernetes credentials: KUBECONFIG and ~/.kube/config give none, and rouse is not in a pod with a service account ({e}); fix that and restart rouse, or change its config file, which makes it look again"
                );
                error!("{why}");
                self.health.report("connection", &why);
                None
            }
        }
    }

    fn namespace_of(&self, k: &config::KubeEndpoints) -> String {
        k.namespace
            .clone()
            .or_else(|| self.settings.namespace.clone())
            .unwrap_or_else(|| self.own_namespace.clone())
    }

    /// Starts the election once some revision scales a workload.
    fn elect(&self, client: &Client) {
        let mut e = self.election.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_some() {
            return;
        }
        let namespace = self
            .settings
            .lease
            .namespace
            .clone()
            .unwrap_or_else(|| self.own_namespace.clone());
        let election = lease::Election {
            name: self.settings.lease.name.clone(),
            namespace: namespace.clone(),
            identity: self.identity.clone(),
            duration: self.settings.lease.duration.0,
        };
        info!(lease = %format!("{namespace}/{}", election.name), identity = %election.identity, "joining leader election");
        let (stop, rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(lease::run(
            Api::<Lease>::namespaced(client.clone(), &namespace),
            election,
            self.health.clone(),
            self.leader.clone(),
            rx.clone(),
        ))];
        if let Some(p) = &self.settings.peers {
            let (addrs, peers) = watch::channel(Vec::new());
            let target = Target {
                namespace: p
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.own_namespace.clone()),
                service: p.service.clone(),
                port: Some(p.port.clone()),
                grpc_port: None,
            };
            tasks.push(tokio::spawn(endpoints::follow(
                client.clone(),
                target,
                peers::AddrSink(addrs),
                self.health.clone(),
                watch::channel(false).0,
                rx.clone(),
            )));
            tasks.push(tokio::spawn(peers::run(
                self.identity.clone(),
                peers,
                self.leader.subscribe(),
                self.peer_demand.clone(),
                self.health.clone(),
                rx,
            )));
        }
        *e = Some((stop, tasks));
    }

    async fn sync_watches(&self, cfg: &Config, revisions: &[Arc<Revision>]) {
        let wanted: Vec<(&config::Service, &config::Revision, &config::KubeEndpoints)> = cfg
            .services
            .iter()
            .flat_map(|s| s.revisions.iter().map(move |r| (s, r)))
            .filter_map(|(s, r)| r.kubernetes.as_ref().map(|k| (s, r, k)))
            .collect();
        let mut watches = self.watches.lock().await;
        self.wanted.store(!wanted.is_empty(), Ordering::Relaxed);
        if wanted.is_empty() {
            // Credentials matter only while something needs them.
            self.health.clear("connection");
        }
        if wanted.is_empty() && watches.is_empty() {
            return;
        }
        let Some(client) = self.client().await else {
            return;
        };
        if wanted
            .iter()
            .any(|(_, r, _)| r.scale.as_ref().is_some_and(|s| s.workload().is_some()))
        {
            self.elect(&client);
        }
        let mut next = HashMap::new();
        let mut fresh = Vec::new();
        for (s, r, k) in wanted {
            let Some(rev) = revisions
                .iter()
                .find(|x| *x.service == *s.name && *x.name == *r.name)
            else {
                continue;
            };
            let key = (s.name.clone(), r.name.clone());
            let target = Target {
                namespace: self.namespace_of(k),
                service: k.service.clone(),
                port: k.port.clone(),
                grpc_port: k.grpc_port.clone(),
            };
            let mode = (k.probe_not_ready, k.shared_by.clone());
            if let Some(w) = watches.remove(&key) {
                if w.target == target && w.mode == mode && Arc::ptr_eq(&w.rev, rev) {
                    next.insert(key, w);
                    continue;
                }
                let _ = w.stop.send(true);
                let _ = w.task.await;
            }
            let (stop, stop_rx) = watch::channel(false);
            let (synced_tx, synced) = watch::channel(false);
            let own_ip = cfg.kubernetes.activator.as_ref().and_then(|a| a.pod_ip);
            let share = match (&k.shared_by, own_ip) {
                (Some(s), Some(own)) => Some((
                    client.clone(),
                    activation::Share {
                        // Knative's public Service lists each activator on two ports (http
                        // or http2 by protocol, and https); one is enough to find it.
                        target: Target {
                            namespace: target.namespace.clone(),
                            service: s.clone(),
                            port: Some(PortRef::Name(
                                if r.protocol == config::Protocol::H2c {
                                    "http2"
                                } else {
                                    "http"
                                }
                                .to_owned(),
                            )),
                            grpc_port: None,
                        },
                        own,
                    },
                    self.health.clone(),
                )),
                _ => None,
            };
            let task = if k.probe_not_ready || share.is_some() {
                tokio::spawn(endpoints::follow(
                    client.clone(),
                    target.clone(),
                    activation::PodSink::start(rev.clone(), k.probe_not_ready, share),
                    self.health.clone(),
                    synced_tx,
                    stop_rx,
                ))
            } else {
                tokio::spawn(endpoints::follow(
                    client.clone(),
                    target.clone(),
                    endpoints::RevisionSink(rev.clone()),
                    self.health.clone(),
                    synced_tx,
                    stop_rx,
                ))
            };
            fresh.push(synced.clone());
            next.insert(
                key,
                Watch {
                    target,
                    mode,
                    rev: rev.clone(),
                    stop,
                    synced,
                    task,
                },
            );
        }
        for (_, w) in watches.drain() {
            let _ = w.stop.send(true);
            w.task.abort();
        }
        *self.tracked.lock().unwrap_or_else(|p| p.into_inner()) =
            next.values().map(|w| w.rev.clone()).collect();
        *watches = next;
        drop(watches);
        // Scalers start from the endpoints that exist, so they are known first (within
        // reason: an API server that is away does not hold the gateway's start up).
        let _ = tokio::time::timeout(FIRST_LIST_WAIT, async {
            for mut s in fresh {
                let _ = s.wait_for(|v| *v).await;
            }
        })
        .await;
    }
}

impl Source for Kube {
    fn sync<'a>(
        &'a self,
        cfg: &'a Config,
        revisions: &'a [Arc<Revision>],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.sync_watches(cfg, revisions))
    }

    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for (_, w) in self.watches.lock().await.drain() {
                let _ = w.stop.send(true);
                let _ = w.task.await;
            }
            let election = self
                .election
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some((stop, tasks)) = election {
                // Releases the Lease, so the next leader need not wait for it to expire.
                let _ = stop.send(true);
                for t in tasks {
                    let _ = t.await;
                }
            }
        })
    }

    fn readiness(&self) -> Readiness {
        let watches = self.watches.try_lock();
        let listed = match &watches {
            Ok(w) => w.values().all(|w| *w.synced.borrow()),
            // A reload is changing the watches; keep the last answer.
            Err(_) => self.health.synced.load(Ordering::Relaxed),
        } && (!self.wanted.load(Ordering::Relaxed) || self.current_client().is_some());
        self.health.synced.store(listed, Ordering::Relaxed);
        let mut notes = self.health.problems();
        if !listed && self.current_client().is_some() {
            notes.insert(
                0,
                "kubernetes: waiting for the first list of EndpointSlices".to_owned(),
            );
        }
        let ingress_pending = self.health.ingress_pending.load(Ordering::Relaxed);
        if ingress_pending {
            notes.insert(
                0,
                "kubernetes: the first pass over Knative's Ingresses has not finished".to_owned(),
            );
        }
        let revisions_pending = self.health.revisions_pending.load(Ordering::Relaxed);
        if revisions_pending {
            notes.insert(
                0,
                "kubernetes: Knative's Revisions have not been listed yet".to_owned(),
            );
        }
        Readiness {
            ready: listed && !ingress_pending && !revisions_pending,
            notes,
        }
    }

    fn page(&self, path: &str) -> Option<String> {
        (path == peers::PATH).then(|| {
            let tracked = self
                .tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            peers::demand_text(&self.identity, &tracked)
        })
    }

    fn maker(self: Arc<Self>) -> Option<Arc<dyn MakeScaler>> {
        Some(self)
    }
}

impl MakeScaler for Kube {
    fn make(&self, rev: &Arc<Revision>, cfg: &config::Revision) -> Option<Arc<dyn Scaler>> {
        let (kind, name) = cfg.scale.as_ref()?.workload()?;
        let k = cfg.kubernetes.as_ref()?;
        let client = self.current_client()?;
        let workload = Workload {
            kind,
            namespace: self.namespace_of(k),
            name: name.to_owned(),
        };
        Some(Arc::new(WorkloadScaler::start(
            client,
            workload,
            rev.clone(),
            self.health.clone(),
            self.leader.subscribe(),
            self.peer_demand.clone(),
            cfg.scale.as_ref()?.stable_window.0,
        )))
    }
}
