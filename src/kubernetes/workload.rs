//! Scaling a Deployment or StatefulSet through its `scale` subresource, as a
//! [`Scaler`]: the autoscaler says how many pods it wants, and this writes `spec.replicas`.
//!
//! With several rouse replicas only the Lease holder writes counts above one and scale-downs,
//! so two replicas never fight over a number. Any replica may take a workload *from zero to
//! one*: that write carries the `resourceVersion` it read, so it only happens while the
//! workload really is at zero and can never undo a larger count the leader has just written.
//! The patch is sent the moment the wish changes: the first request held for a revision at
//! zero starts its pod without waiting for a tick.
//!
//! A write that fails (the workload does not exist, RBAC forbids it, the API server is away)
//! is retried with backoff; meanwhile held requests for a revision with no endpoint get a 503
//! that says why, instead of waiting for their timeout.

use super::health::{Health, describe, within};
use super::peers::PeerTable;
use crate::config::WorkloadKind;
use crate::revision::Revision;
use crate::scale::scaler::{Backoff, PeerLoad, Scaler};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Which workload a revision scales.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Workload {
    fn resource(&self) -> &'static str {
        match self.kind {
            WorkloadKind::Deployment => "deployments/scale",
            WorkloadKind::StatefulSet => "statefulsets/scale",
        }
    }

    async fn get_scale(&self, client: &Client) -> Result<Scale, kube::Error> {
        match self.kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(client.clone(), &self.namespace)
                    .get_scale(&self.name)
                    .await
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(client.clone(), &self.namespace)
                    .get_scale(&self.name)
                    .await
            }
        }
    }

    async fn patch_scale(
        &self,
        client: &Client,
        patch: serde_json::Value,
    ) -> Result<Scale, kube::Error> {
        let pp = PatchParams::default();
        let patch = Patch::Merge(patch);
        match self.kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(client.clone(), &self.namespace)
                    .patch_scale(&self.name, &pp, &patch)
                    .await
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(client.clone(), &self.namespace)
                    .patch_scale(&self.name, &pp, &patch)
                    .await
            }
        }
    }
}

/// The scaler of one revision backed by a workload.
pub struct WorkloadScaler {
    client: Client,
    workload: Workload,
    rev: Arc<Revision>,
    peers: Arc<PeerTable>,
    want: watch::Sender<Option<u32>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WorkloadScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadScaler")
            .field("workload", &self.workload)
            .field("want", &*self.want.borrow())
            .finish_non_exhaustive()
    }
}

impl WorkloadScaler {
    /// Starts writing `workload`'s replicas for `rev`; `leader` says whether this replica
    /// holds the Lease.
    pub fn start(
        client: Client,
        workload: Workload,
        rev: Arc<Revision>,
        health: Arc<Health>,
        leader: watch::Receiver<bool>,
        peers: Arc<PeerTable>,
        hold: Duration,
    ) -> WorkloadScaler {
        // No wish until the autoscaler says one: a leader must not take a placeholder for a
        // request to scale to zero.
        let (want, want_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            client.clone(),
            workload.clone(),
            rev.clone(),
            health,
            leader,
            want_rx,
            stop_rx,
            hold,
        ));
        WorkloadScaler {
            client,
            workload,
            rev,
            peers,
            want,
            stop,
            task: Mutex::new(Some(task)),
        }
    }
}

impl Scaler for WorkloadScaler {
    fn scale(&self, desired: u32) {
        self.want.send_replace(Some(desired));
    }

    /// What the other replicas see, while this one leads (empty otherwise).
    fn peer_load(&self) -> PeerLoad {
        self.peers.get(&self.rev.service, &self.rev.name)
    }

    /// The workload's `spec.replicas` (0 if it cannot be read: the writes will say why).
    fn existing(&self) -> Pin<Box<dyn Future<Output = u32> + Send + '_>> {
        Box::pin(async move {
            within(CALL_TIMEOUT, self.workload.get_scale(&self.client))
                .await
                .ok()
                .and_then(|s| s.spec?.replicas)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        })
    }

    /// Stops writing. The pods stay as they are: they belong to the cluster, and the next
    /// rouse (or this one after a reload) takes them over.
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            if let Some(t) = task {
                let _ = t.await;
            }
        })
    }
}

/// What one round achieved.
enum Wrote {
    /// The workload has the count this replica may set.
    Done,
    /// Another writer changed it in between; read again.
    Conflict,
    /// A new leader does not cut the count yet (see [`run`]'s hold); try again after this.
    Held(Duration),
}

/// While requests wait for a workload at zero, how often the count is read again (someone
/// may have set it to zero behind rouse's back, or the leader may not know of them).
const COLD_RECHECK: Duration = Duration::from_secs(1);

/// Longest wait for one call to the API server: a hung call must not stall scaling.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `workload`'s count as the autoscaler wishes, under these rules:
/// - nothing is written before the autoscaler's first wish;
/// - for `hold` (the autoscaler's stable window) after this scaler first leads, it never lowers
///   the workload's count: its own window does not yet hold the demand it should decide on
///   (its peers', or any at all after a restart), and the pods there may be serving it;
/// - the same wish repeated (the autoscaler says it again for every request that finds no pod)
///   starts no round before the pause of the last one is over, so a failing write is retried
///   at its backoff, not at the rate of requests.
#[allow(clippy::too_many_arguments)]
async fn run(
    client: Client,
    workload: Workload,
    rev: Arc<Revision>,
    health: Arc<Health>,
    mut leader: watch::Receiver<bool>,
    mut want: watch::Receiver<Option<u32>>,
    mut stop: watch::Receiver<bool>,
    hold: Duration,
) {
    let what = format!("scaling {workload}");
    let mut backoff = Backoff::new(Duration::from_secs(30));
    // The count this replica last wrote or found as leader, so it writes only changes.
    let mut written: Option<u32> = None;
    let mut leading_since: Option<tokio::time::Instant> = None;
    // The last round's (wish, leadership), and the earliest time the same may run again.
    let mut last: Option<(u32, bool)> = None;
    let mut not_before: Option<tokio::time::Instant> = None;
    loop {
        let wish = *want.borrow_and_update();
        let leading = *leader.borrow_and_update();
        // Nothing to do yet: no wish, or the same one before its pause is over.
        let waiting = match wish {
            None => true,
            Some(d) => {
                last == Some((d, leading))
                    && not_before.is_some_and(|t| t > tokio::time::Instant::now())
            }
        };
        if waiting {
            match wait(not_before, &mut stop, &mut want, &mut leader).await {
                None => break,
                Some(timer) => {
                    if timer {
                        not_before = None;
                    }
                    continue;
                }
            }
        }
        let desired = wish.unwrap_or(0);
        match (leading, leading_since) {
            (true, None) => leading_since = Some(tokio::time::Instant::now()),
            (false, _) => {
                leading_since = None;
                written = None;
            }
            _ => {}
        }
        // Requests are waiting and there is no pod: make sure one is coming.
        let cold_wanted = desired > 0 && rev.is_cold();
        let round = async {
            if leading {
                let fresh = leading_since.map(|t| hold.saturating_sub(t.elapsed()));
                lead(
                    &client,
                    &workload,
                    &rev,
                    desired,
                    &mut written,
                    fresh,
                    cold_wanted,
                )
                .await
            } else if desired > 0 {
                from_zero(&client, &workload, &rev).await
            } else {
                Ok(Wrote::Done)
            }
        };
        let result = within(CALL_TIMEOUT, round).await.map_err(|e| {
            let action = format!(
                "get and patch {} {} in namespace {}",
                workload.resource(),
                workload.name,
                workload.namespace
            );
            describe(&e, &action)
        });
        let pause = match result {
            Ok(Wrote::Done) => {
                health.clear(&what);
                backoff.reset();
                if desired > 0 {
                    // The count is right: a failure from before (a call that timed out but
                    // landed) no longer stands.
                    rev.clear_failure();
                }
                cold_wanted.then_some(COLD_RECHECK)
            }
            Ok(Wrote::Conflict) => Some(Duration::ZERO),
            Ok(Wrote::Held(d)) => Some(d),
            Err(why) => {
                let retry = backoff.fail();
                health.api_error();
                health.report(&what, &why);
                warn!(service = %rev.service, revision = %rev.name, "{why}; retrying in {retry:?}");
                if cold_wanted {
                    rev.fail_start(&why, retry);
                }
                Some(retry)
            }
        };
        last = Some((desired, leading));
        not_before = pause.map(|d| tokio::time::Instant::now() + d);
        match wait(not_before, &mut stop, &mut want, &mut leader).await {
            None => break,
            Some(true) => not_before = None,
            Some(false) => {}
        }
    }
    // Whatever this scaler could not do is no longer anyone's problem.
    health.clear(&what);
}

/// Waits until `until` (forever if none) or a change of the wish or of leadership: `None` when
/// the scaler is to stop, else whether it was the time that came.
async fn wait(
    until: Option<tokio::time::Instant>,
    stop: &mut watch::Receiver<bool>,
    want: &mut watch::Receiver<Option<u32>>,
    leader: &mut watch::Receiver<bool>,
) -> Option<bool> {
    tokio::select! {
        biased;
        r = stop.changed() => (r.is_ok() && !*stop.borrow()).then_some(false),
        r = want.changed() => r.is_ok().then_some(false),
        r = leader.changed() => r.is_ok().then_some(false),
        () = crate::clock::sleep_until_opt(until) => Some(true),
    }
}

/// The leader's round. A first pod for waiting requests is written at once, unread (the
/// fast path of a cold start), once the hold is over. Anything else reads the count first:
/// an equal one needs no write, and during the hold (`fresh`: what is left of it) a lower one
/// is not written.
async fn lead(
    client: &Client,
    w: &Workload,
    rev: &Revision,
    desired: u32,
    written: &mut Option<u32>,
    fresh: Option<Duration>,
    cold_wanted: bool,
) -> Result<Wrote, kube::Error> {
    let holding = fresh.is_some_and(|d| !d.is_zero());
    if cold_wanted && !holding && *written != Some(desired) {
        let r = write(client, w, rev, desired, None).await?;
        *written = Some(desired);
        return Ok(r);
    }
    if *written == Some(desired) && !cold_wanted {
        return Ok(Wrote::Done);
    }
    let scale = w.get_scale(client).await?;
    let have = scale
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    if have == desired {
        *written = Some(desired);
        return Ok(Wrote::Done);
    }
    if cold_wanted && desired <= have {
        // At least the pods wanted are on their way (another writer's count); none is cut
        // while requests wait for them.
        return Ok(Wrote::Done);
    }
    if desired < have && holding {
        return Ok(Wrote::Held(fresh.unwrap_or_default()));
    }
    let r = write(client, w, rev, desired, scale.metadata.resource_version).await?;
    if matches!(r, Wrote::Done) {
        *written = Some(desired);
    }
    Ok(r)
}

/// A follower's write: 0 → 1 only, and only if nobody changed the count since it was read.
async fn from_zero(client: &Client, w: &Workload, rev: &Revision) -> Result<Wrote, kube::Error> {
    let scale = w.get_scale(client).await?;
    let replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    if replicas > 0 {
        return Ok(Wrote::Done);
    }
    write(client, w, rev, 1, scale.metadata.resource_version).await
}

/// Sets the replicas to `n`, only on top of `version` when one is given.
async fn write(
    client: &Client,
    w: &Workload,
    rev: &Revision,
    n: u32,
    version: Option<String>,
) -> Result<Wrote, kube::Error> {
    let mut patch = serde_json::json!({ "spec": { "replicas": n } });
    if let Some(v) = version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    match w.patch_scale(client, patch).await {
        Ok(_) => {
            info!(service = %rev.service, revision = %rev.name, replicas = n, "scaled {w}");
            rev.clear_failure();
            Ok(Wrote::Done)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Wrote::Conflict),
        Err(e) => Err(e),
    }
}
