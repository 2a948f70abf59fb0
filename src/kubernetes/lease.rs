//! Leader election among rouse replicas with a `coordination.k8s.io/v1` Lease, so that one
//! replica makes the scale decisions that could fight (above one, and down to zero).
//!
//! The protocol is client-go's: the holder renews `renewTime` every `duration / 5`; another
//! replica takes the Lease over once it has seen the record unchanged for a whole `duration`
//! on its own clock (so clock skew between nodes does not matter). Every write carries the
//! `resourceVersion` it read, so two replicas racing for the Lease cannot both win. A holder
//! that cannot renew for two thirds of `duration` stops acting as leader before anyone else
//! may start. On shutdown the holder releases the Lease, and the next replica takes over at
//! its next attempt instead of waiting out the duration.

use super::health::{Health, describe, within};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Who this replica is and which Lease it competes for.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace, for messages.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long an unrenewed Lease stays with its holder.
    pub duration: Duration,
}

/// Competes for the Lease until `stop` turns true, keeping `leader` up to date.
pub async fn run(
    api: Api<Lease>,
    e: Election,
    health: Arc<Health>,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let what = format!("Lease {}/{}", e.namespace, e.name);
    let retry = e.duration / 5;
    let renew_deadline = e.duration * 2 / 3;
    // The record as last seen, and when (on our clock) it last changed.
    let mut observed: Option<(String, Instant)> = None;
    let mut renewed_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // A call that hangs counts as failed, and a leader's call may not last past the
        // moment it must step down: it has to notice in time.
        let limit = match renewed_at.filter(|_| *leader.borrow()) {
            Some(t) => retry.min((t + renew_deadline).saturating_duration_since(now)),
            None => retry,
        };
        match within(limit, attempt(&api, &e, &mut observed, now)).await {
            Ok(held) => {
                health.clear(&what);
                if held {
                    renewed_at = Some(now);
                }
                set_leader(&leader, &health, held, &e);
            }
            Err(err) => {
                health.api_error();
                let why = describe(
                    &err,
                    &format!(
                        "get, create and update Lease {} in namespace {}",
                        e.name, e.namespace
                    ),
                );
                health.report(&what, &why);
                warn!("leader election: {why}");
                // A leader that cannot renew steps down before its Lease can expire for others.
                let now = Instant::now();
                if renewed_at.is_none_or(|t| now.duration_since(t) >= renew_deadline) {
                    set_leader(&leader, &health, false, &e);
                }
            }
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            () = tokio::time::sleep(retry) => {}
        }
    }
    // Stop acting as leader first, then give the Lease up: never two leaders at once.
    let was_leading = *leader.borrow();
    set_leader(&leader, &health, false, &e);
    if was_leading {
        let _ = tokio::time::timeout(retry, release(&api, &e)).await;
    }
}

fn set_leader(tx: &watch::Sender<bool>, health: &Health, leading: bool, e: &Election) {
    health.leader.store(leading, Ordering::Relaxed);
    // Only a change is sent: those who wait on it act on a change of leadership, not on every
    // renewal.
    let changed = tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
    if changed {
        if leading {
            info!(lease = %e.name, identity = %e.identity, "became the leader: this replica makes scale decisions");
        } else {
            info!(lease = %e.name, identity = %e.identity, "no longer the leader");
        }
    }
}

/// One round: creates, renews or takes over the Lease if it may. Returns whether this
/// replica holds it now.
async fn attempt(
    api: &Api<Lease>,
    e: &Election,
    observed: &mut Option<(String, Instant)>,
    now: Instant,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&e.name).await? else {
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(e.name.clone()),
                ..Default::default()
            },
            spec: Some(held_by(e, None, 0)),
        };
        return match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    if observed.as_ref().is_none_or(|(v, _)| *v != version) {
        *observed = Some((version, now));
    }
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(e.duration, Duration::from_secs);
    let unchanged_for = observed
        .as_ref()
        .map_or(Duration::ZERO, |(_, t)| now.duration_since(*t));
    let transitions = spec.lease_transitions.unwrap_or(0);
    let next = if holder == e.identity {
        // Renewing: same acquire time, same transition count.
        held_by(e, spec.acquire_time.clone(), transitions)
    } else if holder.is_empty() || unchanged_for >= duration {
        if !holder.is_empty() {
            info!(lease = %e.name, previous = %holder, "the leader stopped renewing; taking over");
        }
        held_by(e, None, transitions + 1)
    } else {
        return Ok(false);
    };
    lease.spec = Some(next);
    match api.replace(&e.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else wrote first; we read again next round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

fn held_by(e: &Election, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(e.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Gives the Lease up so the next replica need not wait for it to expire.
async fn release(api: &Api<Lease>, e: &Election) {
    let Ok(Some(mut lease)) = api.get_opt(&e.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(err) = api.replace(&e.name, &PostParams::default(), &lease).await {
        warn!("releasing Lease {}/{}: {err}", e.namespace, e.name);
    } else {
        info!(lease = %e.name, "released the Lease");
    }
}
