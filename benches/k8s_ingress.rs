//! rouse as Knative's ingress, on the real control plane and local node of the Kubernetes tests
//! (`tests/k8s`):
//! - an Ingress change until it is Ready (every replica probed and serving it), over many
//!   updates: from the moment the API server has accepted the update to the moment this
//!   program's own watch sees `Ready` for the new generation;
//! - many Ingresses: the time for all of them to turn Ready, rouse's memory (RSS) before and
//!   after, the time of one pass of the controller over all of them, and the update time again
//!   with all of them present.
//!
//! `cargo bench --features kubernetes --bench k8s_ingress [-- UPDATES [INGRESSES]]`

use futures_util::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn main() {
    if let Some(status) = env::enter_namespaces() {
        std::process::exit(status);
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let updates = args.first().copied().unwrap_or(100);
    let many = args.get(1).copied().unwrap_or(1000);
    env::with_env(|| env::block_on(run(updates, many)));
    env::finish(false);
}

/// When this program's watch first saw each Ingress Ready, by (name, generation).
type ReadyAt = Arc<Mutex<HashMap<(String, i64), Instant>>>;

fn is_ready(o: &DynamicObject) -> bool {
    let st = &o.data["status"];
    st["observedGeneration"].as_i64() == o.metadata.generation
        && st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn spec(ns: &str, host: &str, who: &str) -> serde_json::Value {
    ingress::in_ns(
        json!({ "rules": [{ "hosts": [host], "visibility": "ExternalIP", "http": { "paths": [
            { "splits": [ingress::split("hello", 100, json!({ "x-who": who }))] }
        ]}}]}),
        ns,
    )
}

/// The resident memory of rouse's process `pid` of this PID namespace (found in the machine's
/// `/proc` by its outer number).
fn rss_mib(pid: u32) -> f64 {
    node::outer_pid(pid)
        .and_then(|outer| std::fs::read_to_string(format!("/proc/{outer}/status")).ok())
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Updates Ingress `name` `n` times; the times to Ready, in ms, sorted.
async fn updates(
    ing: &ingress::Ingress,
    ready: &ReadyAt,
    name: &str,
    host: &str,
    n: usize,
) -> Vec<f64> {
    let api = ingress::ingresses(&ing.ns);
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let began = Instant::now();
        let o = api
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "spec": spec(&ing.ns, host, &format!("u{i}")) })),
            )
            .await
            .unwrap();
        let generation = o.metadata.generation.unwrap();
        let key = (name.to_owned(), generation);
        let seen = loop {
            if let Some(t) = ready.lock().unwrap().get(&key) {
                break *t;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "update {i} not Ready"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        took.push(seen.duration_since(began).as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    took
}

fn report(what: &str, t: &[f64]) {
    println!(
        "{what}: n={} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        t.len(),
        quantile(t, 0.5),
        quantile(t, 0.9),
        quantile(t, 0.99),
        t[t.len() - 1]
    );
}

async fn run(n_updates: usize, many: usize) {
    let ing = ingress::start("bench-ingress", "").await;
    env::app(&ing.ns, "hello", 1, &[]).await;
    let ready: ReadyAt = Arc::default();
    let r = ready.clone();
    let api = ingress::ingresses(&ing.ns);
    tokio::spawn(async move {
        let mut w = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = w.next().await {
            if let Event::Apply(o) | Event::InitApply(o) = e
                && is_ready(&o)
            {
                let key = (
                    o.metadata.name.clone().unwrap(),
                    o.metadata.generation.unwrap(),
                );
                r.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
        }
    });
    ing.create("one", spec(&ing.ns, "one.example", "first"))
        .await;
    ing.ready("one").await;
    let pid = ing.rouse.pid().unwrap();
    println!("rouse RSS with 1 Ingress: {:.1} MiB", rss_mib(pid));
    report(
        "1 Ingress, update → Ready",
        &updates(&ing, &ready, "one", "one.example", n_updates).await,
    );

    let began = Instant::now();
    for i in 0..many {
        ing.create(
            &format!("many-{i}"),
            spec(&ing.ns, &format!("many-{i}.example"), "first"),
        )
        .await;
    }
    let created = began.elapsed();
    let names: HashSet<String> = (0..many).map(|i| format!("many-{i}")).collect();
    loop {
        let n = ready
            .lock()
            .unwrap()
            .keys()
            .filter(|(name, g)| *g == 1 && names.contains(name))
            .count();
        if n == many {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "{n} of {many} Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_ready = began.elapsed();
    println!(
        "{many} Ingresses: created in {:.1} s, all Ready {:.1} s after the first create",
        created.as_secs_f64(),
        all_ready.as_secs_f64()
    );
    // Let the last passes finish, then read the cost of one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "rouse RSS with {} Ingresses: {:.1} MiB",
        many + 1,
        rss_mib(pid)
    );
    let passes = ing.rouse.metric("rouse_ingress_passes_total").await;
    let spent = ing.rouse.metric("rouse_ingress_pass_seconds_total").await;
    println!(
        "controller passes so far: {passes}, {:.1} ms each on average",
        spent / passes * 1000.0
    );
    let t = updates(&ing, &ready, "one", "one.example", n_updates.min(20)).await;
    println!(
        "one pass over {} Ingresses: {:.1} ms",
        many + 1,
        ing.rouse.metric("rouse_ingress_last_pass_seconds").await * 1000.0
    );
    report(&format!("{} Ingresses, update → Ready", many + 1), &t);
    // The request path with them all: one of the many hosts.
    let got = support::get(
        &support::h1_client(),
        ing.public,
        &format!("many-{}.example", many / 2),
        "/",
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
}

// The Kubernetes suite's harness, shared with the tests.
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
#[path = "../tests/k8s/ingress.rs"]
mod ingress;
#[allow(dead_code)]
#[path = "../tests/k8s/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "../tests/k8s/serving.rs"]
mod serving;

#[allow(unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

/// A test, as the suite's harness takes it (the shared modules name it).
#[allow(dead_code)]
fn trial<F>(name: &'static str, f: fn() -> F) -> libtest_mimic::Trial
where
    F: Future<Output = ()> + Send + 'static,
{
    libtest_mimic::Trial::test(name, move || {
        env::block_on(f());
        Ok(())
    })
}
