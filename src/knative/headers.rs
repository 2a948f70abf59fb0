//! The probe and routing headers Knative Serving's components exchange, and how a
//! queue-proxy reads them: which requests are probes, which an activator sent, and which of
//! the activator's rewrites to undo before the app sees a request.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Probe marker: `queue` (readiness of this pod), `probe` (ingress prober), `activator`.
pub const NETWORK_PROBE: HeaderName = HeaderName::from_static("k-network-probe");
/// Echoed back on `K-Network-Probe: probe`.
pub const NETWORK_HASH: HeaderName = HeaderName::from_static("k-network-hash");
/// The client's `Host`, moved aside by the activator.
pub const ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
/// The routed revision's name, set by the ingress for the activator.
pub const SERVING_REVISION: HeaderName = HeaderName::from_static("knative-serving-revision");
/// The routed revision's namespace.
pub const SERVING_NAMESPACE: HeaderName = HeaderName::from_static("knative-serving-namespace");
/// Set by an activator on the requests it forwards (`K-Proxy-Request: activator`).
pub const PROXY_REQUEST: HeaderName = HeaderName::from_static("k-proxy-request");
/// Legacy kubelet probe marker.
pub const KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");

/// `User-Agent` prefixes of the callers whose requests are health checks, not traffic.
const HEALTH_CHECK_AGENTS: [&str; 3] = [
    "kube-probe/",
    "Knative-Activator-Probe",
    "Knative-Autoscaling-Probe",
];

/// What a request to a queue-proxy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `K-Network-Probe: probe`: answered at once, with `K-Network-Hash` echoed.
    NetworkProbe,
    /// A readiness check: kubelet or activator, or any `K-Network-Probe` other than `probe`.
    /// Carries the `K-Network-Probe` value (`queue` runs the app's readiness probe).
    HealthCheck(String),
    /// Application traffic.
    Traffic,
}

/// Classifies a request the way queue-proxy's drainer and health handler do.
pub fn classify(h: &HeaderMap) -> Kind {
    // One pass over the names instead of a hash lookup per Knative header: on plain traffic
    // the marker headers are absent, and comparing a standard name with them is one branch.
    let (mut has_probe, mut has_kubelet) = (false, false);
    for k in h.keys() {
        has_probe |= k == NETWORK_PROBE;
        has_kubelet |= k == KUBELET_PROBE;
    }
    let probe = if has_probe {
        h.get(&NETWORK_PROBE).map(|v| v.as_bytes())
    } else {
        None
    };
    if probe == Some(b"probe") {
        return Kind::NetworkProbe;
    }
    let agent = h
        .get(header::USER_AGENT)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let health_agent = HEALTH_CHECK_AGENTS
        .iter()
        .any(|p| agent.starts_with(p.as_bytes()));
    if probe.is_some() || health_agent || has_kubelet {
        let value = String::from_utf8_lossy(probe.unwrap_or_default()).into_owned();
        return Kind::HealthCheck(value);
    }
    Kind::Traffic
}

/// True when an activator sent this request, so its concurrency is reported as proxied.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers
        .get(&PROXY_REQUEST)
        .is_some_and(|v| v.as_bytes() == b"activator")
}

/// Undoes the activator's and ingress's rewrites before a request reaches the app: `Host` comes
/// back from `K-Original-Host`, and the routing and probe headers are removed.
pub fn restore_request_headers(h: &mut HeaderMap) {
    let rewritten = h.keys().any(|k| {
        k == ORIGINAL_HOST || k == SERVING_REVISION || k == SERVING_NAMESPACE || k == NETWORK_HASH
    });
    if !rewritten {
        return;
    }
    if let Some(host) = h.remove(&ORIGINAL_HOST)
        && !host.is_empty()
    {
        h.insert(header::HOST, host);
    }
    h.remove(&SERVING_REVISION);
    h.remove(&SERVING_NAMESPACE);
    h.remove(&NETWORK_HASH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn classifies_like_queue_proxy() {
        assert_eq!(
            classify(&headers(&[("k-network-probe", "probe")])),
            Kind::NetworkProbe
        );
        assert_eq!(
            classify(&headers(&[
                ("k-network-probe", "queue"),
                ("user-agent", "kube-probe/1.30")
            ])),
            Kind::HealthCheck("queue".into())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "kube-probe/1.30")])),
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "Knative-Activator-Probe")])),
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            classify(&headers(&[("k-network-probe", "activator")])),
            Kind::HealthCheck("activator".into())
        );
        assert_eq!(
            classify(&headers(&[("user-agent", "curl/8")])),
            Kind::Traffic
        );
    }

    #[test]
    fn restores_host_and_strips_routing_headers() {
        let mut h = headers(&[
            ("host", "activator-service"),
            ("k-original-host", "app.example.com"),
            ("knative-serving-revision", "app-00001"),
            ("knative-serving-namespace", "default"),
            ("x-keep", "1"),
        ]);
        restore_request_headers(&mut h);
        assert_eq!(h.get("host").unwrap(), "app.example.com");
        assert!(h.get("k-original-host").is_none());
        assert!(h.get("knative-serving-revision").is_none());
        assert!(h.get("knative-serving-namespace").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }
}
