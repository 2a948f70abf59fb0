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

mod cluster;
mod env;
mod faults;
mod node;
mod replicas;
mod scale;
#[allow(unused_imports)]
#[path = "../it/support/mod.rs"]
mod support;

use libtest_mimic::{Arguments, Trial};
use std::process::Command;

/// Set in the re-executed run, inside the namespaces.
const INSIDE: &str = "ROUSE_K8S_INSIDE";

fn main() {
    let args = Arguments::from_args();
    if std::env::var_os(INSIDE).is_none() {
        std::process::exit(outside(&args));
    }
    let trials = all();
    if args.list {
        libtest_mimic::run(&args, trials).exit();
    }
    let conclusion = env::with_env(|| libtest_mimic::run(&args, trials));
    conclusion.exit();
}

/// Builds (or finds) the control plane, then runs this binary again inside fresh network and
/// PID namespaces; returns its exit status.
fn outside(args: &Arguments) -> i32 {
    if args.list {
        libtest_mimic::run(args, all()).exit();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/k8s-binaries.sh");
    let bin = match std::env::var("ROUSE_K8S_BIN") {
        Ok(b) => b,
        Err(_) => {
            eprintln!(
                "k8s: finding the control plane binaries (the first run on a machine builds them: 10-20 minutes)"
            );
            let out = Command::new(script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running scripts/k8s-binaries.sh");
            assert!(out.status.success(), "scripts/k8s-binaries.sh failed");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--pid", "--fork", "--kill-child"]);
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    if !root {
        cmd.arg("--map-root-user");
    }
    let status = cmd
        .arg(me)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .env("ROUSE_K8S_BIN", bin)
        .status()
        .expect("running unshare (util-linux) to make the test's network namespace");
    status.code().unwrap_or(1)
}

/// Every test of the run.
fn all() -> Vec<Trial> {
    let mut t = scale::trials();
    t.extend(faults::trials());
    t.extend(replicas::trials());
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
