//! One Ingress → the gateway's services: a service per rule (its expanded hosts, its
//! visibility, a 301 to HTTPS where asked), a route per path in the order given with Knative's
//! probe copy before each (`InsertProbe`: the same match plus `K-Network-Hash: override`,
//! setting `K-Network-Hash: <hash>` on what it forwards), and a revision per backend, whose
//! endpoints are the Service's ready pods. Pure: what the cluster says about the backends comes
//! in through [`Lookup`], so every rule here is tested without a cluster.

use super::spec::{IngressSpec, IntOrString, expanded_hosts};
use crate::config::{
    self, Addr, ColdStart, KubeEndpoints, PortRef, Protocol, Queue, Target, Timeouts, Visibility,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The probe header, sent as `override` by the prober and set to the hash by the probe route.
pub const HASH_HEADER: &str = "k-network-hash";

/// A backend as the cluster describes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// The ready pods of the Service, from its EndpointSlices, on this endpoint port.
    Pods {
        /// The port's name in the EndpointSlices (the Service port's name); `None` when the
        /// Service has one unnamed port.
        port: Option<String>,
        /// The Service port is h2c (`h2c` or `http2` by name, or appProtocol
        /// `kubernetes.io/h2c`).
        h2c: bool,
    },
    /// Fixed addresses: an `ExternalName` Service, resolved.
    Addrs {
        /// Where to connect.
        addrs: Vec<SocketAddr>,
        /// Speak h2c.
        h2c: bool,
    },
}

/// What the cluster knows about the Services an Ingress names.
pub trait Lookup {
    /// The backend `namespace/name` port `port` stands for, or why there is none, in words.
    fn backend(&self, namespace: &str, name: &str, port: &IntOrString) -> Result<Backend, String>;
}

/// An Ingress, read and checked.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec, with Knative's defaults applied.
    pub spec: IngressSpec,
    /// Knative's hash of the spec as stored.
    pub hash: String,
}

impl Ingress {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Every host of every rule, expanded (`*` for a rule without hosts), with its rule's
    /// visibility.
    pub fn hosts(&self, cluster_domain: &str) -> Vec<(String, bool)> {
        self.spec
            .rules
            .iter()
            .flat_map(|r| {
                let local = r.visibility == "ClusterLocal";
                // A rule without hosts takes every host no one else lists: it claims "*".
                let any = r.hosts.is_empty().then(|| "*".to_owned());
                r.hosts
                    .iter()
                    .flat_map(move |h| expanded_hosts(h, cluster_domain))
                    .chain(any)
                    .map(move |h| (h, local))
            })
            .collect()
    }
}

/// Why an Ingress is not served: a condition reason and a message for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The gateway services that serve `ing`.
///
/// With `activate` (`kubernetes.ingress.activate`), a split that names a Knative revision
/// (its `appendHeaders` carry `Knative-Serving-Revision` and `-Namespace`) goes to the pods of
/// the revision's private Service instead of its public one, which points at Knative's
/// activator while the revision is at zero: rouse holds the requests and reports the demand
/// itself, one hop less.
pub fn translate(
    ing: &Ingress,
    lookup: &impl Lookup,
    cluster_domain: &str,
    activate: bool,
) -> Result<Vec<config::Service>, Refusal> {
    let mut services = Vec::new();
    let mut missing = Vec::new();
    for (i, rule) in ing.spec.rules.iter().enumerate() {
        let local = rule.visibility == "ClusterLocal";
        let mut hosts: Vec<String> = rule
            .hosts
            .iter()
            .flat_map(|h| expanded_hosts(h, cluster_domain))
            .collect();
        hosts.dedup();
        if hosts.is_empty() {
            hosts.push("*".to_owned());
        }
        let mut revisions: Vec<config::Revision> = Vec::new();
        let mut routes = Vec::new();
        let paths = rule.http.iter().flat_map(|h| h.paths.iter().flatten());
        let mut matches = std::collections::HashSet::new();
        for p in paths {
            // A path with the match of an earlier one can never be chosen (first match wins).
            let key = (p.path.trim_end().to_owned(), format!("{:?}", p.headers));
            if !matches.insert(key) {
                continue;
            }
            let mut traffic = Vec::new();
            for s in p.splits.iter().flatten() {
                let rev = format!("{}:{}", s.service_name, port_text(&s.service_port));
                let knative = activate
                    .then(|| knative_revision(&s.append_headers))
                    .flatten();
                if !revisions.iter().any(|r| r.name == rev) {
                    match lookup.backend(&ing.namespace, &s.service_name, &s.service_port) {
                        Ok(b) => {
                            let mut r = revision(&rev, &ing.namespace, &s.service_name, b);
                            if let Some((ns, name)) = &knative {
                                activated(&mut r, ns, name);
                            }
                            revisions.push(r);
                        }
                        Err(why) => {
                            missing.push(why);
                            continue;
                        }
                    }
                }
                let mut set_headers = s.append_headers.clone();
                if knative.is_some() {
                    // The queue-proxies count these as proxied: rouse reports them.
                    set_headers.insert("k-proxy-request".to_owned(), "activator".to_owned());
                }
                traffic.push(Target {
                    revision: rev,
                    percent: u32::try_from(s.percent).unwrap_or(0),
                    tag: None,
                    set_headers,
                });
            }
            let path = if p.path.is_empty() { "/" } else { &p.path };
            let headers: BTreeMap<String, String> = p
                .headers
                .iter()
                .map(|(k, m)| (k.to_ascii_lowercase(), m.exact.clone()))
                .collect();
            let rewrite_host = (!p.rewrite_host.is_empty()).then(|| p.rewrite_host.clone());
            let mut probe_match = headers.clone();
            probe_match.insert(HASH_HEADER.to_owned(), "override".to_owned());
            let mut probe_set = p.append_headers.clone();
            probe_set.insert(HASH_HEADER.to_owned(), ing.hash.clone());
            // A probe of an activated split is answered here, as Knative's activator answers
            // it for a revision at zero: the hash proves this replica serves the spec, and a
            // probe must not wake the revision.
            let mut probe_traffic = traffic.clone();
            for arm in probe_traffic.iter_mut() {
                let activated = revisions.iter().any(|r| {
                    r.name == arm.revision
                        && r.kubernetes
                            .as_ref()
                            .is_some_and(|k| k.knative_revision.is_some())
                });
                if activated {
                    let answer = format!("{}:probe", arm.revision);
                    if !revisions.iter().any(|r| r.name == answer) {
                        revisions.push(probe_answer(&answer, &ing.hash));
                    }
                    arm.revision = answer;
                }
            }
            routes.push(config::Route {
                path: path.to_owned(),
                headers: probe_match,
                set_headers: probe_set,
                rewrite_host: rewrite_host.clone(),
                traffic: probe_traffic,
            });
            routes.push(config::Route {
                path: path.to_owned(),
                headers,
                set_headers: p.append_headers.clone(),
                rewrite_host,
                traffic,
            });
        }
        services.push(config::Service {
            name: format!("{}/rules[{i}]", ing.key()),
            hosts,
            visibility: if local {
                Visibility::ClusterLocal
            } else {
                Visibility::External
            },
            redirect_to_https: !local && ing.spec.http_option == "Redirected",
            routes,
            traffic: Vec::new(),
            revisions,
            // Knative's ingress contract: no timeout of its own, and no retry.
            timeouts: Timeouts::default(),
            sticky: None,
            no_wake: None,
            rollout: None,
        });
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(Refusal {
            reason: "BackendMissing",
            message: missing.join("; "),
        });
    }
    Ok(services)
}

fn port_text(p: &IntOrString) -> String {
    match p {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// A revision that answers every request (Knative's probes) with 200 and `hash`.
fn probe_answer(name: &str, hash: &str) -> config::Revision {
    let mut headers = BTreeMap::new();
    headers.insert(HASH_HEADER.to_owned(), hash.to_owned());
    config::Revision {
        grpc_port: None,
        name: name.to_owned(),
        protocol: Protocol::Http1,
        container_concurrency: 0,
        endpoints: Vec::new(),
        kubernetes: None,
        queue: Queue::default(),
        scale: None,
        cold_start: ColdStart {
            placeholder: Some(config::Placeholder {
                status: 200,
                body: String::new(),
                headers,
            }),
            header: false,
            waiting_page: false,
        },
        tls: None,
    }
}

/// The Knative revision a split's headers name: (namespace, name).
fn knative_revision(headers: &BTreeMap<String, String>) -> Option<(String, String)> {
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, v)| h.eq_ignore_ascii_case(k) && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Some((
        get("knative-serving-namespace")?,
        get("knative-serving-revision")?,
    ))
}

/// Points a revision at the pods of Knative revision `namespace/name` (its private
/// Service), probed directly while not ready, with its demand reported to the autoscaler.
fn activated(r: &mut config::Revision, namespace: &str, name: &str) {
    let port = if r.protocol == Protocol::H2c {
        "http2"
    } else {
        "http"
    };
    r.endpoints = Vec::new();
    // Held as Knative's activator holds, up to Knative's default revision timeout: an Ingress
    // carries no timeout, and a revision that never comes up must not hold requests forever.
    r.queue = Queue {
        max_wait: config::Dur(std::time::Duration::from_secs(300)),
        ..Queue::knative()
    };
    r.kubernetes = Some(KubeEndpoints {
        service: format!("{name}-private"),
        namespace: Some(namespace.to_owned()),
        port: Some(PortRef::Name(port.to_owned())),
        grpc_port: None,
        probe_not_ready: true,
        knative_revision: Some(format!("{namespace}/{name}")),
        shared_by: None,
    });
}

fn revision(name: &str, namespace: &str, service: &str, b: Backend) -> config::Revision {
    let (endpoints, kubernetes, h2c) = match b {
        Backend::Pods { port, h2c } => (
            Vec::new(),
            Some(KubeEndpoints {
                service: service.to_owned(),
                namespace: Some(namespace.to_owned()),
                port: port.map(PortRef::Name),
                grpc_port: None,
                probe_not_ready: false,
                knative_revision: None,
                shared_by: None,
            }),
            h2c,
        ),
        Backend::Addrs { addrs, h2c } => (addrs.into_iter().map(Addr).collect(), None, h2c),
    };
    config::Revision {
        grpc_port: None,
        name: name.to_owned(),
        protocol: if h2c { Protocol::H2c } else { Protocol::Http1 },
        container_concurrency: 0,
        endpoints,
        kubernetes,
        queue: Queue::default(),
        scale: None,
        cold_start: ColdStart {
            placeholder: None,
            header: false,
            waiting_page: false,
        },
        tls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::proxy::router::RouteTable;
    use http::{HeaderMap, HeaderName};
    use std::sync::Arc;

    struct Cluster;

    impl Lookup for Cluster {
        fn backend(&self, _: &str, name: &str, port: &IntOrString) -> Result<Backend, String> {
            match (name, port) {
                ("gone", _) => Err(format!("Service {name} does not exist")),
                ("grpc", _) => Ok(Backend::Pods {
                    port: Some("h2c".into()),
                    h2c: true,
                }),
                (_, IntOrString::String(p)) => Ok(Backend::Pods {
                    port: Some(p.clone()),
                    h2c: false,
                }),
                _ => Ok(Backend::Pods {
                    port: None,
                    h2c: false,
                }),
            }
        }
    }

    fn ingress(spec: &str) -> Ingress {
        let spec: IngressSpec = serde_json::from_str(spec).unwrap();
        Ingress {
            namespace: "ns".into(),
            name: "ing".into(),
            spec: super::super::spec::check(spec, "ns").unwrap(),
            hash: "abc".into(),
        }
    }

    /// Builds the route table the gateway would, from translated services.
    fn table(services: Vec<config::Service>) -> RouteTable {
        let mut cfg = Config::parse(
            "listen: 127.0.0.1:0\nlisten_internal: 127.0.0.1:0\ntls: { listen: 127.0.0.1:0, certificates: [] }\nkubernetes: { ingress: {} }\n",
        )
        .unwrap();
        cfg.services = services;
        let issues = cfg.validate();
        assert!(issues.is_empty(), "{issues:?}");
        RouteTable::build(&cfg, &Arc::new(Metrics::new()), None).unwrap()
    }

    fn pick(t: &RouteTable, internal: bool, host: &str, path: &str, h: &[(&str, &str)]) -> String {
        let mut hm = HeaderMap::new();
        for (k, v) in h {
            hm.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let Some(svc) = t.service(host, internal) else {
            return "no service".into();
        };
        let Some(route) = svc.route(path, &hm) else {
            return "no route".into();
        };
        let arm = route.pick(&hm);
        let mut set: Vec<String> = route
            .set_headers
            .iter()
            .chain(arm.set_headers.iter())
            .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
            .collect();
        set.sort();
        format!("{} {}", arm.revision.name, set.join(","))
    }

    #[test]
    fn activated_splits_go_to_the_revisions_pods_and_probes_are_answered_here() {
        let ing = ingress(
            r#"{"rules":[{"hosts":["hello.ns.example.com"],"visibility":"ExternalIP","http":{"paths":[
                {"splits":[
                  {"serviceName":"hello-00001","serviceNamespace":"ns","servicePort":80,"percent":60,
                   "appendHeaders":{"Knative-Serving-Revision":"hello-00001","Knative-Serving-Namespace":"ns"}},
                  {"serviceName":"plain","serviceNamespace":"ns","servicePort":80,"percent":40}]}]}}]}"#,
        );
        let services = translate(&ing, &Cluster, "cluster.local", true).unwrap();
        let revs = &services[0].revisions;
        let hello = revs.iter().find(|r| r.name == "hello-00001:80").unwrap();
        let k = hello.kubernetes.as_ref().unwrap();
        assert_eq!(k.service, "hello-00001-private");
        assert_eq!(k.port, Some(PortRef::Name("http".into())));
        assert_eq!(k.knative_revision.as_deref(), Some("ns/hello-00001"));
        assert!(k.probe_not_ready);
        assert_eq!(hello.queue.max_wait.0, std::time::Duration::from_secs(300));
        assert_eq!(hello.queue.target_wait.0, std::time::Duration::ZERO);
        let plain = revs.iter().find(|r| r.name == "plain:80").unwrap();
        assert_eq!(plain.kubernetes.as_ref().unwrap().service, "plain");
        assert_eq!(plain.kubernetes.as_ref().unwrap().knative_revision, None);

        let t = table(services.clone());
        // Traffic: the activated arm carries K-Proxy-Request; the plain one does not.
        let route = t
            .service("hello.ns.example.com", false)
            .unwrap()
            .route("/", &HeaderMap::new())
            .unwrap();
        let arms: Vec<String> = route
            .arms()
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.revision.name,
                    a.set_headers
                        .iter()
                        .find(|(k, _)| k == "k-proxy-request")
                        .map_or("-", |(_, v)| v.to_str().unwrap())
                )
            })
            .collect();
        assert_eq!(arms, ["hello-00001:80 activator", "plain:80 -"]);
        // Probes: the activated arm's copy answers with the hash; the plain one forwards.
        let probe = t
            .service("hello.ns.example.com", false)
            .unwrap()
            .route("/healthz", &{
                let mut h = HeaderMap::new();
                h.insert("k-network-hash", "override".parse().unwrap());
                h
            })
            .unwrap();
        let names: Vec<&str> = probe.arms().iter().map(|a| &*a.revision.name).collect();
        assert_eq!(names, ["hello-00001:80:probe", "plain:80"]);
        let answer = revs
            .iter()
            .find(|r| r.name == "hello-00001:80:probe")
            .unwrap();
        let p = answer.cold_start.placeholder.as_ref().unwrap();
        assert_eq!(
            (p.status, p.headers["k-network-hash"].as_str()),
            (200, "abc")
        );

        // Without activate, the same Ingress goes to the public Service.
        let services = translate(&ing, &Cluster, "cluster.local", false).unwrap();
        let hello = services[0]
            .revisions
            .iter()
            .find(|r| r.name == "hello-00001:80")
            .unwrap();
        assert_eq!(hello.kubernetes.as_ref().unwrap().service, "hello-00001");
        assert!(
            services[0]
                .revisions
                .iter()
                .all(|r| !r.name.ends_with(":probe"))
        );
    }

    #[test]
    fn paths_headers_probe_copies_and_visibility() {
        let ing = ingress(
            r#"{"rules":[
              {"hosts":["a.example"],"visibility":"ExternalIP","http":{"paths":[
                {"path":"/foo","appendHeaders":{"who":"foo"},"splits":[{"serviceName":"foo","serviceNamespace":"ns","servicePort":80}]},
                {"headers":{"Knative-Serving-Tag":{"exact":"t"}},"splits":[{"serviceName":"tag","serviceNamespace":"ns","servicePort":80}]},
                {"splits":[{"serviceName":"main","serviceNamespace":"ns","servicePort":"http","appendHeaders":{"arm":"1"}}]}]}},
              {"hosts":["b.ns.svc.cluster.local"],"visibility":"ClusterLocal","http":{"paths":[
                {"splits":[{"serviceName":"grpc","serviceNamespace":"ns","servicePort":81}]}]}}]}"#,
        );
        let services = translate(&ing, &Cluster, "cluster.local", false).unwrap();
        let t = table(services);
        assert_eq!(
            pick(&t, false, "a.example", "/foo/x", &[]),
            "foo:80 who=foo"
        );
        assert_eq!(
            pick(
                &t,
                false,
                "a.example",
                "/healthz",
                &[("k-network-hash", "override")]
            ),
            "main:http arm=1,k-network-hash=abc",
            "the probe copy sets the hash"
        );
        assert_eq!(
            pick(
                &t,
                false,
                "a.example",
                "/foo",
                &[("k-network-hash", "override")]
            ),
            "foo:80 k-network-hash=abc,who=foo"
        );
        assert_eq!(
            pick(&t, false, "a.example", "/", &[("knative-serving-tag", "t")]),
            "tag:80 "
        );
        assert_eq!(
            pick(
                &t,
                false,
                "a.example",
                "/",
                &[("knative-serving-tag", "other")]
            ),
            "main:http arm=1"
        );
        // Cluster-local: every short form, on the internal listener only.
        for host in ["b.ns.svc.cluster.local", "b.ns.svc", "b.ns"] {
            assert_eq!(pick(&t, true, host, "/", &[]), "grpc:81 ");
            assert_eq!(pick(&t, false, host, "/", &[]), "no service");
        }
        // The internal listener serves public hosts too.
        assert_eq!(pick(&t, true, "a.example", "/foo", &[]), "foo:80 who=foo");
        let grpc = t
            .revisions()
            .iter()
            .find(|r| &*r.name == "grpc:81")
            .unwrap();
        assert_eq!(grpc.protocol, Protocol::H2c);
    }

    #[test]
    fn no_catch_all_means_404_and_zero_percent_gets_nothing() {
        let ing = ingress(
            r#"{"rules":[{"hosts":["a.example"],"http":{"paths":[
                {"path":"/foo","splits":[
                  {"serviceName":"one","serviceNamespace":"ns","servicePort":80,"percent":100},
                  {"serviceName":"two","serviceNamespace":"ns","servicePort":80,"percent":0}]}]}}]}"#,
        );
        let t = table(translate(&ing, &Cluster, "cluster.local", false).unwrap());
        assert_eq!(pick(&t, false, "a.example", "/bar", &[]), "no route");
        for _ in 0..200 {
            assert_eq!(pick(&t, false, "a.example", "/foo", &[]), "one:80 ");
        }
    }

    #[test]
    fn a_path_repeating_an_earlier_match_is_left_out_and_hostless_rules_claim_any_host() {
        let ing = ingress(
            r#"{"rules":[{"http":{"paths":[
                {"path":"/a","splits":[{"serviceName":"first","serviceNamespace":"ns","servicePort":80}]},
                {"path":"/a","splits":[{"serviceName":"second","serviceNamespace":"ns","servicePort":80}]}]}}]}"#,
        );
        let t = table(translate(&ing, &Cluster, "cluster.local", false).unwrap());
        assert_eq!(pick(&t, false, "whatever.example", "/a", &[]), "first:80 ");
        assert_eq!(ing.hosts("cluster.local"), [("*".to_owned(), false)]);
    }

    #[test]
    fn redirect_applies_to_public_rules_only() {
        let ing = ingress(
            r#"{"httpOption":"Redirected","rules":[
              {"hosts":["a.example"],"http":{"paths":[{"splits":[{"serviceName":"s","serviceNamespace":"ns","servicePort":80}]}]}},
              {"hosts":["a.ns.svc.cluster.local"],"visibility":"ClusterLocal","http":{"paths":[{"splits":[{"serviceName":"s","serviceNamespace":"ns","servicePort":80}]}]}}]}"#,
        );
        let s = translate(&ing, &Cluster, "cluster.local", false).unwrap();
        assert!(s[0].redirect_to_https);
        assert!(!s[1].redirect_to_https);
    }

    #[test]
    fn a_missing_backend_is_named() {
        let ing = ingress(
            r#"{"rules":[{"hosts":["a.example"],"http":{"paths":[{"splits":[{"serviceName":"gone","serviceNamespace":"ns","servicePort":80}]}]}}]}"#,
        );
        let r = translate(&ing, &Cluster, "cluster.local", false).unwrap_err();
        assert_eq!(r.reason, "BackendMissing");
        assert!(
            r.message.contains("Service gone does not exist"),
            "{}",
            r.message
        );
    }
}
