//! `rouse activator` beside Knative's own activator (v0.42.2, built from its module), in the
//! same run, on the real control plane, Knative controller, autoscaler and queue-proxy of the
//! Kubernetes tests (`tests/k8s`):
//! - cold start through Knative's autoscaler: from sending a request for a revision at zero to
//!   its answer, alternating between the two activators round by round;
//! - a warm revision (one pod, min-scale 1): `wrk` at 50 and at 1 connection through each
//!   activator and straight to the pod's queue-proxy, as throughput, its ratio to the
//!   queue-proxy, p50 latency and the latency added at c=1, and CPU time per 1,000 requests;
//! - memory: each activator's RSS idle and with 10,000 requests held over HTTP/1.1 connections
//!   for a revision whose pod never comes up.
//!
//! `cargo bench --features kubernetes --bench k8s_activator [-- ROUNDS [HELD]]` (wrk needed:
//! `apt-get install wrk`). Both activators, the pod and wrk share the machine's CPUs, so the
//! figures are ratios measured side by side, not capacities.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

fn main() {
    if let Some(status) = env::enter_namespaces() {
        std::process::exit(status);
    }
    raise_fd_limit();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(5);
    let held = args.get(1).copied().unwrap_or(10_000);
    let odd = env::with_env(|| env::block_on(run(rounds, held)));
    // A run with an outlier keeps its logs (every process's, the Pods' included) for a look.
    env::finish(odd);
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// `/proc/<pid>/status` of process `pid` of the run's PID namespace, and its number in the
/// machine's `/proc`.
fn status_of(pid: u32) -> (String, String) {
    let outer = node::outer_pid(pid).unwrap_or_else(|| panic!("process {pid} not found"));
    let st = std::fs::read_to_string(format!("/proc/{outer}/status")).unwrap();
    (outer.to_string(), st)
}

fn rss_mib(pid: u32) -> f64 {
    status_of(pid)
        .1
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User plus system CPU seconds of process `pid` so far (its threads included).
fn cpu_seconds(pid: u32) -> f64 {
    let outer = status_of(pid).0;
    let stat = std::fs::read_to_string(format!("/proc/{outer}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Load {
    rps: f64,
    p50_us: f64,
    requests: f64,
}

fn to_us(s: &str) -> f64 {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1000.0,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

/// `wrk` against `addr` with the revision's headers.
fn wrk(addr: SocketAddr, ns: &str, rev: &str, conns: u32, secs: u32) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &format!("Knative-Serving-Revision: {rev}"),
            "-H",
            &format!("Knative-Serving-Namespace: {ns}"),
            "-H",
            "Host: warm.example.com",
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "errors through {addr}:\n{text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no {prefix} in wrk's output:\n{text}"))
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Load {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_us: to_us(&field("50%")),
        requests,
    }
}

async fn get_through(addr: SocketAddr, ns: &str, rev: &str) -> u16 {
    let c = support::h1_client();
    support::get(
        &c,
        addr,
        "cold.example.com",
        "/",
        &[
            ("knative-serving-revision", rev),
            ("knative-serving-namespace", ns),
        ],
    )
    .await
    .status
    .as_u16()
}

async fn pods_of(ns: &str, prefix: &str) -> Vec<SocketAddr> {
    env::env()
        .node
        .pods(ns)
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, a)| a)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every part; true when some cold start took over 800 ms (an outlier worth a look).
async fn run(rounds: usize, n_held: usize) -> bool {
    let autoscaler = serving::serving().await;
    let knative = serving::knative_activator().await;
    let knative_pid = env::env()
        .node
        .pid(serving::SYSTEM, "activator")
        .expect("Knative's activator runs");
    let ns = env::namespace("bench-activator").await;
    activator::configuration(&ns, "cold", 0).await;
    activator::configuration_with(
        &ns,
        "warm",
        0,
        &[
            ("autoscaling.knative.dev/min-scale", "1"),
            ("autoscaling.knative.dev/initial-scale", "1"),
        ],
        serving::HELLOWORLD_IMAGE,
    )
    .await;
    activator::configuration_with(&ns, "stuck", 0, &[], "rouse.test/no-such-image").await;
    let rouse = activator::activator(&ns, &autoscaler, &["--max-held", "20000"]).await;
    let rouse_pid = rouse.pid().unwrap();
    println!("rouse activator (release build) and Knative's activator v0.42.2, same run");

    // Warm: one pod, both activators and the queue-proxy straight.
    env::eventually(
        "the warm revision's pod",
        Duration::from_secs(120),
        || async {
            !pods_of(&ns, "warm-00001-deployment").await.is_empty()
                && get_through(rouse.addr, &ns, "warm-00001").await == 200
                && get_through(knative, &ns, "warm-00001").await == 200
        },
    )
    .await;
    let pod = pods_of(&ns, "warm-00001-deployment").await[0];
    let queue = SocketAddr::new(pod.ip(), 8012);
    println!(
        "\nwarm revision, one pod of Knative's helloworld (wrk -t1, 10 s at c=50, 5 s at c=1):"
    );
    println!(
        "| path | req/s c=50 | ratio to queue-proxy | p50 c=50 | p50 c=1 | added p50 c=1 | CPU ms per 1,000 requests |"
    );
    println!("|---|---|---|---|---|---|---|");
    let direct = wrk(queue, &ns, "warm-00001", 50, 10);
    let direct1 = wrk(queue, &ns, "warm-00001", 1, 5);
    println!(
        "| queue-proxy straight | {:.0} | 1.00 | {:.0} µs | {:.0} µs | — | — |",
        direct.rps, direct.p50_us, direct1.p50_us
    );
    for (name, addr, pid) in [
        ("rouse activator", rouse.addr, rouse_pid),
        ("Knative activator", knative, knative_pid),
    ] {
        let before = cpu_seconds(pid);
        let l = wrk(addr, &ns, "warm-00001", 50, 10);
        let cpu = cpu_seconds(pid) - before;
        let l1 = wrk(addr, &ns, "warm-00001", 1, 5);
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | +{:.0} µs | {:.0} |",
            l.rps,
            l.rps / direct.rps,
            l.p50_us,
            l1.p50_us,
            l1.p50_us - direct1.p50_us,
            cpu * 1000.0 / (l.requests / 1000.0)
        );
    }

    // Cold starts through Knative's autoscaler, alternating.
    let mut took: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, addr) in [rouse.addr, knative].into_iter().enumerate() {
            // A true cold start: no Pod of the revision left in any state (the last one's
            // queue-proxy drains for 30 s after its SIGTERM).
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(env::env().admin.clone(), &ns);
            env::eventually(
                "the cold revision back at zero, its Pods gone",
                Duration::from_secs(180),
                || async {
                    activator::replicas(&ns, "cold-00001-deployment").await == Some(0)
                        && pods
                            .list(
                                &kube::api::ListParams::default()
                                    .labels("serving.knative.dev/revision=cold-00001"),
                            )
                            .await
                            .is_ok_and(|l| l.items.is_empty())
                },
            )
            .await;
            // Both activators see the revision without endpoints before the next round.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let began = Instant::now();
            let status = get_through(addr, &ns, "cold-00001").await;
            assert_eq!(status, 200, "round {round}");
            took[i].push(began.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!("\ncold start through Knative's autoscaler, {rounds} rounds each, alternating:");
    for (name, t) in ["rouse activator", "Knative activator"].iter().zip(&took) {
        let mut s = t.clone();
        s.sort_by(f64::total_cmp);
        println!(
            "{name}: median {:.0} ms (min {:.0}, max {:.0}) over {:?}",
            median(t.clone()),
            s[0],
            s[s.len() - 1],
            t.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }

    // Memory with requests held for a revision that never comes up.
    println!("\n{n_held} requests held over HTTP/1.1 for a revision whose pod never starts:");
    for (name, addr, pid) in [
        ("rouse activator", rouse.addr, rouse_pid),
        ("Knative activator", knative, knative_pid),
    ] {
        let idle = rss_mib(pid);
        let mut conns = Vec::with_capacity(n_held);
        let req = format!(
            "GET / HTTP/1.1\r\nHost: stuck.example.com\r\nKnative-Serving-Revision: stuck-00001\r\nKnative-Serving-Namespace: {ns}\r\n\r\n"
        );
        for _ in 0..n_held {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            conns.push(s);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let with = rss_mib(pid);
        println!("{name}: RSS {idle:.1} MiB idle, {with:.1} MiB with {n_held} held");
        drop(conns);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    took.iter().flatten().any(|t| *t > 800.0)
}

// The Kubernetes suite's harness, shared with the tests.
#[allow(dead_code)]
#[path = "../tests/k8s/activator.rs"]
mod activator;

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
fn trial<F>(name: &'static str, f: fn() -> F) -> libtest_mimic::Trial
where
    F: Future<Output = ()> + Send + 'static,
{
    libtest_mimic::Trial::test(name, move || {
        env::block_on(f());
        Ok(())
    })
}
