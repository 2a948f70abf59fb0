//! The run's shared environment: the network namespace's addresses, the control plane, the
//! local node, and helpers that make a namespace with an app in it and start rouse against it.

use crate::cluster::{Cluster, tail};
use crate::node::{Image, Node};
use crate::support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::RwLock;

/// The identity rouse runs as: its ServiceAccount from `deploy/rbac.yaml`.
pub const ROUSE_USER: &str = "system:serviceaccount:rouse:rouse";

/// What every test shares.
pub struct Env {
    /// The control plane (a test may restart its API server).
    pub cluster: tokio::sync::Mutex<Cluster>,
    /// The local node.
    pub node: Node,
    /// A client with every right.
    pub admin: Client,
    /// Tests hold this shared; one that disturbs the whole cluster holds it alone.
    pub exclusive: RwLock<()>,
    /// The run's folder.
    pub dir: PathBuf,
}

static RT: OnceLock<Runtime> = OnceLock::new();
static ENV: OnceLock<Env> = OnceLock::new();

fn rt() -> &'static Runtime {
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs `f` on the run's runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// The shared environment.
pub fn env() -> &'static Env {
    ENV.get()
        .expect("the environment is set up before any test runs")
}

/// Set in the re-executed run, inside the namespaces.
const INSIDE: &str = "ROUSE_K8S_INSIDE";

/// Outside the namespaces: builds (or finds) the control plane, runs this program again
/// inside fresh network and PID namespaces, and returns its exit status. Inside: `None`.
pub fn enter_namespaces() -> Option<i32> {
    if std::env::var_os(INSIDE).is_some() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/k8s-binaries.sh");
    let bin = match std::env::var("ROUSE_K8S_BIN") {
        Ok(b) => b,
        Err(_) => {
            eprintln!(
                "k8s: finding the control plane binaries (the first run on a machine builds them: 6-15 minutes)"
            );
            let out = Command::new(script)
                .stderr(Stdio::inherit())
                .output()
                .expect("running scripts/k8s-binaries.sh");
            assert!(out.status.success(), "scripts/k8s-binaries.sh failed");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let serving = match std::env::var(crate::serving::DIR_VAR) {
        Ok(d) => d,
        Err(_) => {
            eprintln!(
                "k8s: finding Knative Serving's components (the first run on a machine builds them: 2-8 minutes)"
            );
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/knative-serving-binaries.sh"
            );
            let out = Command::new(script)
                .stderr(Stdio::inherit())
                .output()
                .expect("running scripts/knative-serving-binaries.sh");
            assert!(
                out.status.success(),
                "scripts/knative-serving-binaries.sh failed"
            );
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
        .env(crate::serving::DIR_VAR, serving)
        .status()
        .expect("running unshare (util-linux) to make the test's network namespace");
    Some(status.code().unwrap_or(1))
}

fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{args:?} failed");
}

/// A pod of the two-port example backend: REST on its first container port (`PORT`), gRPC
/// on `GRPC_PORT`.
pub const TWO_PORT_IMAGE: &str = "rouse.test/two-port";

/// Sets the environment up, runs `f`, and tears everything down.
pub fn with_env<T>(f: impl FnOnce() -> T) -> T {
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", "lo"]);
    let bin = PathBuf::from(std::env::var("ROUSE_K8S_BIN").expect("ROUSE_K8S_BIN"));
    // Inside its own PID namespace every run is process 1: the clock tells runs apart.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("rouse-k8s-{stamp}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("k8s: control plane and logs in {}", dir.display());
    block_on(async {
        let cluster = Cluster::start(&bin, &dir).await;
        let admin = cluster.admin().await;
        let mut images = HashMap::from([
            (
                "rouse.test/backend".to_owned(),
                Image {
                    command: vec!["python3".to_owned(), support::BACKEND_PY.to_owned()],
                    own_network: false,
                },
            ),
            (
                TWO_PORT_IMAGE.to_owned(),
                Image {
                    // Built by `cargo test`, or `cargo build --example two_port_backend`; a
                    // pod of it fails to start, saying so, when it is missing.
                    command: vec![support::two_port_backend_path().display().to_string()],
                    own_network: false,
                },
            ),
        ]);
        // Knative's test images, when the conformance run built them.
        if let Ok(dir) = std::env::var("ROUSE_KNATIVE_BIN") {
            for name in crate::conformance::IMAGES {
                images.insert(
                    format!("{}/{name}:latest", crate::conformance::REPO),
                    Image {
                        command: vec![PathBuf::from(&dir).join(name).display().to_string()],
                        own_network: true,
                    },
                );
            }
        }
        images.extend(crate::serving::images());
        crate::node::bridge();
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, crate::dns::resolv_conf(crate::node::GATEWAY)).unwrap();
        tokio::spawn(crate::dns::serve(
            admin.clone(),
            SocketAddr::new(crate::node::GATEWAY.into(), 53),
        ));
        let node = Node::start(admin.clone(), images, resolv).await;
        apply_file(&admin, "deploy/namespace.yaml", None).await;
        apply_file(&admin, "deploy/rbac.yaml", None).await;
        apply_file(&admin, "deploy/knative/rbac.yaml", None).await;
        apply_file(
            &admin,
            bin.join("knative-ingress-crd.yaml").to_str().unwrap(),
            None,
        )
        .await;
        // The CRD serves once it is established.
        let gvk = GroupVersionKind::gvk("networking.internal.knative.dev", "v1alpha1", "Ingress");
        let began = tokio::time::Instant::now();
        while kube::discovery::pinned_kind(&admin, &gvk).await.is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "Knative's Ingress CRD is not served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ENV.set(Env {
            cluster: tokio::sync::Mutex::new(cluster),
            node,
            admin,
            exclusive: RwLock::new(()),
            dir: dir.clone(),
        })
        .ok()
        .unwrap();
    });
    f()
}

/// After a run: stops the control plane and, if `keep` is false, removes the run's folder
/// (a failed run keeps it, with every log, for a look).
pub fn finish(keep: bool) {
    let env = env();
    block_on(async { env.cluster.lock().await.stop() });
    if keep {
        eprintln!("k8s: logs kept in {}", env.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&env.dir);
    }
}

/// The documents of a YAML file of the repository.
pub fn manifests(file: &str) -> Vec<serde_json::Value> {
    // Relative to the repository; an absolute path stays as it is.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// Applies (server-side) every document of `file`, into `namespace` when given (namespaced
/// kinds only).
pub async fn apply_file(client: &Client, file: &str, namespace: Option<&str>) {
    for doc in manifests(file) {
        apply(client, doc, namespace, false).await.unwrap();
    }
}

/// Applies one object; `dry_run` asks the API server to check it without storing it.
pub async fn apply(
    client: &Client,
    mut doc: serde_json::Value,
    namespace: Option<&str>,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap().to_owned();
    let kind = doc["kind"].as_str().unwrap().to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    let namespaced = caps.scope == kube::discovery::Scope::Namespaced;
    if let (Some(ns), true) = (namespace, namespaced) {
        doc["metadata"]["namespace"] = json!(ns);
    }
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    let mut pp = PatchParams::apply("rouse-test").force();
    pp.dry_run = dry_run;
    api.patch(&name, &pp, &Patch::Apply(doc)).await.map(|_| ())
}

/// A Service without selector in `ns` whose one port `port_name` (`port` → `target`) is served
/// by `ips`, as its one EndpointSlice says: how a test lists processes that are not Pods (rouse
/// itself, its peers) behind a Service.
pub async fn listed_service(
    ns: &str,
    name: &str,
    port_name: &str,
    port: u16,
    target: u16,
    ips: &[&str],
) {
    let admin = &env().admin;
    let svc: Service = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "ports": [{ "name": port_name, "port": port, "targetPort": target }] },
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": { "name": format!("{name}-1"), "labels": { "kubernetes.io/service-name": name } },
        "addressType": "IPv4",
        "ports": [{ "name": port_name, "port": target }],
        "endpoints": ips.iter().map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } })).collect::<Vec<_>>(),
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
}

static NS: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace where rouse's ServiceAccount has the rights `deploy/rbac.yaml` gives
/// it in an app namespace, plus its Lease role (so a test's rouse elects in its own
/// namespace).
pub async fn namespace(prefix: &str) -> String {
    let name = format!("{prefix}-{}", NS.fetch_add(1, Ordering::Relaxed));
    let admin = &env().admin;
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    for doc in manifests("deploy/rbac.yaml") {
        if matches!(doc["kind"].as_str(), Some("Role" | "RoleBinding")) {
            apply(admin, doc, Some(&name), false).await.unwrap();
        }
    }
    name
}

/// A Deployment `name` of the test backend with `replicas` (the env is passed to it) and a
/// Service `name` with port `http` in front of it.
pub async fn app(ns: &str, name: &str, replicas: i32, vars: &[(&str, &str)]) {
    let admin = &env().admin;
    let vars: Vec<_> = vars
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .chain([json!({ "name": "REVISION", "value": name })])
        .collect();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": "rouse.test/backend",
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "env": vars,
                    }],
                },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let s: Service = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "selector": { "app": name },
            "ports": [{ "name": "http", "port": 80, "targetPort": "http" }],
        },
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

/// The Deployment's `spec.replicas`.
pub async fn replicas(ns: &str, name: &str) -> i32 {
    let s = Api::<Deployment>::namespaced(env().admin.clone(), ns)
        .get_scale(name)
        .await
        .unwrap();
    s.spec.and_then(|s| s.replicas).unwrap_or(0)
}

/// A rouse config for namespace `ns` (its Lease there too, 3 s) with one service `hello`, any
/// host, all of whose traffic goes to revision `v1` with these settings (YAML lines of the
/// revision, like `kubernetes: { service: hello }`).
pub fn hello_config(ns: &str, revision: &[&str]) -> String {
    let mut cfg = format!(
        "kubernetes: {{ namespace: {ns}, lease: {{ namespace: {ns}, duration: 3s }} }}
services:
  - name: hello
    hosts: ['*']
    traffic: [{{ revision: v1, percent: 100 }}]
    revisions:
      - name: v1
"
    );
    for line in revision {
        cfg.push_str("        ");
        cfg.push_str(line);
        cfg.push('\n');
    }
    cfg
}

static PORT: AtomicU16 = AtomicU16::new(20000);

/// The first of `n` consecutive ports no other test of the run uses.
pub fn ports(n: u16) -> u16 {
    PORT.fetch_add(n, Ordering::Relaxed)
}

/// The folder of a rouse process under test (its config, its log), made if need be.
fn run_dir(name: &str, addr: SocketAddr) -> PathBuf {
    let dir = env().dir.join(format!("rouse-{name}-{}", addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A rouse process under test.
pub struct Rouse {
    /// The data listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    /// Its name in the Lease (`POD_NAME`).
    pub identity: String,
    proc: Option<std::process::Child>,
}

impl Drop for Rouse {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- rouse log {}:\n{}", self.log.display(), tail(&self.log));
        }
    }
}

impl Rouse {
    /// Starts rouse as `user` with `body` (the config after `listen` and `admin`) and waits
    /// until its admin port answers.
    pub async fn start(name: &str, user: &str, body: &str) -> Rouse {
        let port = PORT.fetch_add(2, Ordering::Relaxed);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
        Rouse::start_on(name, user, body, addr, admin).await
    }

    /// [`Rouse::start`] on the given listeners.
    pub async fn start_on(
        name: &str,
        user: &str,
        body: &str,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Rouse {
        Rouse::start_with(name, user, body, addr, admin, &[]).await
    }

    /// [`Rouse::start_on`] with more environment variables.
    pub async fn start_with(
        name: &str,
        user: &str,
        body: &str,
        addr: SocketAddr,
        admin: SocketAddr,
        vars: &[(&str, &str)],
    ) -> Rouse {
        let cfg = run_dir(name, addr).join("config.yaml");
        std::fs::write(&cfg, format!("listen: {addr}\nadmin: {admin}\n{body}")).unwrap();
        let args = vec![
            "gateway".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        Rouse::spawn(name, user, &args, addr, admin, vars).await
    }

    /// Starts `rouse <args>` as `user`, listening on `addr` with its admin port on `admin`.
    pub async fn spawn(
        name: &str,
        user: &str,
        args: &[String],
        addr: SocketAddr,
        admin: SocketAddr,
        vars: &[(&str, &str)],
    ) -> Rouse {
        let port = addr.port();
        let dir = run_dir(name, addr);
        let kubeconfig =
            env()
                .cluster
                .lock()
                .await
                .kubeconfig(&format!("{name}-{port}"), user, &[]);
        let log = dir.join("rouse.log");
        let out = std::fs::File::create(&log).unwrap();
        let proc = Command::new(support::bin())
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("{name}-{port}"))
            .env("RUST_LOG", "info,rouse=debug")
            .envs(vars.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let r = Rouse {
            addr,
            admin,
            log,
            identity: format!("{name}-{port}"),
            proc: Some(proc),
        };
        support::wait_ready(admin).await;
        r
    }

    /// Its process id (the benchmarks read its memory).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(std::process::Child::id)
    }

    /// Kills it at once (no drain, no Lease release), as a crashed pod would die.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// GET on its admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let c = support::h1_client();
        let got = support::get(&c, self.admin, "admin", path, &[]).await;
        (got.status.as_u16(), got.body)
    }

    /// The value of one metric series (panics if it is missing).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        support::metric(&text, series)
    }

    /// Waits up to `within` for revision `v1` of service `hello` to have `n` endpoints.
    pub async fn wait_endpoints(&self, n: f64, within: Duration) {
        eventually(&format!("{n} endpoints"), within, || async {
            self.metric("rouse_revision_endpoints{service=\"hello\",revision=\"v1\"}")
                .await
                == n
        })
        .await;
    }

    /// Waits up to `within` for `/readyz` to answer 200; returns its body.
    pub async fn wait_ready(&self, within: Duration) -> String {
        let began = tokio::time::Instant::now();
        loop {
            let (status, body) = self.admin_get("/readyz").await;
            if status == 200 {
                return body;
            }
            assert!(
                began.elapsed() < within,
                "rouse not ready after {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits up to `within` for `cond`, polling every 50 ms.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let began = tokio::time::Instant::now();
    while !cond().await {
        assert!(began.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
