//! rouse's share of a cold start on Kubernetes, with the real control plane and local node of
//! the Kubernetes tests (`tests/k8s`).
//!
//! Each round: the Deployment is at zero; a client sends one request through rouse; this
//! program watches the Deployment and the Service's EndpointSlices itself and notes when
//! `spec.replicas` turns 1 (rouse's patch has landed) and when a ready endpoint appears (the
//! pod has booted and the EndpointSlice controller has listed it). Then:
//! - reaction = patch seen − request sent: rouse holding the request and patching the scale;
//! - forward = response received − ready endpoint seen: rouse learning of the pod and
//!   forwarding the held request (includes the test app's own ~1 ms answer);
//! - rouse's share = reaction + forward; the rest (controllers, scheduling, boot) is the pod's.
//!
//! The reaction contains the API server's own write path and the watch's delivery to this
//! program. To tell them apart, the benchmark first makes the same kind of write itself (a
//! merge patch of a Deployment's scale subresource, from a client like rouse's) and times it to
//! the moment its own watch sees it: subtracting that baseline leaves rouse's part.
//!
//! `cargo bench --features kubernetes --bench k8s_cold_start [-- ROUNDS]`

#[allow(dead_code)]
#[path = "../tests/k8s/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../tests/k8s/conformance.rs"]
mod conformance;
#[allow(dead_code)]
#[path = "../tests/k8s/dns.rs"]
mod dns;
#[allow(dead_code)]
#[path = "../tests/k8s/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../tests/k8s/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "../tests/k8s/serving.rs"]
mod serving;

#[allow(unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use env::{ROUSE_USER, Rouse, app, eventually, hello_config, namespace};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn main() {
    if let Some(status) = env::enter_namespaces() {
        std::process::exit(status);
    }
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    env::with_env(|| env::block_on(run(rounds)));
    env::finish(false);
}

/// When the bench's own watches saw the two events of a round.
#[derive(Default)]
struct Seen {
    scaled: Option<Instant>,
    ready: Option<Instant>,
}

async fn run(rounds: usize) {
    let ns = namespace("bench").await;
    app(&ns, "hello", 0, &[]).await;
    let cfg = hello_config(
        &ns,
        &[
            "container_concurrency: 10",
            "kubernetes: { service: hello }",
            "scale: { min: 0, max: 1, idle_grace: 1s, stable_window: 1s, deployment: hello }",
        ],
    );
    let rouse = Rouse::start("bench", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let admin = env::env().admin.clone();
    let s = seen.clone();
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    tokio::spawn(async move {
        let mut w = watcher::watcher(deployments, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = w.next().await {
            if let Event::Apply(d) = e
                && d.spec.replicas.unwrap_or(0) > 0
            {
                s.lock().unwrap().scaled.get_or_insert(Instant::now());
            }
        }
    });
    let s = seen.clone();
    let slices = Api::<EndpointSlice>::namespaced(admin, &ns);
    tokio::spawn(async move {
        let cfg = watcher::Config::default().labels("kubernetes.io/service-name=hello");
        let mut w = watcher::watcher(slices, cfg).boxed();
        while let Some(Ok(e)) = w.next().await {
            if let Event::Apply(sl) = e {
                let ready = sl
                    .endpoints
                    .iter()
                    .flatten()
                    .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
                if ready {
                    s.lock().unwrap().ready.get_or_insert(Instant::now());
                }
            }
        }
    });
    let baseline = api_baseline(&ns, rounds).await;
    let c = support::h1_client();
    let (mut reaction, mut forward, mut boot, mut total) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // At zero, with no pod and no endpoint left.
        eventually("back at zero", Duration::from_secs(60), || async {
            env::replicas(&ns, "hello").await == 0 && env::env().node.pods(&ns).is_empty()
        })
        .await;
        rouse.wait_endpoints(0.0, Duration::from_secs(10)).await;
        *seen.lock().unwrap() = Seen::default();
        let sent = Instant::now();
        let got = support::get(&c, rouse.addr, "hello.test", "/", &[]).await;
        let received = Instant::now();
        assert_eq!(got.status, http::StatusCode::OK, "{}", got.body);
        assert_eq!(
            got.header("rouse-cold-start"),
            "true",
            "round {round} was not a cold start"
        );
        let s = std::mem::take(&mut *seen.lock().unwrap());
        let (Some(scaled), Some(ready)) = (s.scaled, s.ready) else {
            panic!("round {round}: the bench's watches missed an event");
        };
        reaction.push(scaled.saturating_duration_since(sent));
        forward.push(received.saturating_duration_since(ready));
        boot.push(ready.saturating_duration_since(scaled));
        total.push(received - sent);
    }
    let share: Vec<Duration> = reaction
        .iter()
        .zip(&forward)
        .map(|(a, b)| *a + *b)
        .collect();
    let base = median(baseline.clone());
    let own: Vec<Duration> = reaction.iter().map(|r| r.saturating_sub(base)).collect();
    println!("k8s cold start, {rounds} rounds (p50 / p99 / max):");
    for (name, v) in [
        ("API write → watch event (baseline)", baseline),
        ("request → scale patch seen (rouse)", reaction),
        ("  of which rouse (minus baseline p50)", own),
        ("ready endpoint seen → response (rouse)", forward),
        ("rouse's share", share),
        ("pod: controllers, node, boot", boot),
        ("whole cold request", total),
    ] {
        println!("  {name:<42} {}", summary(v));
    }
}

/// The API server's part of a scale write as a watcher sees it: a merge patch of a scale
/// subresource, timed from sent to seen by a watch, `n` times on a Deployment of its own.
async fn api_baseline(ns: &str, n: usize) -> Vec<Duration> {
    use kube::api::{Patch, PatchParams};
    app(ns, "baseline", 0, &[]).await;
    let admin = env::env().admin.clone();
    let api = Api::<Deployment>::namespaced(admin, ns);
    // Paused: its count changes, but no ReplicaSet or pod follows.
    let paused = serde_json::json!({ "spec": { "paused": true } });
    api.patch("baseline", &PatchParams::default(), &Patch::Merge(paused))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = api.clone();
    let watch = tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=baseline");
        let mut w = watcher::watcher(watched, cfg).boxed();
        while let Some(Ok(e)) = w.next().await {
            match e {
                Event::Apply(d) => {
                    let _ = tx.send((d.spec.replicas.unwrap_or(0), Instant::now()));
                }
                // The end of the first list: from here on, every change is seen.
                Event::InitDone => {
                    let _ = tx.send((-1, Instant::now()));
                }
                _ => {}
            }
        }
    });
    while rx.recv().await.is_some_and(|(r, _)| r != -1) {}
    let mut out = Vec::new();
    for i in 0..n {
        let want = i32::from(i % 2 == 0);
        let sent = Instant::now();
        let patch = serde_json::json!({ "spec": { "replicas": want } });
        api.patch_scale("baseline", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        loop {
            let (replicas, at) = rx.recv().await.unwrap();
            if replicas == want && at >= sent {
                out.push(at - sent);
                break;
            }
        }
    }
    watch.abort();
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "{:>8.2?} {:>8.2?} {:>8.2?}",
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}
