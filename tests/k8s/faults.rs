//! What rouse does when the cluster does not give it what it needs: an API server that goes
//! away under load, a Service that does not exist, a verb RBAC does not grant.

use crate::env::{
    ROUSE_USER, Rouse, app, apply, env, eventually, hello_config, namespace, replicas,
};
use crate::support::{get, h1_client};
use crate::trial;
use http::StatusCode;
use libtest_mimic::Trial;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "the_api_server_restarted_under_load_traffic_keeps_flowing",
            the_api_server_restarted_under_load_traffic_keeps_flowing,
        ),
        trial(
            "a_missing_service_is_named_and_its_requests_refused_at_once",
            a_missing_service_is_named_and_its_requests_refused_at_once,
        ),
        trial(
            "a_forbidden_scale_says_which_verb_and_fails_held_requests_fast",
            a_forbidden_scale_says_which_verb_and_fails_held_requests_fast,
        ),
    ]
}

async fn the_api_server_restarted_under_load_traffic_keeps_flowing() {
    // Alone: every other test needs the API server.
    let _alone = env().exclusive.write().await;
    let ns = namespace("restart").await;
    app(&ns, "hello", 2, &[]).await;
    eventually("two pods running", Duration::from_secs(30), || async {
        env().node.pods(&ns).len() == 2
    })
    .await;
    let cfg = hello_config(&ns, &["kubernetes: { service: hello }"]);
    let rouse = Rouse::start("restart", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    rouse.wait_endpoints(2.0, Duration::from_secs(10)).await;
    // Steady traffic for the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, s) = (rouse.addr, stop.clone());
    let load = tokio::spawn(async move {
        let c = h1_client();
        let mut statuses = Vec::new();
        while !s.load(Ordering::Relaxed) {
            statuses.push(get(&c, addr, "hello.test", "/", &[]).await.status);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });
    env().cluster.lock().await.stop_apiserver();
    // rouse notices, says so, and keeps serving what it knows.
    eventually(
        "the broken watch on /readyz",
        Duration::from_secs(20),
        || async {
            let (status, body) = rouse.admin_get("/readyz").await;
            status == 200
                && body.contains("EndpointSlices of Service")
                && body.contains("unreachable")
        },
    )
    .await;
    assert!(rouse.metric("rouse_kubernetes_api_errors_total").await >= 1.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    env().cluster.lock().await.restart_apiserver().await;
    eventually(
        "the watch resumed and the problem cleared",
        Duration::from_secs(60),
        || async {
            let (_, body) = rouse.admin_get("/readyz").await;
            body == "ready\n"
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(statuses.len() > 50, "only {} requests", statuses.len());
    let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

async fn a_missing_service_is_named_and_its_requests_refused_at_once() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("missing").await;
    let cfg = hello_config(
        &ns,
        &["kubernetes: { service: nope }", "queue: { max_wait: 30s }"],
    );
    let rouse = Rouse::start("missing", ROUSE_USER, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let wanted = format!("Service nope does not exist in namespace {ns}");
    eventually(
        "the missing Service on /readyz",
        Duration::from_secs(10),
        || async { rouse.admin_get("/readyz").await.1.contains(&wanted) },
    )
    .await;
    let (_, body) = rouse.admin_get("/readyz").await;
    assert!(
        body.contains("fix the config of revision v1 of service hello"),
        "{body}"
    );
    assert_eq!(
        rouse
            .metric(&format!(
                "rouse_kubernetes_problem{{what=\"Service {ns}/nope\"}}"
            ))
            .await,
        1.0
    );
    let began = tokio::time::Instant::now();
    let got = get(&h1_client(), rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(got.body.contains(&wanted), "{}", got.body);
    assert!(
        got.header("retry-after").parse::<u64>().is_ok(),
        "{:?}",
        got.headers
    );
    // Refused at once, not after the 30 s max_wait.
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );

    // Once the Service and its pod exist, the same revision serves.
    app(&ns, "nope", 1, &[]).await;
    eventually("the revision serves", Duration::from_secs(30), || async {
        get(&h1_client(), rouse.addr, "hello.test", "/", &[])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    eventually("the problem cleared", Duration::from_secs(10), || async {
        rouse.admin_get("/readyz").await.1 == "ready\n"
    })
    .await;
}

async fn a_forbidden_scale_says_which_verb_and_fails_held_requests_fast() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("forbidden").await;
    app(&ns, "hello", 0, &[]).await;
    // A user that may read Services and EndpointSlices but not scale anything.
    let user = "system:serviceaccount:rouse:read-only";
    for doc in [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "read-only" },
            "rules": [
                { "apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "read-only" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-only" },
            "subjects": [{ "kind": "User", "name": user }],
        }),
    ] {
        apply(&env().admin, doc, Some(&ns), false).await.unwrap();
    }
    let cfg = hello_config(
        &ns,
        &[
            "kubernetes: { service: hello }",
            "queue: { max_wait: 30s }",
            "scale: { deployment: hello }",
        ],
    );
    let rouse = Rouse::start("forbidden", user, &cfg).await;
    rouse.wait_ready(Duration::from_secs(10)).await;
    let began = tokio::time::Instant::now();
    let got = get(&h1_client(), rouse.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.body);
    for words in [
        "forbidden to get and patch deployments/scale hello",
        &format!("namespace {ns}"),
        "read-only",
    ] {
        assert!(got.body.contains(words), "{words:?} not in {}", got.body);
    }
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    let (_, ready) = rouse.admin_get("/readyz").await;
    assert!(
        ready.contains(&format!("scaling Deployment {ns}/hello: forbidden")),
        "{ready}"
    );
    // Nothing was scaled.
    assert_eq!(replicas(&ns, "hello").await, 0);
    assert_eq!(env().node.started(&ns), 0);
}
