//! What users install: the manifests in `deploy/`, the Helm chart, and `rouse inject`'s
//! output are all accepted by the real API server (server-side dry run: schema, defaults and
//! admission, nothing stored), and the rouse configs they carry are valid.

use crate::env::{apply, env, manifests};
use crate::support;
use crate::trial;
use libtest_mimic::Trial;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "the_deploy_manifests_apply_and_carry_a_valid_config",
            the_deploy_manifests_apply_and_carry_a_valid_config,
        ),
        trial(
            "the_helm_chart_renders_applies_and_rejects_bad_values",
            the_helm_chart_renders_applies_and_rejects_bad_values,
        ),
        trial("injected_manifests_apply", injected_manifests_apply),
    ]
}

fn docs_of(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Server-side dry runs of `docs`; every one must be accepted.
async fn dry_run(docs: Vec<Value>, namespace: Option<&str>) -> usize {
    let n = docs.len();
    for d in docs {
        let what = format!("{} {}", d["kind"], d["metadata"]["name"]);
        apply(&env().admin, d, namespace, true)
            .await
            .unwrap_or_else(|e| panic!("the API server refused {what}: {e}"));
    }
    n
}

/// The rouse config inside a ConfigMap, checked as `rouse validate` checks it.
fn check_config(docs: &[Value]) {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap with rouse's config");
    let text = cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    let cfg = rouse::config::Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        cfg.services
            .iter()
            .flat_map(|s| &s.revisions)
            .any(|r| r.kubernetes.is_some()),
        "the shipped config should show a Kubernetes revision"
    );
}

async fn the_deploy_manifests_apply_and_carry_a_valid_config() {
    let _shared = env().exclusive.read().await;
    let mut total = 0;
    for file in [
        "deploy/namespace.yaml",
        "deploy/rbac.yaml",
        "deploy/config.yaml",
        "deploy/rouse.yaml",
        "deploy/example-app.yaml",
    ] {
        let docs = manifests(file);
        assert!(!docs.is_empty(), "{file} is empty");
        if file == "deploy/config.yaml" {
            check_config(&docs);
        }
        total += dry_run(docs, None).await;
    }
    // Namespace, ServiceAccount, ClusterRole, Role, 2 RoleBindings, ConfigMap, Deployment,
    // Service, PodDisruptionBudget, and the example's Deployment and Service.
    assert_eq!(total, 12);
    // rouse as Knative's ingress: ClusterRole and binding, and its ConfigMap, Deployment, two Services and
    // budget, whose config serves Ingresses with every listener the Services point at.
    let mut knative = 0;
    for file in ["deploy/knative/rbac.yaml", "deploy/knative/rouse.yaml"] {
        let docs = manifests(file);
        if let Some(cm) = docs.iter().find(|d| d["kind"] == "ConfigMap") {
            let text = cm["data"]["config.yaml"].as_str().unwrap();
            let cfg = rouse::config::Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let ing = cfg.kubernetes.ingress.expect("kubernetes.ingress");
            assert_eq!(ing.class, "rouse.ingress.networking.knative.dev");
            assert!(cfg.listen_internal.is_some() && cfg.tls.is_some());
        }
        knative += dry_run(docs, None).await;
    }
    assert_eq!(knative, 7);
}

fn helm() -> PathBuf {
    PathBuf::from(std::env::var("ROUSE_K8S_BIN").unwrap()).join("helm")
}

fn helm_template(extra: &[&str]) -> std::process::Output {
    let home = env().dir.join("helm-home");
    Command::new(helm())
        .args([
            "template",
            "edge",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/rouse"),
            "--namespace",
            "rouse",
        ])
        .args(extra)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("running helm")
}

async fn the_helm_chart_renders_applies_and_rejects_bad_values() {
    let _shared = env().exclusive.read().await;
    let out = helm_template(&["--set", "appNamespaces={default,kube-public}"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = docs_of(&String::from_utf8(out.stdout).unwrap());
    check_config(&docs);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    // One RoleBinding per app namespace, plus the one for rouse's own namespace.
    assert_eq!(
        kinds.iter().filter(|k| **k == "RoleBinding").count(),
        3,
        "{kinds:?}"
    );
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    let n = kinds.len();
    assert_eq!(dry_run(docs, Some("rouse")).await, n);
    // The values schema refuses what would make a broken release, naming the value.
    let bad = helm_template(&["--set", "replicas=0"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("replicas"), "{err}");
    let bad = helm_template(&["--set", "appNamespaces={Bad_Name}"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("appNamespaces"));
}

async fn injected_manifests_apply() {
    let _shared = env().exclusive.read().await;
    let out = Command::new(support::bin())
        .args([
            "inject",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/example-app.yaml"),
            "--container-concurrency",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(
            "sidecar added in front of container \"hello\" on port 8080, container_concurrency 4"
        ),
        "{report}"
    );
    let docs = docs_of(&String::from_utf8(out.stdout).unwrap());
    let containers = docs[0]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(docs[1]["spec"]["ports"][0]["targetPort"], 8012);
    dry_run(docs, None).await;
    // Bad input: said, with the document, and nothing on stdout.
    let mut p = Command::new(support::bin())
        .args(["inject", "--container", "web"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/example-app.yaml"
            ))
            .unwrap()
            .as_slice(),
        )
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 1 (Deployment hello): no container \"web\" (it has hello)"),
        "{err}"
    );
}
