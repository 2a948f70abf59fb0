//! `rouse inject`: adds the rouse sidecar to workload manifests, as `linkerd inject` does
//! (YAML in, YAML out), for per-pod `containerConcurrency` and stats without Knative.
//!
//! What changes in each pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod),
//! the way Knative Serving changes a revision's pod:
//! - a `rouse` container runs `rouse sidecar` with queue-proxy's environment: the app's port,
//!   the concurrency limit, the timeout, and the pod's identity from the downward API;
//! - the app's readiness probe moves to the sidecar (`SERVING_READINESS_PROBE`, named ports
//!   resolved to numbers), which runs it aggressively; kubelet instead probes the sidecar with
//!   `K-Network-Probe: queue`, keeping the app probe's timing. An `exec` probe stays on the app
//!   (only kubelet can run it) and the sidecar checks the app's port;
//! - the app gets a `preStop` hook on the sidecar's `/wait-for-drain`, so it stops only after
//!   the sidecar has drained;
//! - a Service in the same input that selects the pods and targets the app's port is pointed
//!   at the sidecar's port instead, so traffic passes through it.
//!
//! Injecting twice changes nothing: a template with a `rouse` container is left alone.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Port of the sidecar that clients use (queue-proxy's).
pub const SERVING_PORT: u16 = 8012;
/// Port of the sidecar's `/wait-for-drain`.
pub const ADMIN_PORT: u16 = 8022;
/// Port of the sidecar's Prometheus metrics.
pub const METRICS_PORT: u16 = 9091;
/// The app's port when its container declares none (Knative's default).
const DEFAULT_USER_PORT: u16 = 8080;

/// How to inject.
#[derive(Debug, Clone)]
pub struct Options {
    /// The rouse image.
    pub image: String,
    /// Most requests one pod handles at once; 0 for no limit. A template's
    /// `rouse.dev/container-concurrency` annotation wins.
    pub container_concurrency: u32,
    /// Total time per request in seconds (0 for none). `rouse.dev/timeout-seconds` wins.
    pub timeout_seconds: u32,
    /// The app container's name; default the first container. `rouse.dev/container` wins.
    pub container: Option<String>,
}

/// Something in the input that cannot be injected, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct InjectError {
    /// Document and object, like `document 2 (Deployment hello)`.
    pub at: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Injects every workload in the YAML stream `input`; returns the new stream and a line per
/// workload saying what was done.
pub fn inject(input: &str, opts: &Options) -> Result<(String, Vec<String>), InjectError> {
    let mut docs = Vec::new();
    for (i, d) in serde_norway::Deserializer::from_str(input).enumerate() {
        let v: Value = serde::Deserialize::deserialize(d).map_err(|e| InjectError {
            at: format!("document {}", i + 1),
            message: format!("not YAML: {e}"),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let mut report = Vec::new();
    // Workloads first, so Services can be pointed at the sidecars they now have.
    let mut injected: Vec<Injected> = Vec::new();
    for (i, d) in docs.iter_mut().enumerate() {
        for obj in objects(d) {
            let at = describe(i, obj);
            if let Some(done) = inject_object(obj, opts, &at)? {
                report.push(format!("{at}: {}", done.note));
                injected.push(done);
            }
        }
    }
    for (i, d) in docs.iter_mut().enumerate() {
        for obj in objects(d) {
            if obj["kind"] == "Service" && retarget(obj, &injected) {
                report.push(format!(
                    "{}: targets the sidecar's port {SERVING_PORT}",
                    describe(i, obj)
                ));
            }
        }
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_norway::to_string(d).map_err(|e| InjectError {
            at: format!("document {}", i + 1),
            message: e.to_string(),
        })?;
        out.push_str(&text);
    }
    Ok((out, report))
}

/// The objects of a document: itself, or the items of a `List`.
fn objects(doc: &mut Value) -> Vec<&mut Value> {
    if doc["kind"] == "List" && doc["items"].is_array() {
        return doc["items"].as_array_mut().into_iter().flatten().collect();
    }
    vec![doc]
}

fn describe(i: usize, obj: &Value) -> String {
    format!(
        "document {} ({} {})",
        i + 1,
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// An injected pod template: what a Service must select, and the port it must leave.
struct Injected {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    /// The app's port number and name.
    user_port: u16,
    port_name: Option<String>,
    note: String,
}

fn inject_object(
    obj: &mut Value,
    opts: &Options,
    at: &str,
) -> Result<Option<Injected>, InjectError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = obj["metadata"]["namespace"].as_str().map(str::to_owned);
    let template = match kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => &mut obj["spec"]["template"],
        "Pod" => obj,
        _ => return Ok(None),
    };
    let err = |message: String| InjectError {
        at: at.to_owned(),
        message,
    };
    let annotations = template["metadata"]["annotations"].clone();
    let note = |k: &str| {
        annotations
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let labels: BTreeMap<String, String> = template["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let spec = &mut template["spec"];
    let Some(containers) = spec["containers"].as_array_mut() else {
        return Err(err("the pod template has no containers".into()));
    };
    if containers.iter().any(|c| c["name"] == "rouse") {
        return Ok(Some(Injected {
            namespace,
            labels,
            user_port: 0,
            port_name: None,
            note: "already has the rouse sidecar; unchanged".into(),
        }));
    }
    let wanted = note("rouse.dev/container").or_else(|| opts.container.clone());
    let names: Vec<String> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    let app = match &wanted {
        Some(w) => containers.iter_mut().find(|c| c["name"] == w.as_str()).ok_or_else(|| {
            err(format!(
                "no container {w:?} (it has {}); name the app container with --container or the rouse.dev/container annotation",
                names.join(", ")
            ))
        })?,
        None => containers
            .first_mut()
            .ok_or_else(|| err("the pod template has no containers".into()))?,
    };
    let cc = match note("rouse.dev/container-concurrency") {
        Some(v) => v.parse::<u32>().map_err(|_| {
            err(format!(
                "annotation rouse.dev/container-concurrency = {v:?}: expected a whole number, 0 for no limit"
            ))
        })?,
        None => opts.container_concurrency,
    };
    let timeout = match note("rouse.dev/timeout-seconds") {
        Some(v) => v.parse::<u32>().map_err(|_| {
            err(format!(
                "annotation rouse.dev/timeout-seconds = {v:?}: expected whole seconds"
            ))
        })?,
        None => opts.timeout_seconds,
    };
    let ports: Vec<(Option<String>, u16)> = app["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let n = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                    Some((p["name"].as_str().map(str::to_owned), n))
                })
                .collect()
        })
        .unwrap_or_default();
    let (port_name, user_port) = ports.first().cloned().unwrap_or((None, DEFAULT_USER_PORT));
    if [SERVING_PORT, ADMIN_PORT, METRICS_PORT, 9090].contains(&user_port) {
        return Err(err(format!(
            "the app listens on {user_port}, a port the sidecar needs ({SERVING_PORT}, {ADMIN_PORT}, 9090, {METRICS_PORT}); move the app to another port"
        )));
    }
    // The readiness probe: the sidecar runs HTTP, TCP and gRPC probes; kubelet keeps exec.
    let mut probe = app["readinessProbe"].take();
    let exec = probe.get("exec").is_some();
    if exec {
        app["readinessProbe"] = probe.clone();
    } else if let Some(obj) = app.as_object_mut() {
        obj.remove("readinessProbe");
    }
    for kind in ["httpGet", "tcpSocket", "grpc"] {
        if let Some(p) = probe.get_mut(kind) {
            resolve_port(p, &ports, user_port)
                .map_err(|m| err(format!("readinessProbe.{kind}.port: {m}")))?;
        }
    }
    if app["lifecycle"]["preStop"].is_null() {
        app["lifecycle"]["preStop"] =
            json!({ "httpGet": { "path": "/wait-for-drain", "port": ADMIN_PORT } });
    }
    let mut sidecar_probe = json!({
        "httpGet": {
            "path": "/",
            "port": SERVING_PORT,
            "httpHeaders": [{ "name": "K-Network-Probe", "value": "queue" }],
        },
    });
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        if let Some(v) = probe.get(field) {
            sidecar_probe[field] = v.clone();
        }
    }
    let field = |path: &str| json!({ "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut env = vec![
        json!({ "name": "CONTAINER_CONCURRENCY", "value": cc.to_string() }),
        json!({ "name": "QUEUE_SERVING_PORT", "value": SERVING_PORT.to_string() }),
        json!({ "name": "USER_PORT", "value": user_port.to_string() }),
        json!({ "name": "REVISION_TIMEOUT_SECONDS", "value": timeout.to_string() }),
        json!({ "name": "SERVING_CONFIGURATION", "value": name }),
        json!({ "name": "SERVING_REVISION", "value": name }),
    ];
    for (var, path) in [
        ("SERVING_NAMESPACE", "metadata.namespace"),
        ("SERVING_POD", "metadata.name"),
        ("SERVING_POD_IP", "status.podIP"),
    ] {
        let mut e = field(path);
        e["name"] = json!(var);
        env.push(e);
    }
    if !probe.is_null() {
        env.push(json!({ "name": "SERVING_READINESS_PROBE", "value": probe.to_string() }));
    }
    containers.push(json!({
        "name": "rouse",
        "image": opts.image,
        "args": ["sidecar"],
        "ports": [
            { "name": "rouse-http", "containerPort": SERVING_PORT },
            { "name": "rouse-metrics", "containerPort": METRICS_PORT },
        ],
        "env": env,
        "readinessProbe": sidecar_probe,
        "resources": { "requests": { "cpu": "25m" } },
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
    }));
    template["metadata"]["annotations"]["rouse.dev/injected"] = json!("true");
    let mut note = format!(
        "sidecar added in front of container {:?} on port {user_port}, container_concurrency {cc}",
        app_name(&names, wanted.as_deref())
    );
    if exec {
        let _ = write!(
            note,
            "; its exec readiness probe stays with kubelet and the sidecar checks the port"
        );
    }
    Ok(Some(Injected {
        namespace,
        labels,
        user_port,
        port_name,
        note,
    }))
}

fn app_name(names: &[String], wanted: Option<&str>) -> String {
    wanted.map_or_else(|| names.first().cloned().unwrap_or_default(), str::to_owned)
}

/// Gives a probe target a port number: a name is looked up among the app's ports, none means
/// the app's port.
fn resolve_port(
    target: &mut Value,
    ports: &[(Option<String>, u16)],
    user_port: u16,
) -> Result<(), String> {
    match &target["port"] {
        Value::Null => target["port"] = json!(user_port),
        Value::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                target["port"] = json!(n);
            } else {
                let n = ports
                    .iter()
                    .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                    .map(|(_, p)| *p)
                    .ok_or_else(|| format!("{name:?} is not a port of the app container"))?;
                target["port"] = json!(n);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Points a Service that selects injected pods at the sidecar; true if it changed.
fn retarget(svc: &mut Value, injected: &[Injected]) -> bool {
    let ns = svc["metadata"]["namespace"].as_str().map(str::to_owned);
    let Some(selector) = svc["spec"]["selector"].as_object().cloned() else {
        return false;
    };
    let Some(w) = injected.iter().find(|w| {
        w.user_port != 0
            && w.namespace == ns
            && !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| w.labels.get(k).map(String::as_str) == v.as_str())
    }) else {
        return false;
    };
    let mut changed = false;
    if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for p in ports {
            let target = p
                .get("targetPort")
                .cloned()
                .unwrap_or_else(|| p["port"].clone());
            let to_app = match &target {
                Value::Number(n) => n.as_u64() == Some(u64::from(w.user_port)),
                Value::String(s) => {
                    w.port_name.as_deref() == Some(s.as_str())
                        || s.parse::<u16>().ok() == Some(w.user_port)
                }
                _ => false,
            };
            if to_app {
                p["targetPort"] = json!(SERVING_PORT);
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            image: "rouse:test".into(),
            container_concurrency: 10,
            timeout_seconds: 300,
            container: None,
        }
    }

    const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: hello, namespace: apps }
spec:
  selector: { matchLabels: { app: hello } }
  template:
    metadata: { labels: { app: hello } }
    spec:
      containers:
        - name: app
          image: hello:1
          ports: [{ name: http, containerPort: 8080 }]
          readinessProbe:
            httpGet: { path: /ready, port: http }
            periodSeconds: 3
---
apiVersion: v1
kind: Service
metadata: { name: hello, namespace: apps }
spec:
  selector: { app: hello }
  ports: [{ port: 80, targetPort: http }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: other, namespace: apps }
data: { a: b }
"#;

    fn docs(text: &str) -> Vec<Value> {
        serde_norway::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    fn env(c: &Value, name: &str) -> Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[test]
    fn a_deployment_gets_the_sidecar_and_its_probe_and_service_move_to_it() {
        let (out, report) = inject(APP, &opts()).unwrap();
        let d = docs(&out);
        assert_eq!(d.len(), 3);
        let pod = &d[0]["spec"]["template"];
        let cs = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        let (app, rouse) = (&cs[0], &cs[1]);
        assert!(app.get("readinessProbe").is_none(), "{app}");
        assert_eq!(app["lifecycle"]["preStop"]["httpGet"]["port"], 8022);
        assert_eq!(rouse["args"], json!(["sidecar"]));
        assert_eq!(env(rouse, "USER_PORT")["value"], "8080");
        assert_eq!(env(rouse, "CONTAINER_CONCURRENCY")["value"], "10");
        assert_eq!(
            env(rouse, "SERVING_POD")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        let probe: Value = serde_json::from_str(
            env(rouse, "SERVING_READINESS_PROBE")["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            probe["httpGet"]["port"], 8080,
            "named port resolved: {probe}"
        );
        assert_eq!(rouse["readinessProbe"]["httpGet"]["port"], 8012);
        assert_eq!(
            rouse["readinessProbe"]["httpGet"]["httpHeaders"][0]["value"],
            "queue"
        );
        assert_eq!(rouse["readinessProbe"]["periodSeconds"], 3);
        assert_eq!(pod["metadata"]["annotations"]["rouse.dev/injected"], "true");
        assert_eq!(d[1]["spec"]["ports"][0]["targetPort"], 8012);
        assert_eq!(d[2], docs(APP)[2], "other objects pass through unchanged");
        assert_eq!(report.len(), 2, "{report:?}");
        // Twice is once.
        let (again, report) = inject(&out, &opts()).unwrap();
        assert_eq!(docs(&again), d);
        assert!(report[0].contains("unchanged"), "{report:?}");
    }

    #[test]
    fn bad_input_is_named_with_its_document() {
        let e = inject(
            "kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {}}}\n",
            &opts(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 1 (Deployment x): the pod template has no containers"
        );
        let mut o = opts();
        o.container = Some("web".into());
        let e = inject(APP, &o).unwrap_err();
        assert!(
            e.to_string().contains("no container \"web\" (it has app)"),
            "{e}"
        );
        let e = inject("a: [\n", &opts()).unwrap_err();
        assert!(e.to_string().starts_with("document 1: not YAML"), "{e}");
        let bad = APP.replace("metadata: { labels: { app: hello } }", "metadata: { labels: { app: hello }, annotations: { rouse.dev/container-concurrency: ten } }");
        let e = inject(&bad, &opts()).unwrap_err();
        assert!(
            e.to_string()
                .contains("rouse.dev/container-concurrency = \"ten\""),
            "{e}"
        );
    }

    #[test]
    fn an_exec_probe_stays_with_kubelet() {
        let text = APP.replace(
            "httpGet: { path: /ready, port: http }",
            "exec: { command: [check] }",
        );
        let (out, report) = inject(&text, &opts()).unwrap();
        let d = docs(&out);
        let app = &d[0]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(app["readinessProbe"]["exec"]["command"][0], "check");
        assert!(
            report[0].contains("exec readiness probe stays"),
            "{report:?}"
        );
    }
}
