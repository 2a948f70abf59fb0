//! Scale to zero and back through real Deployments: rouse patches the scale subresource, the
//! controllers make Pods, the local node runs them, and rouse follows their EndpointSlices.

use crate::env::{
    ROUSE_USER, Rouse, TWO_PORT_IMAGE, app, apply, env, eventually, hello_config, namespace,
    replicas,
};
use crate::support::{get, grpc_call, h1_client};
use crate::trial;
use http::StatusCode;
use libtest_mimic::Trial;
use std::time::Duration;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "scale_from_zero_through_a_deployment",
            scale_from_zero_through_a_deployment,
        ),
        trial(
            "fifty_requests_through_a_cold_start_none_lost",
            fifty_requests_through_a_cold_start_none_lost,
        ),
        trial(
            "an_idle_revision_scales_its_deployment_to_zero",
            an_idle_revision_scales_its_deployment_to_zero,
        ),
        trial(
            "a_pod_going_not_ready_gets_no_new_requests_and_finishes_its_own",
            a_pod_going_not_ready_gets_no_new_requests_and_finishes_its_own,
        ),
        trial(
            "a_deployment_set_to_zero_by_hand_comes_back_for_waiting_requests",
            a_deployment_set_to_zero_by_hand_comes_back_for_waiting_requests,
        ),
        trial(
            "a_statefulset_scales_from_zero_and_back",
            a_statefulset_scales_from_zero_and_back,
        ),
        trial(
            "a_new_leader_cuts_no_running_pods_before_its_window_holds_demand",
            a_new_leader_cuts_no_running_pods_before_its_window_holds_demand,
        ),
        trial(
            "traffic_splits_across_two_deployments",
            traffic_splits_across_two_deployments,
        ),
        trial(
            "rest_and_grpc_reach_the_same_pod_on_its_two_ports",
            rest_and_grpc_reach_the_same_pod_on_its_two_ports,
        ),
    ]
}

/// A service `hello` with one revision `v1` backed by Deployment and Service `name`.
fn one_revision(ns: &str, name: &str, idle_grace: &str) -> String {
    hello_config(
        ns,
        &[
            "container_concurrency: 10",
            &format!("kubernetes: {{ service: {name}, port: http }}"),
            &format!(
                "scale: {{ min: 0, max: 3, idle_grace: {idle_grace}, stable_window: 2s, deployment: {name} }}"
            ),
        ],
    )
}

async fn scale_from_zero_through_a_deployment() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("from-zero").await;
    app(&ns, "hello", 0, &[]).await;
    let rouse = Rouse::start("from-zero", ROUSE_USER, &one_revision(&ns, "hello", "60s")).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(replicas(&ns, "hello").await, 0);
    assert_eq!(
        env().node.started(&ns),
        0,
        "nothing runs before the first request"
    );

    let c = h1_client();
    let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.body.starts_with("hello "), "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    assert_eq!(replicas(&ns, "hello").await, 1);
    assert_eq!(env().node.started(&ns), 1);
    // The pod that answered is the one the node runs.
    let pods = env().node.pods(&ns);
    assert_eq!(pods.len(), 1, "{pods:?}");

    // Warm now: no cold-start header, same pod.
    let again = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("rouse-cold-start"), "");
    assert_eq!(again.header("x-pid"), got.header("x-pid"));
}

async fn fifty_requests_through_a_cold_start_none_lost() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("fifty").await;
    app(&ns, "hello", 0, &[("BOOT_DELAY_MS", "500")]).await;
    let rouse = Rouse::start("fifty", ROUSE_USER, &one_revision(&ns, "hello", "60s")).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let c = h1_client();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (c, addr) = (c.clone(), rouse.addr);
        all.spawn(async move { get(&c, addr, "hello.test", "/?delay=20", &[]).await });
    }
    let mut ok = 0;
    while let Some(got) = all.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert!(got.body.starts_with("hello "), "{}", got.body);
        ok += 1;
    }
    assert_eq!(ok, 50);
    // container_concurrency 10 with 50 waiting: the autoscaler asks for more than one pod,
    // within its max.
    let n = replicas(&ns, "hello").await;
    assert!((1..=3).contains(&n), "replicas {n}");
}

async fn an_idle_revision_scales_its_deployment_to_zero() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("to-zero").await;
    app(&ns, "hello", 0, &[]).await;
    let rouse = Rouse::start("to-zero", ROUSE_USER, &one_revision(&ns, "hello", "2s")).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let c = h1_client();
    let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(replicas(&ns, "hello").await, 1);
    // Idle for idle_grace: the Deployment goes to zero, the pod's process stops, and the
    // revision has no endpoint left.
    eventually("replicas back to 0", Duration::from_secs(20), || async {
        replicas(&ns, "hello").await == 0
    })
    .await;
    eventually(
        "the pod's process stopped",
        Duration::from_secs(20),
        || async { env().node.pods(&ns).is_empty() },
    )
    .await;
    rouse.wait_endpoints(0.0, Duration::from_secs(10)).await;
    // And it comes back on the next request.
    let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    assert_eq!(env().node.started(&ns), 2);
}

async fn a_pod_going_not_ready_gets_no_new_requests_and_finishes_its_own() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("not-ready").await;
    app(&ns, "hello", 2, &[]).await;
    eventually("two pods running", Duration::from_secs(30), || async {
        env().node.pods(&ns).len() == 2
    })
    .await;
    // Endpoints only, no scaling: the two pods are the Deployment's own.
    let cfg = hello_config(
        &ns,
        &[
            "container_concurrency: 10",
            "kubernetes: { service: hello, port: http }",
        ],
    );
    let rouse = Rouse::start("not-ready", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    rouse.wait_endpoints(2.0, Duration::from_secs(10)).await;
    let pods = env().node.pods(&ns);
    let (leaving, leaving_addr) = pods.iter().next().map(|(n, a)| (n.clone(), *a)).unwrap();
    let c = h1_client();
    // Long requests on both pods, then one pod turns not ready while they run.
    let mut long = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (c, addr) = (c.clone(), rouse.addr);
        long.spawn(async move { get(&c, addr, "hello.test", "/?delay=1500", &[]).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    env().node.set_ready(&ns, &leaving, false).await;
    rouse.wait_endpoints(1.0, Duration::from_secs(10)).await;
    // New requests all go to the other pod.
    let leaving_pid = pid_at(leaving_addr).await;
    for _ in 0..10 {
        let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_ne!(
            got.header("x-pid"),
            leaving_pid,
            "a new request went to the not-ready pod"
        );
    }
    // The requests already on it finished normally.
    let mut on_leaving = 0;
    while let Some(got) = long.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        on_leaving += usize::from(got.header("x-pid") == leaving_pid);
    }
    assert!(
        on_leaving > 0,
        "no long request had gone to the pod that left"
    );
}

/// The pid of the backend at `addr`, asked directly.
async fn pid_at(addr: std::net::SocketAddr) -> String {
    let c = h1_client();
    get(&c, addr, "direct", "/", &[])
        .await
        .header("x-pid")
        .to_owned()
}

async fn traffic_splits_across_two_deployments() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("split").await;
    app(&ns, "blue", 1, &[]).await;
    app(&ns, "green", 0, &[]).await;
    let cfg = format!(
        "kubernetes: {{ namespace: {ns}, lease: {{ namespace: {ns}, duration: 3s }} }}
services:
  - name: hello
    hosts: ['*']
    traffic: [{{ revision: blue, percent: 50 }}, {{ revision: green, percent: 50 }}]
    revisions:
      - name: blue
        kubernetes: {{ service: blue }}
        scale: {{ min: 0, max: 2, idle_grace: 60s, deployment: blue }}
      - name: green
        kubernetes: {{ service: green }}
        scale: {{ min: 0, max: 2, idle_grace: 60s, deployment: green }}
"
    );
    let rouse = Rouse::start("split", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let c = h1_client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..200 {
        let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        let rev = got.body.split(' ').next().unwrap().to_owned();
        *counts.entry(rev).or_insert(0u32) += 1;
    }
    // 200 requests at 50/50: each arm gets 100 ± 4.5σ (σ ≈ 7).
    for arm in ["blue", "green"] {
        let n = counts.get(arm).copied().unwrap_or(0);
        assert!((68..=132).contains(&n), "{arm}: {n} of 200 ({counts:?})");
    }
    // Green was at zero and was scaled up by its first request.
    assert_eq!(replicas(&ns, "green").await, 1);
}

async fn a_deployment_set_to_zero_by_hand_comes_back_for_waiting_requests() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("by-hand").await;
    app(&ns, "hello", 0, &[]).await;
    let rouse = Rouse::start("by-hand", ROUSE_USER, &one_revision(&ns, "hello", "60s")).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let c = h1_client();
    let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    // Past the scaler's own one-second re-check of the cold start it just made, so that
    // only a fresh wait for a pod can bring the next one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Someone scales it to zero behind rouse's back while rouse still wants one pod.
    let deployments =
        kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(env().admin.clone(), &ns);
    deployments
        .patch_scale(
            "hello",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "spec": { "replicas": 0 } })),
        )
        .await
        .unwrap();
    eventually("the pod gone", Duration::from_secs(20), || async {
        env().node.pods(&ns).is_empty()
    })
    .await;
    rouse.wait_endpoints(0.0, Duration::from_secs(10)).await;
    // The next request waits and brings it back (not a 503 after max_wait).
    let got = get(&c, rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    assert_eq!(replicas(&ns, "hello").await, 1);
}

async fn a_statefulset_scales_from_zero_and_back() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("stateful").await;
    let admin = env().admin.clone();
    let set: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "db" },
        "spec": {
            "replicas": 0,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": {
                "metadata": { "labels": { "app": "db" } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "db",
                        "image": "rouse.test/backend",
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "env": [{ "name": "REVISION", "value": "db" }],
                    }],
                },
            },
        },
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(admin.clone(), &ns)
        .create(&kube::api::PostParams::default(), &set)
        .await
        .unwrap();
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "db" },
        "spec": { "selector": { "app": "db" }, "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] },
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), &ns)
        .create(&kube::api::PostParams::default(), &svc)
        .await
        .unwrap();
    let cfg = format!(
        "kubernetes: {{ namespace: {ns}, lease: {{ namespace: {ns}, duration: 3s }} }}
services:
  - name: db
    hosts: ['*']
    traffic: [{{ revision: v1, percent: 100 }}]
    revisions:
      - name: v1
        kubernetes: {{ service: db }}
        scale: {{ min: 0, max: 1, idle_grace: 2s, stable_window: 2s, stateful_set: db }}
"
    );
    let rouse = Rouse::start("stateful", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let got = get(&h1_client(), rouse.addr, "db.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.body.starts_with("db "), "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    let pods = env().node.pods(&ns);
    assert!(pods.contains_key("db-0"), "{pods:?}");
    let sets = kube::Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(admin, &ns);
    // A count of 0 is left out of the Scale object (Go's omitempty).
    let replicas = || async {
        sets.get_scale("db")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0)
    };
    assert_eq!(replicas().await, 1);
    eventually(
        "the StatefulSet back to zero after idle_grace",
        Duration::from_secs(20),
        || async { replicas().await == 0 },
    )
    .await;
    eventually("its pod stopped", Duration::from_secs(20), || async {
        env().node.pods(&ns).is_empty()
    })
    .await;
}

async fn a_new_leader_cuts_no_running_pods_before_its_window_holds_demand() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("new-leader").await;
    app(&ns, "hello", 2, &[]).await;
    eventually("two pods running", Duration::from_secs(30), || async {
        env().node.pods(&ns).len() == 2
    })
    .await;
    // A rouse that starts (or takes over) in front of two running pods it knows nothing about:
    // idle_grace is 1 s, but its window is empty for its first 6 s.
    let cfg = hello_config(
        &ns,
        &[
            "kubernetes: { service: hello }",
            "scale: { min: 0, max: 3, idle_grace: 1s, stable_window: 6s, deployment: hello }",
        ],
    );
    let rouse = Rouse::start("new-leader", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    eventually("leading", Duration::from_secs(10), || async {
        rouse.metric("rouse_kubernetes_leader").await == 1.0
    })
    .await;
    // Well past idle_grace, still inside the window: nothing cut.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&ns, "hello").await,
        2,
        "pods cut before the window held any demand"
    );
    assert_eq!(env().node.pods(&ns).len(), 2);
    // Once the window has passed with no demand, the usual decisions resume.
    eventually(
        "scaled down after the window",
        Duration::from_secs(20),
        || async { replicas(&ns, "hello").await < 2 },
    )
    .await;
}

/// A model server's pods serve REST on `http` and gRPC on `grpc` (KServe's layout): with
/// `kubernetes.grpc_port`, one revision takes both, and one cold start serves a gRPC call.
async fn rest_and_grpc_reach_the_same_pod_on_its_two_ports() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("two-ports").await;
    let admin = &env().admin;
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "model" },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": "model" } },
            "template": {
                "metadata": { "labels": { "app": "model" } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "model",
                        "image": TWO_PORT_IMAGE,
                        "ports": [
                            { "name": "http", "containerPort": 8080 },
                            { "name": "grpc", "containerPort": 9090 },
                        ],
                        "env": [{ "name": "GRPC_PORT", "value": "9090" }],
                    }],
                },
            },
        },
    });
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "model" },
        "spec": { "selector": { "app": "model" }, "ports": [
            { "name": "http", "port": 80, "targetPort": "http" },
            { "name": "grpc", "port": 81, "targetPort": "grpc" },
        ] },
    });
    for doc in [deployment, service] {
        apply(admin, doc, Some(&ns), false).await.unwrap();
    }
    // `typo` names a gRPC port the Service does not have: its REST still works, and
    // /readyz says what is wrong.
    let cfg = format!(
        "kubernetes: {{ namespace: {ns}, lease: {{ namespace: {ns}, duration: 3s }} }}
services:
  - name: model
    hosts: [model.test]
    traffic: [{{ revision: v1, percent: 100 }}]
    revisions:
      - name: v1
        container_concurrency: 4
        kubernetes: {{ service: model, port: http, grpc_port: grpc }}
        scale: {{ min: 0, max: 1, idle_grace: 60s, deployment: model }}
  - name: typo
    hosts: [typo.test]
    traffic: [{{ revision: v1, percent: 100 }}]
    revisions:
      - name: v1
        kubernetes: {{ service: model, port: http, grpc_port: grcp }}
"
    );
    let rouse = Rouse::start("two-ports", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(replicas(&ns, "model").await, 0);

    // The gRPC call wakes the Deployment and goes to the pod's gRPC port over h2c.
    let call = grpc_call(rouse.addr, "model.test", "ready?").await;
    assert_eq!(call.status, StatusCode::OK, "{call:?}");
    assert_eq!(call.grpc_status, "0", "{call:?}");
    assert_eq!(
        call.headers
            .get("rouse-cold-start")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let pid = call
        .reply
        .strip_prefix("grpc ")
        .and_then(|r| r.strip_suffix(":ready?"))
        .unwrap_or_else(|| panic!("{call:?}"))
        .to_owned();
    assert_eq!(replicas(&ns, "model").await, 1);
    // REST to the same pod's HTTP port, through the same endpoint.
    let rest = get(&h1_client(), rouse.addr, "model.test", "/v2/models/m", &[]).await;
    assert_eq!(rest.status, StatusCode::OK, "{}", rest.body);
    assert_eq!(rest.body, format!("rest {pid}"), "one pod serves both");
    assert_eq!(
        rouse
            .metric("rouse_revision_endpoints{service=\"model\",revision=\"v1\"}")
            .await,
        1.0
    );

    // The misnamed gRPC port: REST is served, the problem is named.
    let rest = get(&h1_client(), rouse.addr, "typo.test", "/", &[]).await;
    assert_eq!(rest.status, StatusCode::OK, "{}", rest.body);
    assert_eq!(rest.body, format!("rest {pid}"));
    let wanted =
        "no gRPC port \"grcp\" (kubernetes.grpc_port) in the Service's EndpointSlices (they list: ";
    eventually(
        "the missing gRPC port on /readyz",
        Duration::from_secs(10),
        || async { rouse.admin_get("/readyz").await.1.contains(wanted) },
    )
    .await;
}
