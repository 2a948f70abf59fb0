//! Knative's Revisions as routes, for `rouse activator` (`kubernetes.activator`): one
//! service per Revision, reached by the revision's own host (which the activator front
//! routes the `Knative-Serving-Revision`/`-Namespace` headers to), whose one revision takes
//! the pods of the Revision's private Service (`<revision>-private`, port `http` or `http2`),
//! probes them directly while they are not ready, shares them with the other activators, and
//! reports its demand to Knative's autoscaler. Its `containerConcurrency` and timeouts come
//! from the Revision's spec; requests carry `K-Proxy-Request: activator` so the queue-proxies
//! count them as proxied.
//!
//! A watch (reflector) of Revisions feeds a pass over all of them on every change, which
//! hands the whole set to the gateway; like the Ingress controller, the first pass waits for
//! the first list, and `/readyz` says so until then.

use super::health::Health;
use super::ingress::spec::expanded_hosts;
use super::ingress::{Gateway, drive};
use crate::config::{
    self, ActivatorSettings, ColdStart, Dur, KubeEndpoints, PortRef, Protocol, Target, Timeouts,
    Visibility,
};
use crate::knative::activator::revision_host;
use crate::knative::headers::PROXY_REQUEST;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Knative's default `timeoutSeconds` (config-defaults `revision-timeout-seconds`), for a
/// Revision that was not defaulted by Knative's webhook.
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// Knative Serving's Revision resource, for the dynamic API.
pub fn revision_resource() -> ApiResource {
    ApiResource {
        group: "serving.knative.dev".into(),
        version: "v1".into(),
        api_version: "serving.knative.dev/v1".into(),
        kind: "Revision".into(),
        plural: "revisions".into(),
    }
}

/// The service that serves one Revision.
pub fn service_for(rev: &DynamicObject, a: &ActivatorSettings) -> Option<config::Service> {
    let name = rev.metadata.name.as_deref()?;
    let namespace = rev.metadata.namespace.as_deref()?;
    let spec = rev.data.get("spec").unwrap_or(&Value::Null);
    let seconds = |key: &str| {
        spec.get(key)
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .map(|s| Dur(Duration::from_secs(s)))
    };
    let cc = spec
        .get("containerConcurrency")
        .and_then(Value::as_u64)
        .map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX));
    // Knative's protocol of a revision: its (one) serving port named h2c.
    let h2c = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .any(|p| p.get("name").and_then(Value::as_str) == Some("h2c"));
    // Knative's activator skips its direct probe of a not-ready pod when the queue-proxy
    // cannot judge the app's readiness itself: an exec readiness probe, or a startup probe on
    // any container.
    let containers = spec.get("containers").and_then(Value::as_array);
    let probe_not_ready = !containers.into_iter().flatten().any(|c| {
        c.get("startupProbe").is_some_and(|p| !p.is_null())
            || c.get("readinessProbe")
                .and_then(|p| p.get("exec"))
                .is_some_and(|e| !e.is_null())
    });
    let mut set_headers = BTreeMap::new();
    set_headers.insert(PROXY_REQUEST.as_str().to_owned(), "activator".to_owned());
    Some(config::Service {
        name: format!("{namespace}/{name}"),
        // Knative's ExpandedHosts of the revision's Service name: also `.svc` and `<ns>` short.
        hosts: expanded_hosts(
            &revision_host(name, namespace, &a.cluster_domain),
            &a.cluster_domain,
        ),
        visibility: Visibility::External,
        redirect_to_https: false,
        routes: Vec::new(),
        traffic: vec![Target {
            revision: name.to_owned(),
            percent: 100,
            tag: None,
            set_headers,
        }],
        revisions: vec![config::Revision {
            grpc_port: None,
            name: name.to_owned(),
            protocol: if h2c { Protocol::H2c } else { Protocol::Http1 },
            container_concurrency: cc,
            endpoints: Vec::new(),
            kubernetes: Some(KubeEndpoints {
                service: format!("{name}-private"),
                namespace: Some(namespace.to_owned()),
                port: Some(PortRef::Name(if h2c { "http2" } else { "http" }.to_owned())),
                grpc_port: None,
                probe_not_ready,
                knative_revision: Some(format!("{namespace}/{name}")),
                // Knative's public Service of the revision lists the activators in front of
                // it while it is in proxy mode.
                shared_by: a.pod_ip.map(|_| name.to_owned()),
            }),
            queue: a.queue.clone(),
            scale: None,
            cold_start: ColdStart {
                placeholder: None,
                header: false,
                waiting_page: false,
            },
            tls: None,
        }],
        // Knative's timeoutSeconds counts from arrival, time held included.
        timeouts: Timeouts {
            request: Some(
                seconds("timeoutSeconds")
                    .unwrap_or(Dur(Duration::from_secs(DEFAULT_TIMEOUT_SECONDS))),
            ),
            response_start: seconds("responseStartTimeoutSeconds"),
            idle: seconds("idleTimeoutSeconds"),
            exempt_streams: false,
        },
        sticky: None,
        no_wake: None,
        rollout: None,
    })
}

/// Serves every Revision (of `settings.namespace`, or all) until `stop`.
pub async fn run(
    settings: ActivatorSettings,
    gateway: Arc<impl Gateway>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(client) = super::health::client_until(
        &health,
        "revisions",
        "to watch Knative's Revisions",
        &mut stop,
    )
    .await
    else {
        return;
    };
    let ar = revision_resource();
    let api = match &settings.namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client, ns, &ar),
        None => Api::<DynamicObject>::all_with(client, &ar),
    };
    let writer = reflector::store::Writer::new(ar);
    let revisions: Store<DynamicObject> = writer.as_reader();
    let changed = Arc::new(Notify::new());
    let task = drive(
        reflector::reflector(writer, watcher::watcher(api, watcher::Config::default())),
        changed.clone(),
        health.clone(),
        "Revisions",
        // A Revision's spec never changes; only new ones, deleted ones and their
        // generation matter, not their status.
        |o: &DynamicObject| {
            Some((
                format!("{:?}/{:?}", o.metadata.namespace, o.metadata.name),
                format!("{:?}/{:?}", o.metadata.uid, o.metadata.generation),
            ))
        },
    );
    tokio::select! {
        r = revisions.wait_until_ready() => if r.is_err() { task.abort(); return },
        _ = stop.changed() => { task.abort(); return }
    }
    info!(namespace = ?settings.namespace, "serving Knative Revisions as their activator");
    let mut last: Option<Vec<String>> = None;
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let mut all: Vec<Arc<DynamicObject>> = revisions.state();
        all.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let key: Vec<String> = all
            .iter()
            .map(|o| {
                format!(
                    "{:?}/{:?}/{:?}",
                    o.metadata.namespace, o.metadata.name, o.metadata.uid
                )
            })
            .collect();
        if last.as_ref() != Some(&key) {
            let services: Vec<config::Service> = all
                .iter()
                .filter_map(|o| service_for(o, &settings))
                .collect();
            let n = services.len();
            match gateway.serve(services).await {
                Ok(()) => {
                    last = Some(key);
                    retry = None;
                    health.clear("revisions");
                    health.revisions_pending.store(false, Ordering::Relaxed);
                    info!(revisions = n, "serving Knative Revisions");
                }
                Err(e) => {
                    let why = format!("the Revisions could not be served: {e}; retrying every 5s");
                    warn!("{why}");
                    health.report("revisions", &why);
                    retry = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            () = crate::clock::sleep_until_opt(retry) => {}
            _ = stop.changed() => break,
        }
    }
    task.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn revision(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": { "name": "hello-00001", "namespace": "apps", "uid": "u1" },
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_revision_becomes_a_service_with_knatives_settings() {
        let a = ActivatorSettings::default();
        let s = service_for(
            &revision(json!({
                "containerConcurrency": 3,
                "timeoutSeconds": 20,
                "responseStartTimeoutSeconds": 5,
                "containers": [{ "image": "x", "ports": [{ "name": "h2c", "containerPort": 8080 }] }],
            })),
            &a,
        )
        .unwrap();
        assert_eq!(s.name, "apps/hello-00001");
        assert_eq!(
            s.hosts,
            [
                "hello-00001.apps.svc.cluster.local",
                "hello-00001.apps.svc",
                "hello-00001.apps"
            ]
        );
        assert_eq!(s.traffic[0].set_headers["k-proxy-request"], "activator");
        let r = &s.revisions[0];
        assert_eq!(r.container_concurrency, 3);
        assert_eq!(r.protocol, Protocol::H2c);
        let k = r.kubernetes.as_ref().unwrap();
        assert_eq!(k.service, "hello-00001-private");
        assert_eq!(k.namespace.as_deref(), Some("apps"));
        assert_eq!(k.port, Some(PortRef::Name("http2".into())));
        assert!(k.probe_not_ready);
        assert_eq!(k.knative_revision.as_deref(), Some("apps/hello-00001"));
        assert_eq!(k.shared_by, None, "no pod IP, no sharing");
        assert_eq!(s.timeouts.request, Some(Dur(Duration::from_secs(20))));
        assert_eq!(s.timeouts.response_start, Some(Dur(Duration::from_secs(5))));
        assert_eq!(s.timeouts.idle, None);

        // Undefaulted: Knative's defaults; with a pod IP, pods are shared through the
        // revision's public Service.
        let a = ActivatorSettings {
            pod_ip: Some([10, 0, 0, 1].into()),
            ..ActivatorSettings::default()
        };
        let s = service_for(&revision(json!({ "containers": [{ "image": "x" }] })), &a).unwrap();
        let r = &s.revisions[0];
        assert_eq!((r.container_concurrency, r.protocol), (0, Protocol::Http1));
        assert!(r.kubernetes.as_ref().unwrap().probe_not_ready);
        let k = r.kubernetes.as_ref().unwrap();
        assert_eq!(k.port, Some(PortRef::Name("http".into())));
        assert_eq!(k.shared_by.as_deref(), Some("hello-00001"));
        assert_eq!(s.timeouts.request, Some(Dur(Duration::from_secs(300))));
    }

    #[test]
    fn pods_are_not_taken_early_when_the_queue_proxy_cannot_judge_the_app() {
        let a = ActivatorSettings::default();
        for spec in [
            json!({ "containers": [{ "image": "x", "readinessProbe": { "exec": { "command": ["true"] } } }] }),
            json!({ "containers": [{ "image": "x" }, { "image": "y", "startupProbe": { "tcpSocket": { "port": 1 } } }] }),
        ] {
            let s = service_for(&revision(spec.clone()), &a).unwrap();
            assert!(
                !s.revisions[0].kubernetes.as_ref().unwrap().probe_not_ready,
                "{spec}"
            );
        }
    }

    #[test]
    fn the_services_pass_the_configs_own_rules() {
        let a = ActivatorSettings::default();
        let mut cfg =
            config::Config::parse("listen: 127.0.0.1:0\nkubernetes: { activator: {} }\n").unwrap();
        cfg.services = vec![service_for(&revision(json!({})), &a).unwrap()];
        let issues = cfg.validate();
        assert!(issues.is_empty(), "{issues:?}");
    }
}
