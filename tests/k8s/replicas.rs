//! Several rouse replicas in front of the same Deployments: one leader, elected with a Lease,
//! decides on the demand of all; any replica may scale from zero; the next leader takes over
//! when the leader dies.

use crate::env::{ROUSE_USER, Rouse, app, env, eventually, listed_service, namespace, replicas};
use crate::support::{get, h1_client};
use crate::trial;
use http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use libtest_mimic::Trial;
use std::net::SocketAddr;
use std::time::Duration;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "two_replicas_one_leader_deciding_for_both_and_a_takeover",
        two_replicas_one_leader_deciding_for_both_and_a_takeover,
    )]
}

async fn two_replicas_one_leader_deciding_for_both_and_a_takeover() {
    let _shared = env().exclusive.read().await;
    let ns = namespace("replicas").await;
    app(&ns, "hello", 0, &[]).await;
    let ips = ["192.0.2.201", "192.0.2.202"];
    // How the replicas find each other (in a cluster, the Service selecting rouse's pods).
    listed_service(&ns, "rouse-peers", "admin", 9901, 9901, &ips).await;
    let cfg = format!(
        "kubernetes: {{ namespace: {ns}, lease: {{ namespace: {ns}, duration: 3s }}, peers: {{ service: rouse-peers, namespace: {ns}, port: admin }} }}
services:
  - name: hello
    hosts: ['*']
    traffic: [{{ revision: v1, percent: 100 }}]
    revisions:
      - name: v1
        container_concurrency: 10
        kubernetes: {{ service: hello }}
        scale: {{ min: 0, max: 3, idle_grace: 4s, stable_window: 2s, deployment: hello }}
"
    );
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let mut a = Rouse::start_on(
        "replica-a",
        ROUSE_USER,
        &cfg,
        at(ips[0], 8080),
        at(ips[0], 9901),
    )
    .await;
    let mut b = Rouse::start_on(
        "replica-b",
        ROUSE_USER,
        &cfg,
        at(ips[1], 8080),
        at(ips[1], 9901),
    )
    .await;
    a.wait_ready(Duration::from_secs(10)).await;
    b.wait_ready(Duration::from_secs(10)).await;
    let leader = "rouse_kubernetes_leader";
    eventually("one leader", Duration::from_secs(10), || async {
        a.metric(leader).await + b.metric(leader).await == 1.0
    })
    .await;
    // Still exactly one a Lease period later: the other does not take over a renewed Lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.metric(leader).await + b.metric(leader).await, 1.0);
    let a_leads = a.metric(leader).await == 1.0;
    let (leading, following) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // The follower scales from zero on its own.
    let c = h1_client();
    let got = get(&c, following.addr, "hello.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.header("rouse-cold-start"), "true");
    assert_eq!(replicas(&ns, "hello").await, 1);

    // Traffic through the follower only, for longer than idle_grace: the leader, which sees
    // none itself, keeps the pod because it reads the follower's demand.
    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < until {
        let got = get(&c, following.addr, "hello.test", "/?delay=20", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env().node.started(&ns),
        1,
        "the pod was stopped and started again meanwhile"
    );
    // Once the follower is idle too, the leader scales to zero.
    eventually(
        "the leader scales to zero",
        Duration::from_secs(20),
        || async { replicas(&ns, "hello").await == 0 },
    )
    .await;

    // The leader dies without releasing the Lease; the other takes over once it expires.
    leading.kill();
    eventually(
        "the follower takes over",
        Duration::from_secs(15),
        || async { following.metric(leader).await == 1.0 },
    )
    .await;
    let lease = Api::<Lease>::namespaced(env().admin.clone(), &ns)
        .get("rouse")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(following.identity.as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1), "one handover");
}
