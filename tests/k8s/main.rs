//! rouse against a real Kubernetes control plane.
//!
//! The run re-executes itself inside new network and PID namespaces (`unshare`), puts
//! 192.0.2.0/24 on the namespace's loopback (EndpointSlices refuse 127.0.0.0/8, and nothing
//! in the namespace can leave the machine), starts etcd, kube-apiserver and
//! kube-controller-manager there (built once per machine by `scripts/k8s-binaries.sh`, cached
//! in `~/.cache/rouse-k8s`), and a local node that runs Pods as processes. Every test gets a
//! namespace of its own; they run in parallel. When the run ends, passed or failed, the PID
//! namespace ends and takes every process in it along.
//!
//! `cargo test --features kubernetes --test k8s` runs it; `.ci/run` does.

mod activator;
mod cluster;
mod conformance;
mod dns;
mod env;
mod faults;
mod ingress;
mod manifests;
mod node;
mod replicas;
mod scale;
mod serving;
#[allow(unused_imports)]
#[path = "../it/support/mod.rs"]
mod support;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    if args.list {
        libtest_mimic::run(&args, all()).exit();
    }
    if let Some(status) = env::enter_namespaces() {
        std::process::exit(status);
    }
    let conclusion = env::with_env(|| libtest_mimic::run(&args, all()));
    env::finish(conclusion.has_failed());
    conclusion.exit();
}

/// Every test of the run.
fn all() -> Vec<Trial> {
    let mut t = scale::trials();
    t.extend(faults::trials());
    t.extend(replicas::trials());
    t.extend(manifests::trials());
    t.extend(ingress::trials());
    t.extend(conformance::trials());
    t.extend(activator::trials());
    t
}

/// A test, as a trial for the harness.
pub fn trial<F>(name: &'static str, f: fn() -> F) -> Trial
where
    F: Future<Output = ()> + Send + 'static,
{
    Trial::test(name, move || {
        env::block_on(f());
        Ok(())
    })
}
