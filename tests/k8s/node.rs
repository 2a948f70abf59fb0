//! A local node: a small stand-in for the kubelet, so that Deployments scaled by rouse become
//! real processes. It registers the Node `local`, binds every unscheduled Pod to itself, runs
//! each Pod's first container as a local process (a map from image name to command), gives
//! it an address of its own in 192.0.2.0/24 and its port in `PORT`, reports it Ready once its
//! port accepts connections, and stops it (SIGTERM, then SIGKILL after the grace period) when
//! the Pod is deleted. Each Pod's output is in `pod-<namespace>-<name>.log` in the run's folder.
//!
//! Programs that listen on every address (Knative's test images bind `:PORT`) get a network
//! namespace of their own instead, as a real Pod does: an address in 198.18.0.0/15 (never
//! reused within a run) on a veth joined to the bridge [`BRIDGE`] (198.18.0.1, the way to
//! everything else), and an `/etc/resolv.conf` naming the cluster DNS at 198.18.0.1 with
//! Kubernetes' search path. With the controller-manager running, the whole loop is real: rouse
//! patches a Deployment, the controllers make Pods, this runs them, the EndpointSlice
//! controller lists them, and rouse watches the slices.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node as NodeObject, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;
use tokio::task::JoinHandle;

/// The node's name.
pub const NAME: &str = "local";

/// The bridge that Pods with a network of their own hang off.
pub const BRIDGE: &str = "rouse-pods";
/// The bridge's address: the Pods' gateway and DNS server.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Pods with a network of their own so far: the next one's number.
static NEXT_OWN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// What a container image runs as on this node.
#[derive(Debug, Clone)]
pub struct Image {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Runs in a network namespace of its own (for programs that bind every address).
    pub own_network: bool,
}

/// Joins the Pods' bridge; called once before any Pod with a network of its own starts.
pub fn bridge() {
    for args in [
        vec!["ip", "link", "add", BRIDGE, "type", "bridge"],
        // A fixed address: a bridge otherwise takes the lowest of its ports' addresses, so it
        // changes as Pods come and go, and the Pods' cached address of their gateway goes
        // stale until their ARP entry expires, stalling every connection through it (seen as
        // 30-50 s pauses of established connections).
        vec!["ip", "link", "set", BRIDGE, "address", "02:00:c6:12:00:01"],
        vec!["ip", "addr", "add", "198.18.0.1/15", "dev", BRIDGE],
        vec!["ip", "link", "set", BRIDGE, "up"],
    ] {
        let ok = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{args:?} failed");
    }
}

/// Inside a Pod's new network and mount namespaces: waits for the veth the node moves in,
/// configures it, puts the Pod's resolv.conf in place, and runs the program.
const POD_NETWORK: &str = r#"resolv=$1 ip=$2 up=$3; shift 3
: > "$up"
n=0
until ip link show eth0 >/dev/null 2>&1; do
  n=$((n+1)); [ $n -gt 1000 ] && { echo "no eth0" >&2; exit 90; }; sleep 0.01
done
ip link set lo up && ip addr add "$ip/15" dev eth0 && ip link set eth0 up && ip route add default via 198.18.0.1 || exit 91
mount --bind "$resolv" /etc/resolv.conf || exit 92
: > "$up.net"
exec "$@""#;

/// One Pod this node runs.
struct Running {
    ip: Ipv4Addr,
    port: u16,
    /// The process; taken when it is being stopped.
    child: Option<Child>,
    /// The Pod's other containers, in its network namespace (Knative's queue-proxy beside
    /// the app); stopped with it.
    sidecars: Vec<Child>,
    /// Set by a test: the Pod stays not ready whatever its process does.
    held_unready: bool,
}

/// What the node runs, shared with the tests.
#[derive(Default)]
struct State {
    pods: HashMap<(String, String), Running>,
    /// Processes started per namespace, ever.
    started: HashMap<String, u32>,
}

/// A running local node.
pub struct Node {
    client: Client,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
        let mut st = self.state.lock().unwrap();
        for (_, r) in st.pods.iter_mut() {
            if let Some(c) = r.child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

impl Node {
    /// Registers the node and starts running Pods; `images` maps an image name to the
    /// command its containers run.
    pub async fn start(client: Client, images: HashMap<String, Image>, resolv: PathBuf) -> Node {
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let node: NodeObject = serde_json::from_value(json!({
            "metadata": { "name": NAME },
        }))
        .unwrap();
        let _ = nodes.create(&PostParams::default(), &node).await;
        nodes
            .patch_status(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": {
                    "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "local test node" }],
                    "addresses": [{ "type": "InternalIP", "address": "192.0.2.1" }],
                }})),
            )
            .await
            .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(run(
            client.clone(),
            state.clone(),
            Arc::new(images),
            Arc::new(resolv),
        ));
        Node {
            client,
            state,
            task,
        }
    }

    /// The addresses of the Pods running in `namespace`, by Pod name.
    pub fn pods(&self, namespace: &str) -> HashMap<String, SocketAddr> {
        let st = self.state.lock().unwrap();
        st.pods
            .iter()
            .filter(|((ns, _), r)| ns == namespace && r.child.is_some())
            .map(|((_, name), r)| (name.clone(), SocketAddr::new(IpAddr::V4(r.ip), r.port)))
            .collect()
    }

    /// The process id (in the run's PID namespace) of Pod `name`'s first container.
    #[allow(dead_code)]
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        let st = self.state.lock().unwrap();
        st.pods
            .get(&(namespace.to_owned(), name.to_owned()))?
            .child
            .as_ref()?
            .id()
    }

    /// Processes ever started for Pods of `namespace`.
    pub fn started(&self, namespace: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .started
            .get(namespace)
            .copied()
            .unwrap_or(0)
    }

    /// Reports the Pod not ready (or ready again), as a failing readiness probe would.
    pub async fn set_ready(&self, namespace: &str, pod: &str, ready: bool) {
        if let Some(r) = self
            .state
            .lock()
            .unwrap()
            .pods
            .get_mut(&(namespace.to_owned(), pod.to_owned()))
        {
            r.held_unready = !ready;
        }
        report_ready(&self.client, namespace, pod, ready).await;
    }
}

async fn run(
    client: Client,
    state: Arc<Mutex<State>>,
    images: Arc<HashMap<String, Image>>,
    resolv: Arc<PathBuf>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(e) = events.next().await {
        match e {
            Ok(Event::Apply(p) | Event::InitApply(p)) => {
                handle(&client, &state, &images, &resolv, p).await;
            }
            Ok(Event::Delete(p)) => {
                let key = key(&p);
                let gone = state.lock().unwrap().pods.remove(&key);
                if let Some(mut r) = gone {
                    if let Some(mut c) = r.child.take() {
                        let _ = c.start_kill();
                    }
                    for c in r.sidecars.iter_mut() {
                        let _ = c.start_kill();
                    }
                }
            }
            _ => {}
        }
    }
}

fn key(p: &Pod) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

static NEXT_IP: AtomicU8 = AtomicU8::new(10);

async fn handle(
    client: &Client,
    state: &Arc<Mutex<State>>,
    images: &HashMap<String, Image>,
    resolv: &std::path::Path,
    pod: Pod,
) {
    let (ns, name) = key(&pod);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let spec = pod.spec.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
        let (child, mut sidecars) = state
            .lock()
            .unwrap()
            .pods
            .get_mut(&(ns.clone(), name.clone()))
            .map(|r| (r.child.take(), std::mem::take(&mut r.sidecars)))
            .unwrap_or_default();
        let api = api.clone();
        tokio::spawn(async move {
            let term = |c: &Child| {
                if let Some(pid) = c.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            };
            // Every container gets SIGTERM and the whole grace period, as the kubelet gives
            // them (Knative's queue-proxy keeps serving for its drain after the app is gone).
            let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
            let mut all: Vec<Child> = child.into_iter().collect();
            all.append(&mut sidecars);
            for c in &all {
                term(c);
            }
            let deadline = tokio::time::Instant::now() + grace;
            for c in all.iter_mut() {
                if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
                    let _ = c.kill().await;
                }
            }
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        });
        return;
    }
    if spec.node_name.is_none() {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(NAME.into()),
                ..Default::default()
            },
        };
        let _ = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await;
        return;
    }
    if spec.node_name.as_deref() != Some(NAME)
        || state
            .lock()
            .unwrap()
            .pods
            .contains_key(&(ns.clone(), name.clone()))
    {
        return;
    }
    let Some(container) = spec.containers.first() else {
        return;
    };
    let image = container.image.clone().unwrap_or_default();
    let Some(img) = images.get(&image) else {
        report_failed(
            client,
            &ns,
            &name,
            &format!("no command for image {image:?} on the local node"),
        )
        .await;
        return;
    };
    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map_or(8080, |p| u16::try_from(p.container_port).unwrap_or(8080));
    let command = &img.command;
    // Pods sharing the node's network take 192.0.2.10-250 in turn; the others a number of
    // their own for the run, which names their address and their veth.
    let own = NEXT_OWN.fetch_add(1, Ordering::Relaxed);
    let ip = if img.own_network {
        Ipv4Addr::from(u32::from(GATEWAY) + 1 + own)
    } else {
        Ipv4Addr::new(192, 0, 2, next_ip())
    };
    let up = resolv.with_file_name(format!("pod-{own}.up"));
    let mut cmd = if img.own_network {
        let mut c = tokio::process::Command::new("unshare");
        c.args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ])
        .arg(POD_NETWORK)
        .arg("sh")
        .arg(resolv)
        .arg(ip.to_string())
        .arg(&up)
        .args(command);
        c
    } else {
        let mut c = tokio::process::Command::new(&command[0]);
        c.args(&command[1..]);
        c
    };
    cmd.args(container.args.clone().unwrap_or_default())
        .env("PORT", port.to_string())
        .env("HOST", ip.to_string())
        .env("POD_NAME", &name)
        .env("POD_NAMESPACE", &ns)
        .env("POD_IP", ip.to_string())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // Each Pod's output goes to a file of its own in the run's folder, as `kubectl logs`
    // would show it, instead of into the test's output.
    let log = resolv.with_file_name(format!("pod-{ns}-{name}.log"));
    output_to(&mut cmd, &log);
    container_env(&mut cmd, container, &ns, &name, ip);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            report_failed(
                client,
                &ns,
                &name,
                &format!("cannot start {command:?}: {e}"),
            )
            .await;
            return;
        }
    };
    if img.own_network
        && let Err(why) = plug(child.id(), own, &up).await
    {
        report_failed(client, &ns, &name, &why).await;
        return;
    }
    // The other containers join the first one's network (and mount, for resolv.conf).
    let mut sidecars = Vec::new();
    for c in spec.containers.iter().skip(1).filter(|_| img.own_network) {
        let image = c.image.clone().unwrap_or_default();
        let Some(side) = images.get(&image) else {
            report_failed(
                client,
                &ns,
                &name,
                &format!("no command for image {image:?} on the local node"),
            )
            .await;
            return;
        };
        let Some(pid) = child.id().and_then(outer_pid) else {
            report_failed(client, &ns, &name, "the pod's first process is gone").await;
            return;
        };
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{pid}/ns/net"))
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg("--")
            .args(&side.command)
            .args(c.args.clone().unwrap_or_default())
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &ns)
            .env("POD_IP", ip.to_string())
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        output_to(&mut cmd, &log);
        container_env(&mut cmd, c, &ns, &name, ip);
        match cmd.spawn() {
            Ok(s) => sidecars.push(s),
            Err(e) => {
                report_failed(
                    client,
                    &ns,
                    &name,
                    &format!("cannot start {:?}: {e}", side.command),
                )
                .await;
                return;
            }
        }
    }
    {
        let mut st = state.lock().unwrap();
        *st.started.entry(ns.clone()).or_default() += 1;
        st.pods.insert(
            (ns.clone(), name.clone()),
            Running {
                ip,
                port,
                child: Some(child),
                sidecars,
                held_unready: false,
            },
        );
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": {
            "phase": "Running",
            "hostIP": "192.0.2.1",
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
            "conditions": conditions(false),
        }})),
    )
    .await
    .ok();
    // Readiness: the port accepts a connection, and so does the port of every container's
    // readiness probe (Knative's queue-proxy is probed on its serving port).
    let mut checked = vec![port];
    for c in spec.containers.iter().filter(|_| img.own_network) {
        let probe = c.readiness_probe.as_ref();
        let p = probe
            .and_then(|p| p.http_get.as_ref().map(|h| h.port.clone()))
            .or_else(|| probe.and_then(|p| p.tcp_socket.as_ref().map(|t| t.port.clone())));
        if let Some(IntOrString::Int(n)) = p
            && let Ok(n) = u16::try_from(n)
            && n != 0
            && !checked.contains(&n)
        {
            checked.push(n);
        }
    }
    let client = client.clone();
    let state = state.clone();
    tokio::spawn(async move {
        for port in checked {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            loop {
                let alive = state
                    .lock()
                    .unwrap()
                    .pods
                    .get(&(ns.clone(), name.clone()))
                    .is_some_and(|r| r.child.is_some());
                if !alive {
                    return;
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let held = state
            .lock()
            .unwrap()
            .pods
            .get(&(ns.clone(), name.clone()))
            .is_some_and(|r| r.held_unready);
        if !held {
            report_ready(&client, &ns, &name, true).await;
        }
    });
}

/// Appends a container's output to the Pod's log file.
fn output_to(cmd: &mut tokio::process::Command, log: &std::path::Path) {
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        && let Ok(g) = f.try_clone()
    {
        cmd.stdout(f).stderr(g);
    }
}

/// The number `/proc` knows process `pid` of the run's PID namespace by: the run keeps the
/// machine's `/proc`, where it appears under its outer number (`NSpid` lists both).
pub fn outer_pid(pid: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let Some(ids) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
            continue;
        };
        let ids: Vec<u32> = ids
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if ids.len() >= 2 && ids.last() == Some(&pid) {
            return ids.first().copied();
        }
    }
    None
}

/// A container's environment: its values, and the Pod fields the kubelet fills in
/// (`fieldRef` to the name, namespace and IP).
fn container_env(
    cmd: &mut tokio::process::Command,
    c: &k8s_openapi::api::core::v1::Container,
    ns: &str,
    name: &str,
    ip: Ipv4Addr,
) {
    for e in c.env.clone().unwrap_or_default() {
        let field = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let v = match (e.value, field) {
            (Some(v), _) => v,
            (None, Some("metadata.name")) => name.to_owned(),
            (None, Some("metadata.namespace")) => ns.to_owned(),
            (None, Some("status.podIP")) => ip.to_string(),
            (None, Some("status.hostIP")) => "192.0.2.1".to_owned(),
            _ => continue,
        };
        cmd.env(e.name, v);
    }
}

/// Moves one end of a new veth pair into the network namespace of process `pid` (as `eth0`)
/// and joins the other to the bridge. The pair goes when the namespace does.
async fn plug(pid: Option<u32>, n: u32, up: &std::path::Path) -> Result<(), String> {
    let pid = pid.ok_or("the pod's process exited at once")?.to_string();
    // The process makes its namespace a moment after it starts, and says so by creating
    // `up`; a veth moved in before that would land in the node's own namespace.
    let began = tokio::time::Instant::now();
    while !up.exists() {
        if began.elapsed() > Duration::from_secs(10) {
            return Err("the pod's process made no network namespace in 10s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let host = format!("rp{n}");
    for args in [
        vec![
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ],
        vec!["link", "set", &host, "master", BRIDGE, "up"],
    ] {
        let out = tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .map_err(|e| format!("ip {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    // The Pod reports its IP only once the address is configured, as a CNI plugin sets it up
    // before the containers start: a client that tried an address with no one behind it
    // yet would find its neighbour entry failed and lose a second to ARP.
    let configured = up.with_extension("up.net");
    let began = tokio::time::Instant::now();
    while !configured.exists() {
        if began.elapsed() > Duration::from_secs(10) {
            return Err("the pod's network was not configured in 10s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The next pod address's last byte, 10 to 250, going round.
fn next_ip() -> u8 {
    loop {
        let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
        if (10..=250).contains(&n) {
            return n;
        }
        NEXT_IP.store(10, Ordering::Relaxed);
    }
}

fn conditions(ready: bool) -> serde_json::Value {
    let s = if ready { "True" } else { "False" };
    json!([
        { "type": "PodScheduled", "status": "True" },
        { "type": "Initialized", "status": "True" },
        { "type": "ContainersReady", "status": s },
        { "type": "Ready", "status": s },
    ])
}

async fn report_ready(client: &Client, ns: &str, name: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "conditions": conditions(ready) } })),
    )
    .await
    .ok();
}

async fn report_failed(client: &Client, ns: &str, name: &str, why: &str) {
    eprintln!("local node: pod {ns}/{name}: {why}");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "phase": "Failed", "message": why } })),
    )
    .await
    .ok();
}
