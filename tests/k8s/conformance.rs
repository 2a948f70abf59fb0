//! Knative's own ingress conformance suite, unmodified, against rouse: the `go test` binary of
//! `knative.dev/networking/test/conformance/ingress` (built by `scripts/knative-binaries.sh`)
//! creates its Services, Pods (Knative's test images, run by the local node in network
//! namespaces of their own) and Ingresses on this run's control plane, and dials rouse through
//! the load balancer rouse names in each Ingress's status. Ignored by default: `scripts/
//! conformance.sh` runs it (`--ignored knative_ingress_conformance`) and prints the summary.

use crate::env::{ROUSE_USER, Rouse, env};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Api;
use kube::api::PostParams;
use libtest_mimic::Trial;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

/// Where the suite's images are said to come from (`KO_DOCKER_REPO`).
pub const REPO: &str = "rouse.test/knative";
/// The test images the suite's Pods run.
pub const IMAGES: [&str; 6] = [
    "runtime",
    "grpc-ping",
    "httpproxy",
    "retry",
    "timeout",
    "wsserver",
];

/// rouse's address: the node's, where NodePorts are served.
const IP: &str = "192.0.2.1";
const HTTP_NODE_PORT: u16 = 30080;
const HTTPS_NODE_PORT: u16 = 30443;

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("knative_ingress_conformance", || {
            crate::env::block_on(run());
            Ok(())
        })
        .with_ignored_flag(true),
    ]
}

async fn create<K>(api: Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

async fn run() {
    let _alone = env().exclusive.write().await;
    let bin = std::path::PathBuf::from(
        std::env::var("ROUSE_KNATIVE_BIN").expect("ROUSE_KNATIVE_BIN: run scripts/conformance.sh"),
    );
    let admin = env().admin.clone();
    create(
        Api::<Namespace>::all(admin.clone()),
        json!({ "metadata": { "name": "serving-tests" } }),
    )
    .await;
    // rouse's Services as deploy/knative has them: the public one a NodePort (the suite
    // dials the node at its node ports), the private one listing this rouse as its replica.
    let services = Api::<Service>::namespaced(admin.clone(), "rouse");
    create(
        services,
        json!({
            "metadata": { "name": "rouse" },
            "spec": { "type": "NodePort", "ports": [
                { "name": "http", "port": 80, "targetPort": HTTP_NODE_PORT, "nodePort": HTTP_NODE_PORT },
                { "name": "https", "port": 443, "targetPort": HTTPS_NODE_PORT, "nodePort": HTTPS_NODE_PORT },
            ]},
        }),
    )
    .await;
    crate::env::listed_service("rouse", "rouse-internal", "http", 80, 80, &[IP]).await;
    let body = format!(
        "listen_internal: {IP}:80
tls: {{ listen: {IP}:{HTTPS_NODE_PORT}, certificates: [], redirect_port: 443 }}
kubernetes: {{ ingress: {{}} }}
"
    );
    let _rouse = Rouse::start_with(
        "conformance",
        ROUSE_USER,
        &body,
        format!("{IP}:{HTTP_NODE_PORT}").parse().unwrap(),
        format!("{IP}:9090").parse().unwrap(),
        &[("POD_NAMESPACE", "rouse")],
    )
    .await;
    let kubeconfig = env().cluster.lock().await.kubeconfig(
        "conformance-suite",
        "conformance",
        &["system:masters"],
    );
    let log = env().dir.join("conformance.log");
    let out = std::fs::File::create(&log).unwrap();
    let status = tokio::process::Command::new(bin.join("ingress-conformance"))
        .args([
            "-test.v",
            "-test.timeout=20m",
            "-test.run=TestIngressConformance",
            "-ingressClass=rouse.ingress.networking.knative.dev",
            &format!("-ingressendpoint={IP}"),
            "-enable-beta",
            "-enable-alpha",
            "-cluster-suffix=cluster.local",
        ])
        .arg(format!("-kubeconfig={}", kubeconfig.display()))
        .env("KO_DOCKER_REPO", REPO)
        .env("SYSTEM_NAMESPACE", "rouse")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(25 * 60), status)
        .await
        .expect("the conformance suite ends within 25 minutes")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let results = results(&text);
    for (name, r) in &results {
        eprintln!("conformance: {r} {name}");
    }
    let passed = results.values().filter(|r| **r == "PASS").count();
    let failed = results.values().filter(|r| **r == "FAIL").count();
    eprintln!("conformance: log in {}", log.display());
    eprintln!("{passed} passed, {failed} failed");
    assert!(
        failed == 0 && passed > 0 && status.success(),
        "Knative's ingress conformance: {passed} passed, {failed} failed (exit {status}); log {}:\n{}",
        log.display(),
        crate::cluster::tail(&log)
    );
}

/// The outcome of each test the suite ran (`TestIngressConformance/<name>`), from `go test -v`
/// output; a test's own subtests are not counted apart.
fn results(text: &str) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        // Top-level subtests are reported indented by four spaces, theirs by eight.
        let Some(rest) = line.strip_prefix("    --- ") else {
            continue;
        };
        for (tag, r) in [("PASS: ", "PASS"), ("FAIL: ", "FAIL"), ("SKIP: ", "SKIP")] {
            if let Some(name) = rest.strip_prefix(tag)
                && let Some(name) = name.strip_prefix("TestIngressConformance/")
            {
                let name = name.split(' ').next().unwrap_or(name);
                out.insert(name.to_owned(), r);
            }
        }
    }
    out
}
