//! `rouse activator` in Knative's place, against Knative's own controller, autoscaler and
//! queue-proxy (tests/k8s/serving.rs): a Configuration's Revision starts at zero; a request
//! named by Knative's routing headers is held by rouse, whose stats make **Knative's
//! autoscaler** scale the Deployment; the Pod (the app plus Knative's queue-proxy, run by the
//! local node) gets the request; with no more traffic Knative scales it back to zero. Bad
//! input gets clear answers, and holding is bounded.

use crate::env::{Rouse, apply, env, eventually, namespace, ports};
use crate::serving::{APP_IMAGE, serving};
use crate::support::{self, Got};
use crate::trial;
use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::DynamicObject;
use libtest_mimic::Trial;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// The identity `deploy/knative/activator.yaml` gives rouse.
const ACTIVATOR_USER: &str = "system:serviceaccount:knative-serving:rouse-activator";

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "activator_a_revision_at_zero_is_scaled_by_knatives_autoscaler_on_rouses_stats",
            from_zero_and_back,
        ),
        trial(
            "activator_one_hop_the_ingress_activates_a_knative_route_itself",
            one_hop,
        ),
    ]
}

/// A Configuration whose Revision starts at zero, with `container_concurrency`.
pub async fn configuration(ns: &str, name: &str, container_concurrency: u32) {
    configuration_with(ns, name, container_concurrency, &[], APP_IMAGE).await;
}

/// [`configuration`] with more template annotations and another image.
pub async fn configuration_with(
    ns: &str,
    name: &str,
    container_concurrency: u32,
    annotations: &[(&str, &str)],
    image: &str,
) {
    let admin = &env().admin;
    let mut notes = json!({
        // Knative's webhook would add the class; it does not run here.
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/initial-scale": "0",
    });
    for (k, v) in annotations {
        notes[*k] = json!(v);
    }
    apply(
        admin,
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Configuration",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "template": {
                "metadata": { "annotations": notes },
                "spec": {
                    "containerConcurrency": container_concurrency,
                    "timeoutSeconds": 60,
                    "containers": [{
                        "image": image,
                        "env": [
                            { "name": "HOST", "value": "0.0.0.0" },
                            { "name": "REVISION", "value": name },
                        ],
                    }],
                },
            }},
        }),
        None,
        false,
    )
    .await
    .unwrap();
}

/// The Deployment's `spec.replicas` (None until Knative made it).
pub async fn replicas(ns: &str, name: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(env().admin.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|d| d.spec.replicas)
}

/// Starts `rouse activator` for the Revisions of `ns`.
pub async fn activator(ns: &str, autoscaler: &str, extra: &[&str]) -> Rouse {
    let port = ports(3);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", port + 2).parse().unwrap();
    let mut args: Vec<String> = [
        "activator",
        "--listen",
        &addr.to_string(),
        "--listen-h2c",
        &format!("127.0.0.1:{}", port + 1),
        "--admin",
        &admin.to_string(),
        "--namespace",
        ns,
        "--autoscaler",
        autoscaler,
        "--drain-quiet",
        "0s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let r = Rouse::spawn("activator", ACTIVATOR_USER, &args, addr, admin, &[]).await;
    r.wait_ready(Duration::from_secs(30)).await;
    r
}

async fn to_revision(rouse: &Rouse, ns: &str, rev: &str, path: &str) -> Got {
    let c = support::h1_client();
    support::get(
        &c,
        rouse.addr,
        "hello.example.com",
        path,
        &[
            ("knative-serving-revision", rev),
            ("knative-serving-namespace", ns),
        ],
    )
    .await
}

async fn from_zero_and_back() {
    let _shared = env().exclusive.read().await;
    let autoscaler = serving().await;
    let ns = namespace("activator").await;
    configuration(&ns, "hello", 1).await;
    let rev = "hello-00001";
    let deployment = format!("{rev}-deployment");
    let revisions: Api<DynamicObject> = Api::namespaced_with(
        env().admin.clone(),
        &ns,
        &rouse::kubernetes::activator::revision_resource(),
    );
    eventually(
        "Knative made the Revision and its Deployment at zero",
        Duration::from_secs(60),
        || async {
            revisions.get_opt(rev).await.unwrap().is_some()
                && replicas(&ns, &deployment).await == Some(0)
        },
    )
    .await;
    // An activator that cannot reach the autoscaler is still ready (Knative's is not), and
    // says so in its metrics.
    {
        let cut_off = activator(&ns, "ws://192.0.2.1:9", &[]).await;
        eventually(
            "failed connects counted",
            Duration::from_secs(10),
            || async {
                cut_off
                    .metric("rouse_autoscaler_connect_errors_total")
                    .await
                    >= 2.0
            },
        )
        .await;
        assert_eq!(cut_off.metric("rouse_autoscaler_connected").await, 0.0);
        assert_eq!(cut_off.admin_get("/readyz").await.0, 200);
        let c = support::h1_client();
        let kubelet = support::get(
            &c,
            cut_off.addr,
            "10.0.0.1:8012",
            "/",
            &[("user-agent", "kube-probe/1.37")],
        )
        .await;
        assert_eq!(kubelet.status.as_u16(), 200, "{}", kubelet.body);
    }
    let rouse = activator(&ns, &autoscaler, &["--max-held", "2"]).await;

    // Knative's probes of an activator, answered as Knative's answers them.
    let c = support::h1_client();
    let probe = support::get(
        &c,
        rouse.addr,
        "x",
        "/healthz",
        &[("k-network-probe", "activator")],
    )
    .await;
    assert_eq!(
        (probe.status.as_u16(), probe.body.as_str()),
        (200, "activator")
    );
    // A revision that does not exist is a clear 404, and nothing is held for it.
    let unknown = to_revision(&rouse, &ns, "nope-00001", "/").await;
    assert_eq!(unknown.status.as_u16(), 404, "{}", unknown.body);
    assert!(unknown.body.contains("nope-00001"), "{}", unknown.body);

    // At zero: the request is held, the autoscaler hears of it from rouse alone and scales
    // the Deployment, the Pod comes up, and the request gets through Knative's queue-proxy,
    // which gives the app the client's Host back.
    let got = to_revision(&rouse, &ns, rev, "/?echo=host,k-proxy-request").await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert!(got.body.starts_with("hello "), "{}", got.body);
    assert_eq!(got.header("x-echo-host"), "hello.example.com");
    assert_eq!(
        got.header("x-echo-k-proxy-request"),
        "activator",
        "the queue-proxy must count it as proxied"
    );
    // Knative's target is 70 % of containerConcurrency 1: one request asks for two pods.
    assert!(replicas(&ns, &deployment).await >= Some(1));
    assert!(rouse.metric("rouse_autoscaler_wakeups_total").await >= 1.0);
    assert!(
        rouse
            .metric("rouse_autoscaler_frames_total{result=\"sent\"}")
            .await
            >= 1.0
    );
    assert_eq!(rouse.metric("rouse_autoscaler_connected").await, 1.0);

    // No more traffic: Knative's autoscaler takes the revision back to zero, and rouse's
    // endpoint set follows.
    let series = format!("rouse_revision_endpoints{{service=\"{ns}/{rev}\",revision=\"{rev}\"}}");
    eventually(
        "Knative scaled the revision back to zero",
        Duration::from_secs(90),
        || async { replicas(&ns, &deployment).await == Some(0) },
    )
    .await;
    eventually("rouse saw the pod go", Duration::from_secs(30), || async {
        rouse.metric(&series).await == 0.0
    })
    .await;

    // Holding is bounded: with two held, a third request at zero is refused at once with
    // Retry-After; the two held ones are served once the revision is back.
    let held = join_all((0..2).map(|_| to_revision(&rouse, &ns, rev, "/")));
    let third = async {
        eventually("two requests held", Duration::from_secs(10), || async {
            rouse
                .metric(&format!(
                    "rouse_revision_held_requests{{service=\"{ns}/{rev}\",revision=\"{rev}\"}}"
                ))
                .await
                == 2.0
        })
        .await;
        to_revision(&rouse, &ns, rev, "/").await
    };
    let (held, third) = tokio::join!(held, third);
    assert_eq!(third.status.as_u16(), 503, "{}", third.body);
    assert!(!third.header("retry-after").is_empty(), "no Retry-After");
    for g in held {
        assert_eq!(g.status.as_u16(), 200, "{}", g.body);
    }
}

/// rouse as Knative's ingress with `activate`: a Knative Route of rouse's class becomes an
/// Ingress that rouse serves and marks Ready (probes of the revision at zero answered by rouse,
/// without waking it); a request to the Route's host is held by the ingress itself, Knative's
/// autoscaler scales the revision on the ingress's stats, and the request goes straight to the
/// pod. Nothing listens where Knative's activator would be (the activator Service lists
/// 192.0.2.1:8012), so an answer proves the one hop.
async fn one_hop() {
    let _shared = env().exclusive.read().await;
    let autoscaler = serving().await;
    let ing = crate::ingress::launch(
        "onehop",
        crate::env::ROUSE_USER,
        ", activate: true",
        &format!(", autoscaler: {{ url: \"{autoscaler}\" }}"),
        "",
    )
    .await;
    let ns = ing.ns.clone();
    configuration(&ns, "hello", 0).await;
    let rev = "hello-00001";
    let deployment = format!("{rev}-deployment");
    eventually(
        "Knative made the Revision's Deployment at zero",
        Duration::from_secs(60),
        || async { replicas(&ns, &deployment).await == Some(0) },
    )
    .await;
    apply(
        &env().admin,
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Route",
            "metadata": {
                "name": "hello",
                "namespace": ns,
                "annotations": { "networking.knative.dev/ingress.class": ing.class() },
            },
            "spec": { "traffic": [{ "revisionName": rev, "percent": 100 }] },
        }),
        None,
        false,
    )
    .await
    .unwrap();
    let routes: Api<DynamicObject> = Api::namespaced_with(
        env().admin.clone(),
        &ns,
        &kube::api::ApiResource {
            group: "serving.knative.dev".into(),
            version: "v1".into(),
            api_version: "serving.knative.dev/v1".into(),
            kind: "Route".into(),
            plural: "routes".into(),
        },
    );
    eventually(
        "the Route is Ready (its Ingress served and probed by rouse)",
        Duration::from_secs(60),
        || async {
            routes.get_opt("hello").await.unwrap().is_some_and(|r| {
                r.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        },
    )
    .await;
    // The probes did not wake the revision.
    assert_eq!(replicas(&ns, &deployment).await, Some(0));
    assert_eq!(
        ing.rouse.metric("rouse_autoscaler_wakeups_total").await,
        0.0
    );

    let c = support::h1_client();
    let host = format!("hello.{ns}.example.com");
    let got = support::get(&c, ing.public, &host, "/?echo=host", &[]).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert!(got.body.starts_with("hello "), "{}", got.body);
    assert_eq!(got.header("x-echo-host"), host);
    assert!(replicas(&ns, &deployment).await >= Some(1));
    let wakeups = ing.rouse.metric("rouse_autoscaler_wakeups_total").await;
    assert!(wakeups >= 1.0);
    eventually(
        "Knative scaled the revision back to zero",
        Duration::from_secs(90),
        || async { replicas(&ns, &deployment).await == Some(0) },
    )
    .await;
    // Every copy of the revision in rouse (one per Ingress rule) has seen its pod go.
    eventually("rouse saw the pod go", Duration::from_secs(30), || async {
        let (_, text) = ing.rouse.admin_get("/metrics").await;
        let copies: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("rouse_revision_endpoints{")
                    && l.contains(&format!("revision=\"{rev}:80\""))
            })
            .collect();
        !copies.is_empty() && copies.iter().all(|l| l.ends_with(" 0"))
    })
    .await;
    // The cluster-local rule is another revision of rouse for the same Knative revision: its
    // cold start is announced too, and reported under the same name.
    let local = format!("hello.{ns}.svc.cluster.local");
    let got = support::get(&c, ing.internal(), &local, "/", &[]).await;
    assert_eq!(got.status.as_u16(), 200, "{}", got.body);
    assert!(ing.rouse.metric("rouse_autoscaler_wakeups_total").await > wakeups);
}
