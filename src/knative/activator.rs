//! The activator's front: what Knative's activator does to a request before its throttler,
//! reproduced so rouse can take the activator's place behind Knative's ingresses and
//! autoscaler. In Knative's order: the kubelet's health checks (failing once draining), the
//! network probes (`K-Network-Probe: probe` echoes `K-Network-Hash`; `activator` answers
//! `activator`, which is how the autoscaler checks that requests for a revision at zero reach
//! an activator), then the revision: named by `Knative-Serving-Revision` and
//! `-Namespace`, or else by a Host of the form `<revision>.<namespace>.svc.<domain>`. The
//! client's Host moves to `K-Original-Host` (the queue-proxy puts it back) and the request is
//! routed by the revision's own host, which the Revision watcher gives every revision.
//!
//! One difference, on purpose: Knative's activator also fails its health checks while its
//! websocket to the autoscaler is down, which restarted activators in a loop when the
//! autoscaler was away (knative/serving#13948). Here the data path stays ready: pods already
//! known keep being served, and the link's state is a metric.

use super::headers::{KUBELET_PROBE, NETWORK_HASH, NETWORK_PROBE, ORIGINAL_HOST};
use super::headers::{SERVING_NAMESPACE, SERVING_REVISION};
use crate::http::body::{PLAIN, text};
use crate::http::headers::Host;
use crate::http::upstream::OutBody;
use crate::proxy::completion::Body;
use crate::proxy::{Front, Intercept};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the activator answers to `K-Network-Probe: activator`.
pub const PROBE_BODY: &str = "activator";

/// The host requests for revision `name` of `namespace` are routed by: its Service's full
/// name, the first of the hosts the Revision watcher gives the revision's service.
pub fn revision_host(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.svc.{domain}")
}

/// Knative's activator contract before routing.
#[derive(Debug)]
pub struct ActivatorFront {
    domain: String,
    draining: Arc<AtomicBool>,
}

impl ActivatorFront {
    /// Routes by revision hosts under `domain`; health checks fail once `draining` is set.
    pub fn new(domain: &str, draining: Arc<AtomicBool>) -> ActivatorFront {
        ActivatorFront {
            domain: domain.to_owned(),
            draining,
        }
    }
}

fn reply(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    text(status, body, PLAIN)
}

fn is_kubelet_probe(h: &http::HeaderMap) -> bool {
    h.contains_key(&KUBELET_PROBE)
        || h.get(header::USER_AGENT)
            .is_some_and(|v| v.as_bytes().starts_with(b"kube-probe/"))
}

impl Front for ActivatorFront {
    fn intercept(&self, req: &mut Request<OutBody>, host: &Host) -> Intercept {
        answer_or_route(&self.domain, &self.draining, req.headers_mut(), host)
    }
}

/// The front's decision on a request's headers (separate from the body type, for tests).
fn answer_or_route(
    domain: &str,
    draining: &AtomicBool,
    h: &mut http::HeaderMap,
    host: &Host,
) -> Intercept {
    if is_kubelet_probe(h) {
        return Intercept::Answer(Box::new(if draining.load(Ordering::Relaxed) {
            reply(StatusCode::INTERNAL_SERVER_ERROR, "shutting down\n")
        } else {
            reply(StatusCode::OK, "")
        }));
    }
    // An empty value is no probe, as Knative reads it.
    if let Some(p) = h.get(&NETWORK_PROBE).filter(|p| !p.is_empty()) {
        return Intercept::Answer(Box::new(match p.as_bytes() {
            b"probe" => match h.get(&NETWORK_HASH) {
                Some(hash) if !hash.is_empty() => {
                    let mut res = reply(StatusCode::OK, "");
                    res.headers_mut().insert(NETWORK_HASH, hash.clone());
                    res
                }
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    "a K-Network-Probe: probe request needs a K-Network-Hash header\n",
                ),
            },
            b"activator" => reply(StatusCode::OK, PROBE_BODY),
            other => reply(
                StatusCode::BAD_REQUEST,
                format!(
                    "unexpected probe header value: {:?}\n",
                    String::from_utf8_lossy(other)
                ),
            ),
        }));
    }
    h.remove(&NETWORK_HASH);
    let named = match (h.get(&SERVING_REVISION), h.get(&SERVING_NAMESPACE)) {
        (Some(r), Some(n)) if !r.is_empty() && !n.is_empty() => match (r.to_str(), n.to_str()) {
            (Ok(r), Ok(n)) => Some(revision_host(r, n, domain)),
            _ => None,
        },
        _ => None,
    };
    h.remove(&SERVING_REVISION);
    h.remove(&SERVING_NAMESPACE);
    if !h.contains_key(&ORIGINAL_HOST) {
        h.insert(ORIGINAL_HOST, host.to_value());
    }
    match named
        .and_then(|n| HeaderValue::try_from(n).ok())
        .and_then(Host::new)
    {
        Some(v) => Intercept::Reroute(v),
        None => Intercept::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::BodyExt;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    async fn answered(i: Intercept) -> (StatusCode, HeaderMap, String) {
        let Intercept::Answer(res) = i else {
            panic!("not answered: {i:?}")
        };
        let (parts, body) = (*res).into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn probes_are_answered_as_knatives_activator_answers_them() {
        let up = AtomicBool::new(false);
        let mut h = headers(&[("k-network-probe", "activator")]);
        let (s, _, body) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "activator"));

        let mut h = headers(&[("k-network-probe", "probe"), ("k-network-hash", "abc")]);
        let (s, hs, _) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(hs["k-network-hash"], "abc");

        let mut h = headers(&[("k-network-probe", "probe")]);
        let (s, _, body) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("K-Network-Hash"), "{body}");

        let mut h = headers(&[("k-network-probe", "queue")]);
        let (s, _, body) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"queue\""), "{body}");

        let mut h = headers(&[("user-agent", "kube-probe/1.37")]);
        let (s, _, _) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!(s, StatusCode::OK);
        up.store(true, Ordering::Relaxed);
        let mut h = headers(&[("user-agent", "kube-probe/1.37")]);
        let (s, _, body) = answered(answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("x").unwrap(),
        ))
        .await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "shutting down\n")
        );
    }

    #[test]
    fn the_revision_headers_pick_the_route_and_the_host_moves_aside() {
        let up = AtomicBool::new(false);
        let mut h = headers(&[
            ("host", "hello.example.com"),
            ("knative-serving-revision", "hello-00001"),
            ("knative-serving-namespace", "apps"),
            ("k-network-hash", "stale"),
        ]);
        let i = answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("hello.example.com").unwrap(),
        );
        let Intercept::Reroute(to) = i else {
            panic!("{i:?}")
        };
        assert_eq!(to.as_str(), "hello-00001.apps.svc.cluster.local");
        assert_eq!(h["k-original-host"], "hello.example.com");
        for gone in [
            "knative-serving-revision",
            "knative-serving-namespace",
            "k-network-hash",
        ] {
            assert!(!h.contains_key(gone), "{gone} is forwarded");
        }

        // Without the headers the Host is the route; an original host already set stays.
        let mut h = headers(&[("k-original-host", "first.example.com")]);
        let i = answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("r.ns.svc.cluster.local").unwrap(),
        );
        assert!(matches!(i, Intercept::Pass), "{i:?}");
        assert_eq!(h["k-original-host"], "first.example.com");

        // Only one of the two headers: routed by Host, and neither is forwarded.
        let mut h = headers(&[("knative-serving-revision", "r")]);
        let i = answer_or_route(
            "cluster.local",
            &up,
            &mut h,
            &Host::from_text("r.ns.svc").unwrap(),
        );
        assert!(matches!(i, Intercept::Pass), "{i:?}");
        assert!(!h.contains_key("knative-serving-revision"));
        assert_eq!(h["k-original-host"], "r.ns.svc");
    }
}
