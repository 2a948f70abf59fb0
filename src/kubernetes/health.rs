//! What rouse cannot get from the cluster right now, in words an operator can act on: each
//! problem names the object, the namespace and the verb, and stays listed until it clears.
//! `/readyz` shows them, and `rouse_kubernetes_problem` exports them as metrics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The current problems, keyed by what they concern.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, String>>,
    errors: AtomicU64,
    /// This replica holds the Lease.
    pub leader: AtomicBool,
    /// Every watch has listed its objects once or failed (then what it knows is all there
    /// is for now), and there are credentials: as of the last `/readyz`.
    pub synced: AtomicBool,
    /// The Ingress controller has not finished its first pass: this replica does not serve
    /// the cluster's Ingresses yet.
    pub ingress_pending: AtomicBool,
    /// The Revision watcher has not listed Knative's Revisions yet: this replica cannot route
    /// requests for them.
    pub revisions_pending: AtomicBool,
}

/// A client from the default credentials (`KUBECONFIG`, `~/.kube/config`, or the pod's service
/// account), tried every 5 s until one is made; each failure is said on `/readyz` under `key`,
/// as having no credentials `purpose`. `None` when `stop` changes first.
pub async fn client_until(
    health: &Health,
    key: &str,
    purpose: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<kube::Client> {
    loop {
        match kube::Client::try_default().await {
            Ok(c) => {
                health.clear(key);
                return Some(c);
            }
            Err(e) => {
                let why = format!(
                    "no Kubernetes credentials {purpose} ({e}); rouse tries again every 5s"
                );
                tracing::warn!("{why}");
                health.report(key, &why);
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = stop.changed() => return None,
                }
            }
        }
    }
}

impl Health {
    /// Records (or updates) the problem with `what`.
    pub fn report(&self, what: &str, why: &str) {
        self.lock().insert(what.to_owned(), why.to_owned());
    }

    /// Counts a failed call or broken watch to the API server.
    pub fn api_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Clears the problem with `what`, if any.
    pub fn clear(&self, what: &str) {
        let mut p = self.lock();
        if p.contains_key(what) {
            p.remove(what);
        }
    }

    /// The current problems as `what: why` lines.
    pub fn problems(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(w, y)| format!("{w}: {y}"))
            .collect()
    }

    /// The current problem with `what`, if any.
    pub fn problem(&self, what: &str) -> Option<String> {
        self.lock().get(what).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Says what a failed call to the API server means, for the object and `action` it was
/// about ("patch deployments/scale hello in namespace apps").
pub fn describe(e: &kube::Error, action: &str) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden to {action}: {}; give rouse's ServiceAccount that permission (see deploy/rbac.yaml)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 => {
            format!("cannot {action}: not found ({})", s.message)
        }
        kube::Error::Api(s) if s.code == 401 => format!(
            "cannot {action}: the API server does not accept rouse's credentials ({})",
            s.message
        ),
        kube::Error::Api(s) => format!("cannot {action}: {} {} ({})", s.code, s.reason, s.message),
        other => format!("cannot {action}: the Kubernetes API server is unreachable ({other})"),
    }
}

/// `call`, or a failure saying that the API server did not answer within `limit`: a call
/// that hangs counts as failed.
pub async fn within<T>(
    limit: std::time::Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(kube::Error::Service(
            format!("no answer from the API server within {limit:?}").into(),
        ))
    })
}

/// [`describe`] for a broken watch.
pub fn describe_watch(e: &kube::runtime::watcher::Error, action: &str) -> String {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => describe(e, action),
        W::WatchError(s) => describe(&kube::Error::Api(s.clone()), action),
        W::NoResourceVersion => format!("cannot {action}: the API server sent no resourceVersion"),
    }
}

/// Exports [`Health`] as metrics.
#[derive(Debug)]
pub struct HealthMetrics(pub std::sync::Arc<Health>);

impl Collector for HealthMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "rouse_kubernetes_problem",
            "1 for each thing rouse cannot currently get from the cluster (see /readyz for the words)",
            None,
            gauge.metric_type(),
        )?;
        for what in h.lock().keys() {
            ConstGauge::new(1i64).encode(e.encode_family(&[("what", what.as_str())])?)?;
        }
        let counter = ConstCounter::new(0u64);
        let e = encoder.encode_descriptor(
            "rouse_kubernetes_api_errors",
            "Failed calls and broken watches to the Kubernetes API server",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(h.errors.load(Ordering::Relaxed)).encode(e)?;
        for (name, help, v) in [
            (
                "rouse_kubernetes_leader",
                "1 while this replica holds the Lease and makes scale decisions",
                &h.leader,
            ),
            (
                "rouse_kubernetes_synced",
                "1 once every watch has listed its Service's endpoints or failed, with credentials in place (as of the last /readyz)",
                &h.synced,
            ),
        ] {
            let e = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            ConstGauge::new(i64::from(v.load(Ordering::Relaxed))).encode(e)?;
        }
        Ok(())
    }
}
