//! rouse as Knative's ingress, against Knative's own Ingress CRD: Ingresses of its class are
//! served (hosts, paths, visibility, headers), probed on every replica and marked Ready with
//! the load balancers named; updates are served once Ready says so; Ingresses that cannot be
//! served say why in their status while the others go on; Ingresses of other classes are never
//! touched; TLS certificates come from Secrets by SNI and follow them when they change.

use crate::env::{ROUSE_USER, Rouse, app, env, eventually, listed_service, namespace, ports};
use crate::support::{Got, get, h1_client};
use crate::trial;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "ingresses_of_our_class_are_served_probed_and_ready",
            ingresses_of_our_class_are_served_probed_and_ready,
        ),
        trial(
            "ingresses_that_cannot_be_served_say_why_and_the_rest_go_on",
            ingresses_that_cannot_be_served_say_why_and_the_rest_go_on,
        ),
        trial(
            "tls_from_secrets_by_sni_and_redirects_to_https",
            tls_from_secrets_by_sni_and_redirects_to_https,
        ),
        trial(
            "without_the_ingress_rbac_rouse_is_not_ready_and_says_why",
            without_the_ingress_rbac_rouse_is_not_ready_and_says_why,
        ),
    ]
}

pub fn ingresses(ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        env().admin.clone(),
        ns,
        &rouse::kubernetes::ingress::ingress_resource(),
    )
}

/// A rouse serving Ingresses of its own class (one per test: every test's rouse sees every
/// namespace), listed as the one replica behind its `rouse-internal` Service.
pub struct Ingress {
    pub rouse: Rouse,
    class: String,
    pub ns: String,
    pub public: SocketAddr,
    internal: SocketAddr,
    tls: SocketAddr,
}

pub async fn start(name: &str, extra: &str) -> Ingress {
    start_as(name, ROUSE_USER, extra).await
}

/// [`start`], rouse running as `user`.
pub async fn start_as(name: &str, user: &str, extra: &str) -> Ingress {
    launch(name, user, "", "", extra).await
}

/// [`start`] with more keys in `kubernetes.ingress` and in `kubernetes`.
pub async fn launch(
    name: &str,
    user: &str,
    ingress_keys: &str,
    kube_keys: &str,
    extra: &str,
) -> Ingress {
    let ns = namespace(name).await;
    let base = ports(4);
    let at = |i: u16| -> SocketAddr { format!("192.0.2.1:{}", base + i).parse().unwrap() };
    let (public, admin, internal, tls) = (at(0), at(1), at(2), at(3));
    let class = format!("{name}.rouse.ingress.networking.knative.dev");
    // rouse's own Services: the private one lists this process as its one replica.
    listed_service(&ns, "rouse", "http", 80, public.port(), &["192.0.2.1"]).await;
    listed_service(
        &ns,
        "rouse-internal",
        "http",
        80,
        internal.port(),
        &["192.0.2.1"],
    )
    .await;
    let body = format!(
        "listen_internal: {internal}
tls: {{ listen: {tls}, certificates: [] }}
kubernetes: {{ namespace: {ns}, ingress: {{ class: {class} {ingress_keys} }} {kube_keys} }}
{extra}"
    );
    let rouse =
        Rouse::start_with(name, user, &body, public, admin, &[("POD_NAMESPACE", &ns)]).await;
    Ingress {
        rouse,
        class,
        ns,
        public,
        internal,
        tls,
    }
}

impl Ingress {
    /// The cluster-local listener.
    pub fn internal(&self) -> SocketAddr {
        self.internal
    }

    /// The Ingress class this rouse serves.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Creates Ingress `name` of this rouse's class with `spec`.
    pub async fn create(&self, name: &str, spec: Value) {
        self.create_as(name, Some(&self.class), spec).await;
    }

    async fn create_as(&self, name: &str, class: Option<&str>, spec: Value) {
        let mut meta = json!({ "name": name });
        if let Some(c) = class {
            meta["annotations"] = json!({ "networking.knative.dev/ingress.class": c });
        }
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1",
            "kind": "Ingress",
            "metadata": meta,
            "spec": spec,
        }))
        .unwrap();
        ingresses(&self.ns)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }

    /// Replaces the spec of Ingress `name`.
    pub async fn update(&self, name: &str, spec: Value) {
        ingresses(&self.ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// Waits for Ingress `name` to be Ready for its current generation; returns it.
    pub async fn ready(&self, name: &str) -> DynamicObject {
        self.condition(name, "Ready", "True").await
    }

    /// Waits for condition `kind` of Ingress `name` to have `status` for the current
    /// generation; returns the object.
    async fn condition(&self, name: &str, kind: &str, status: &str) -> DynamicObject {
        let api = ingresses(&self.ns);
        let began = tokio::time::Instant::now();
        loop {
            let o = api.get(name).await.unwrap();
            let st = &o.data["status"];
            let current = st["observedGeneration"].as_i64() == o.metadata.generation;
            let found = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == kind && c["status"] == status);
            if current && found {
                return o;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "Ingress {name}: {kind} is not {status} for generation {:?}: {st}",
                o.metadata.generation
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn split(service: &str, percent: u32, headers: Value) -> Value {
    json!({ "serviceName": service, "serviceNamespace": "NS", "servicePort": 80, "percent": percent, "appendHeaders": headers })
}

/// Fills in the namespace wherever a spec says `NS`.
pub fn in_ns(spec: Value, ns: &str) -> Value {
    serde_json::from_str(&spec.to_string().replace("\"NS\"", &format!("\"{ns}\""))).unwrap()
}

async fn get_host(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    get(&h1_client(), addr, host, path, headers).await
}

async fn ingresses_of_our_class_are_served_probed_and_ready() {
    let _shared = env().exclusive.read().await;
    let ing = start("ingress-basic", "").await;
    let ns = ing.ns.clone();
    app(&ns, "hello", 1, &[]).await;
    app(&ns, "other", 1, &[]).await;
    let local_host = format!("private.{ns}.svc.cluster.local");
    let spec = |who: &str| {
        in_ns(
            json!({
                "rules": [
                    { "hosts": ["hello.example"], "visibility": "ExternalIP", "http": { "paths": [
                        { "path": "/other", "splits": [split("other", 100, json!({}))] },
                        { "splits": [split("hello", 100, json!({ "x-who": who }))] },
                    ]}},
                    { "hosts": [local_host], "visibility": "ClusterLocal", "http": { "paths": [
                        { "splits": [split("other", 100, json!({}))] },
                    ]}},
                ]
            }),
            &ns,
        )
    };
    ing.create("hello", spec("first")).await;
    // Not ours: never read twice, never written.
    ing.create_as(
        "foreign",
        Some("kourier.ingress.networking.knative.dev"),
        spec("x"),
    )
    .await;
    ing.create_as("classless", None, spec("x")).await;
    let o = ing.ready("hello").await;
    let st = &o.data["status"];
    assert_eq!(
        st["publicLoadBalancer"]["ingress"][0]["domainInternal"],
        format!("rouse.{ns}.svc.cluster.local")
    );
    assert_eq!(
        st["privateLoadBalancer"]["ingress"][0]["domainInternal"],
        format!("rouse-internal.{ns}.svc.cluster.local")
    );
    for t in ["LoadBalancerReady", "NetworkConfigured", "Ready"] {
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == t && c["status"] == "True"),
            "{t} in {st}"
        );
    }
    // Ready means served: the first request after it sees the spec.
    let got = get_host(
        ing.public,
        "hello.example",
        "/?echo=x-who",
        &[("x-who", "client")],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.starts_with("hello "), "{}", got.body);
    assert_eq!(
        got.header("x-echo-x-who"),
        "first",
        "appendHeaders overrides the client's"
    );
    let got = get_host(ing.public, "hello.example", "/other/x", &[]).await;
    assert!(got.body.starts_with("other "), "{}", got.body);
    // The probe route sets the hash on what it forwards; other values pass unchanged.
    let hash = ing_hash(&o);
    let got = get_host(
        ing.public,
        "hello.example",
        "/healthz",
        &[("k-network-probe", "probe"), ("k-network-hash", "override")],
    )
    .await;
    assert_eq!(got.header("k-network-hash"), hash);
    let got = get_host(
        ing.public,
        "hello.example",
        "/healthz",
        &[("k-network-probe", "probe"), ("k-network-hash", "abc")],
    )
    .await;
    assert_eq!(got.header("k-network-hash"), "abc");
    // Cluster-local hosts, in all their forms: on the private listener only.
    for host in [
        local_host.clone(),
        format!("private.{ns}.svc"),
        format!("private.{ns}"),
    ] {
        let got = get_host(ing.public, &host, "/", &[]).await;
        assert_eq!(
            got.status, 404,
            "{host} on the public listener: {}",
            got.body
        );
        let got = get_host(ing.internal, &host, "/", &[]).await;
        assert!(got.body.starts_with("other "), "{host}: {}", got.body);
    }
    // A host no rule has: 404.
    assert_eq!(
        get_host(ing.public, "nobody.example", "/", &[])
            .await
            .status,
        404
    );
    // An update is served by the time it is Ready.
    for round in 0..3 {
        let who = format!("round-{round}");
        ing.update("hello", spec(&who)).await;
        ing.ready("hello").await;
        let got = get_host(ing.public, "hello.example", "/?echo=x-who", &[]).await;
        assert_eq!(got.header("x-echo-x-who"), who);
    }
    // Every replica is probed: with a second one listed that does not answer, an update is
    // served here but not Ready; once that replica is gone, it is.
    let slices = Api::<EndpointSlice>::namespaced(env().admin.clone(), &ns);
    let replicas = |ips: &[&str]| json!({ "endpoints": ips.iter().map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } })).collect::<Vec<_>>() });
    slices
        .patch(
            "rouse-internal-1",
            &PatchParams::default(),
            &Patch::Merge(replicas(&["192.0.2.1", "192.0.2.250"])),
        )
        .await
        .unwrap();
    ing.update("hello", spec("two-replicas")).await;
    let o = ing.condition("hello", "Ready", "Unknown").await;
    assert!(
        o.data["status"].to_string().contains("Uninitialized"),
        "{}",
        o.data["status"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = ing.condition("hello", "Ready", "Unknown").await;
    assert_eq!(
        ing.rouse.metric("rouse_ingresses{state=\"probing\"}").await,
        1.0,
        "{}",
        o.data["status"]
    );
    let got = get_host(ing.public, "hello.example", "/?echo=x-who", &[]).await;
    assert_eq!(got.header("x-echo-x-who"), "two-replicas");
    slices
        .patch(
            "rouse-internal-1",
            &PatchParams::default(),
            &Patch::Merge(replicas(&["192.0.2.1"])),
        )
        .await
        .unwrap();
    ing.ready("hello").await;
    assert_eq!(
        ing.rouse.metric("rouse_ingresses{state=\"ready\"}").await,
        1.0
    );
    assert!(ing.rouse.metric("rouse_ingress_passes_total").await >= 4.0);
    // The others were never touched.
    for name in ["foreign", "classless"] {
        let o = ingresses(&ns).get(name).await.unwrap();
        assert!(
            o.data.get("status").is_none_or(Value::is_null),
            "{name}: {:?}",
            o.data.get("status")
        );
        assert_eq!(
            o.metadata.managed_fields.as_ref().map_or(0, Vec::len),
            1,
            "{name} written to"
        );
    }
    drop(ing.rouse);
    let _ = ing.tls;
}

/// The hash Knative's prober expects, read back through the probe route of the served spec.
fn ing_hash(o: &DynamicObject) -> String {
    // Computed by the same function Knative's ComputeHash is checked against in the unit tests.
    let spec: rouse::kubernetes::ingress::spec::IngressSpec =
        serde_json::from_value(o.data["spec"].clone()).unwrap();
    rouse::kubernetes::ingress::spec::hash(
        &spec,
        o.metadata.namespace.as_deref().unwrap(),
        o.metadata.name.as_deref().unwrap(),
    )
}

async fn ingresses_that_cannot_be_served_say_why_and_the_rest_go_on() {
    let _shared = env().exclusive.read().await;
    let ing = start("ingress-bad", "").await;
    let ns = ing.ns.clone();
    app(&ns, "hello", 1, &[]).await;
    let good = |host: &str| {
        in_ns(
            json!({ "rules": [{ "hosts": [host], "http": { "paths": [{ "splits": [split("hello", 100, json!({}))] }] } }] }),
            &ns,
        )
    };
    ing.create("good", good("good.example")).await;
    ing.ready("good").await;
    // A backend Service that does not exist.
    ing.create("missing", in_ns(json!({ "rules": [{ "hosts": ["missing.example"], "http": { "paths": [{ "splits": [split("nothere", 100, json!({}))] }] } }] }), &ns)).await;
    // A host another Ingress has.
    ing.create("conflict", good("good.example")).await;
    // Values Knative does not know.
    ing.create("bogus", in_ns(json!({ "httpOption": "Sometimes", "rules": [{ "hosts": ["bogus.example"], "visibility": "Everywhere", "http": { "paths": [{ "splits": [split("hello", 60, json!({}))] }] } }] }), &ns)).await;
    // A Secret that does not exist.
    ing.create("nosecret", in_ns(json!({ "tls": [{ "hosts": ["s.example"], "secretName": "absent", "secretNamespace": "NS" }], "rules": [{ "hosts": ["s.example"], "http": { "paths": [{ "splits": [split("hello", 100, json!({}))] }] } }] }), &ns)).await;
    for (name, reason, words) in [
        (
            "missing",
            "BackendMissing",
            format!("Service {ns}/nothere does not exist"),
        ),
        (
            "conflict",
            "DomainConflict",
            format!("\"good.example\" is already served by Ingress {ns}/good"),
        ),
        (
            "bogus",
            "InvalidSpec",
            "spec.httpOption: \"Sometimes\" is not one of Enabled, Redirected".to_owned(),
        ),
        (
            "nosecret",
            "SecretMissing",
            format!("Secret {ns}/absent was not found"),
        ),
    ] {
        let o = ing.condition(name, "Ready", "False").await;
        let c = o.data["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(c["reason"], reason, "{name}: {c}");
        assert!(
            c["message"].as_str().unwrap().contains(&words),
            "{name}: {c}"
        );
    }
    eventually(
        "the refusals are counted",
        Duration::from_secs(10),
        || async { ing.rouse.metric("rouse_ingresses{state=\"refused\"}").await == 4.0 },
    )
    .await;
    let o = ingresses(&ns).get("bogus").await.unwrap();
    let msg = o.data["status"]["conditions"].to_string();
    for part in ["visibility: \\\"Everywhere\\\"", "percents sum to 60"] {
        assert!(
            msg.contains(part),
            "every problem is named: {part} in {msg}"
        );
    }
    // The good one still serves; the refused ones serve nothing, not even the conflicting
    // host's other routes.
    let got = get_host(ing.public, "good.example", "/", &[]).await;
    assert_eq!(got.status, 200, "{}", got.body);
    for host in ["missing.example", "bogus.example", "s.example"] {
        assert_eq!(
            get_host(ing.public, host, "/", &[]).await.status,
            404,
            "{host}"
        );
    }
    // Fixing the cause is enough: the Service appears, the Ingress turns Ready and serves.
    app(&ns, "nothere", 1, &[]).await;
    ing.ready("missing").await;
    let got = get_host(ing.public, "missing.example", "/", &[]).await;
    assert!(got.body.starts_with("nothere "), "{}", got.body);
    // Removing the first claimant hands the host over.
    ingresses(&ns)
        .delete("good", &Default::default())
        .await
        .unwrap();
    ing.ready("conflict").await;
    drop(ing.rouse);
}

/// A self-signed certificate for `host` and its key, PEM.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn tls_secret(ns: &str, name: &str, (cert, key): &(String, String)) {
    use base64_free::encode;
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "networking.internal.knative.dev/certificate-uid": "test-uid" } },
        "type": "kubernetes.io/tls",
        "data": { "tls.crt": encode(cert.as_bytes()), "tls.key": encode(key.as_bytes()) },
    }))
    .unwrap();
    Api::<Secret>::namespaced(env().admin.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("rouse-test").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
}

/// Base64 for Secret data, without a crate for it.
mod base64_free {
    pub fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// GET over TLS with `sni`, trusting only `cert`: (status, the certificate rouse served).
async fn https_get(addr: SocketAddr, sni: &str, cert: &str) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = send
        .send_request(
            http::Request::get("/")
                .header("host", sni)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    Ok(status)
}

async fn tls_from_secrets_by_sni_and_redirects_to_https() {
    let _shared = env().exclusive.read().await;
    let ing = start("ingress-tls", "").await;
    let ns = ing.ns.clone();
    app(&ns, "hello", 1, &[]).await;
    let first = self_signed("secure.example");
    tls_secret(&ns, "secure-cert", &first).await;
    let spec = |option: &str| {
        in_ns(
            json!({
                "httpOption": option,
                "tls": [{ "hosts": ["secure.example"], "secretName": "secure-cert", "secretNamespace": "NS" }],
                "rules": [{ "hosts": ["secure.example"], "visibility": "ExternalIP", "http": { "paths": [{ "splits": [split("hello", 100, json!({}))] }] } }]
            }),
            &ns,
        )
    };
    ing.create("secure", spec("Enabled")).await;
    ing.ready("secure").await;
    assert_eq!(
        https_get(ing.tls, "secure.example", &first.0).await,
        Ok(200)
    );
    assert_eq!(
        get_host(ing.public, "secure.example", "/", &[])
            .await
            .status,
        200
    );
    // Redirected: cleartext gets a 301 to the same URL over HTTPS.
    ing.update("secure", spec("Redirected")).await;
    ing.ready("secure").await;
    let got = get_host(ing.public, "secure.example", "/a?b=c", &[]).await;
    assert_eq!(got.status, 301);
    assert!(
        got.header("location").starts_with("https://secure.example"),
        "{}",
        got.header("location")
    );
    assert!(
        got.header("location").ends_with("/a?b=c"),
        "{}",
        got.header("location")
    );
    assert_eq!(
        https_get(ing.tls, "secure.example", &first.0).await,
        Ok(200)
    );
    // A new certificate in the Secret is served without a restart.
    let second = self_signed("secure.example");
    tls_secret(&ns, "secure-cert", &second).await;
    eventually(
        "the new certificate is served",
        Duration::from_secs(20),
        || async { https_get(ing.tls, "secure.example", &second.0).await == Ok(200) },
    )
    .await;
    // A Secret rotated by delete and create: while it is gone the Ingress says so, and goes on
    // serving what it served, its certificate included.
    Api::<Secret>::namespaced(env().admin.clone(), &ns)
        .delete("secure-cert", &Default::default())
        .await
        .unwrap();
    let o = ing.condition("secure", "Ready", "False").await;
    let st = o.data["status"].to_string();
    assert!(
        st.contains("SecretMissing") && st.contains("the last spec that could be served is served"),
        "{st}"
    );
    assert_eq!(
        https_get(ing.tls, "secure.example", &second.0).await,
        Ok(200)
    );
    assert_eq!(
        get_host(ing.public, "secure.example", "/", &[])
            .await
            .status,
        301
    );
    tls_secret(&ns, "secure-cert", &second).await;
    ing.ready("secure").await;
    // A name no Ingress has a certificate for: no handshake (there is no default).
    assert!(
        https_get(ing.tls, "elsewhere.example", &first.0)
            .await
            .is_err()
    );
    drop(ing.rouse);
}

/// A replica that cannot read the Ingresses never joins its Service: `/readyz` stays 503 until
/// its first pass, and names what it cannot read.
async fn without_the_ingress_rbac_rouse_is_not_ready_and_says_why() {
    let _shared = env().exclusive.read().await;
    let ing = start_as(
        "ingress-norbac",
        "system:serviceaccount:rouse:no-rights",
        "",
    )
    .await;
    let rouse = &ing.rouse;
    eventually(
        "/readyz names the forbidden watch",
        Duration::from_secs(20),
        || async {
            let (status, text) = rouse.admin_get("/readyz").await;
            status == 503
                && text.contains("the first pass over Knative's Ingresses has not finished")
                && text.contains("forbidden")
        },
    )
    .await;
    let (_, text) = rouse.admin_get("/readyz").await;
    assert!(text.contains("Ingresses"), "{text}");
}
