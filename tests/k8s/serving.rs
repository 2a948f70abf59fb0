//! Knative Serving's own controller and autoscaler on the test control plane: built from the
//! `knative.dev/serving` module by `scripts/knative-serving-binaries.sh`, run as Pods of the
//! local node (each with a network of its own, as both listen on `:8080`), with Knative's
//! CRDs and the ConfigMaps of `knative-serving.yaml`. Started by the first test that needs
//! them; the run's end stops them with every other Pod.
//!
//! Without Knative's webhook, a Revision template needs the autoscaler class annotation (the
//! webhook adds it to the PodAutoscaler), and the images' registry is listed as one whose tags
//! are not resolved.

use crate::env::{apply_file, env};
use crate::node::Image;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube::core::GroupVersionKind;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Where the binaries and Knative's config are, when the run has them.
pub const DIR_VAR: &str = "ROUSE_KNATIVE_SERVING";
/// Knative's queue-proxy, as `config-deployment` names it.
pub const QUEUE_IMAGE: &str = "rouse.test/queue";
/// The app of the tests' Revisions: the counting backend, listening on every address of
/// its Pod (the queue-proxy reaches it on 127.0.0.1).
pub const APP_IMAGE: &str = "rouse.test/hello";

/// Knative's own helloworld test app (Go, listens on :8080): a backend fast enough that a
/// benchmark measures the proxies in front of it.
pub const HELLOWORLD_IMAGE: &str = "rouse.test/helloworld";

/// The namespace of Knative's components.
pub const SYSTEM: &str = "knative-serving";

/// The images of Knative's components, and the tests' app, for the local node.
pub fn images() -> Vec<(String, Image)> {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return Vec::new();
    };
    let bin = |b: &str| PathBuf::from(&dir).join(b).display().to_string();
    let own = |command: Vec<String>| Image {
        command,
        own_network: true,
    };
    vec![
        (
            "rouse.test/knative-controller".to_owned(),
            own(vec![bin("controller")]),
        ),
        (
            "rouse.test/knative-autoscaler".to_owned(),
            own(vec![bin("autoscaler")]),
        ),
        (QUEUE_IMAGE.to_owned(), own(vec![bin("queue")])),
        (
            "rouse.test/knative-activator".to_owned(),
            own(vec![bin("activator")]),
        ),
        (HELLOWORLD_IMAGE.to_owned(), own(vec![bin("helloworld")])),
        (
            APP_IMAGE.to_owned(),
            own(vec![
                "python3".to_owned(),
                crate::support::BACKEND_PY.to_owned(),
            ]),
        ),
    ]
}

static STARTED: OnceCell<String> = OnceCell::const_new();
static ACTIVATOR: OnceCell<std::net::SocketAddr> = OnceCell::const_new();

/// Starts Knative's own activator once (after the controller and autoscaler); returns its
/// HTTP/1.1 address (port 8012 of its Pod), once it is ready (connected to the autoscaler).
#[allow(dead_code)]
pub async fn knative_activator() -> std::net::SocketAddr {
    serving().await;
    *ACTIVATOR
        .get_or_init(|| async {
            let kubeconfig = env().cluster.lock().await.kubeconfig_at(
                "knative-activator",
                "knative-activator",
                &["system:masters"],
                "https://192.0.2.1:6443",
            );
            let addr = component(
                "activator",
                8012,
                "knative.dev/internal/serving",
                &kubeconfig,
            )
            .await;
            // Ready once its websocket to the autoscaler is up: the kubelet's check says so.
            let client = crate::support::h1_client();
            crate::env::eventually(
                "Knative's activator is ready",
                Duration::from_secs(60),
                || {
                    let client = client.clone();
                    async move {
                        let req = http::Request::get(format!("http://{addr}/"))
                            .header("user-agent", "kube-probe/1.37")
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap();
                        client.request(req).await.is_ok_and(|r| r.status() == 200)
                    }
                },
            )
            .await;
            addr
        })
        .await
}

/// Runs Knative's component `name` (image `rouse.test/knative-<name>`) as a Pod in
/// knative-serving, with the environment Knative's own manifests give it; returns its address
/// on `port` once the node runs it.
async fn component(
    name: &str,
    port: u16,
    metrics_domain: &str,
    kubeconfig: &std::path::Path,
) -> std::net::SocketAddr {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": { "containers": [{
            "name": name,
            "image": format!("rouse.test/knative-{name}"),
            "ports": [{ "containerPort": port }],
            "env": [
                { "name": "SYSTEM_NAMESPACE", "value": SYSTEM },
                { "name": "KUBECONFIG", "value": kubeconfig.display().to_string() },
                { "name": "METRICS_DOMAIN", "value": metrics_domain },
            ],
        }]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(env().admin.clone(), SYSTEM)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    loop {
        if let Some(a) = env().node.pods(SYSTEM).get(name) {
            return *a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts Knative's controller and autoscaler once; returns the autoscaler's stats URL.
pub async fn serving() -> String {
    STARTED.get_or_init(start).await.clone()
}

async fn start() -> String {
    let dir = PathBuf::from(
        std::env::var(DIR_VAR).expect("the run builds Knative Serving's components first"),
    );
    let admin = &env().admin;
    let crds = dir.join("config/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        apply_file(admin, f.to_str().unwrap(), None).await;
    }
    for (group, version, kind) in [
        ("serving.knative.dev", "v1", "Revision"),
        ("serving.knative.dev", "v1", "Configuration"),
        (
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        ("autoscaling.internal.knative.dev", "v1alpha1", "Metric"),
        (
            "networking.internal.knative.dev",
            "v1alpha1",
            "ServerlessService",
        ),
        ("caching.internal.knative.dev", "v1alpha1", "Image"),
    ] {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        crate::env::eventually(&format!("{kind} served"), Duration::from_secs(30), || {
            let gvk = gvk.clone();
            async move { kube::discovery::pinned_kind(admin, &gvk).await.is_ok() }
        })
        .await;
    }
    apply_file(admin, "tests/k8s/knative-serving.yaml", None).await;
    apply_file(admin, "deploy/knative/activator.yaml", None).await;
    let kubeconfig = env().cluster.lock().await.kubeconfig_at(
        "knative-serving",
        "knative-serving",
        &["system:masters"],
        "https://192.0.2.1:6443",
    );
    // The autoscaler's stats server answers once it has its informers.
    let ip = component("autoscaler", 8080, "knative.dev/serving", &kubeconfig)
        .await
        .ip();
    component(
        "controller",
        8080,
        "knative.dev/internal/serving",
        &kubeconfig,
    )
    .await;
    crate::env::eventually(
        "Knative's autoscaler accepts connections",
        Duration::from_secs(60),
        || async move { tokio::net::TcpStream::connect((ip, 8080)).await.is_ok() },
    )
    .await;
    format!("ws://{ip}:8080")
}
