//! The probe and routing headers Knative Serving's components exchange, and how a
//! queue-proxy reads them: which requests are probes, which an activator sent, and which of
//! the activator's rewrites to undo before the app sees a request.

use crate::http::h1;
use crate::http::lines::Lines;
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

/// What a queue-proxy reads of a request's headers, found in one pass over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Probe, health check or traffic.
    pub kind: Kind,
    /// An activator sent it (`K-Proxy-Request: activator`), so its concurrency is reported as
    /// proxied.
    pub proxied: bool,
    /// It carries the activator's or the ingress's rewrites, for
    /// [`restore_request_headers`] to undo.
    pub rewritten: bool,
}

/// Reads a request's headers as queue-proxy's drainer, health handler and stats do, in one
/// pass over the fields rather than a lookup for each Knative header: on plain traffic the
/// Knative headers are absent, and telling a common name from each of them is one branch.
pub fn read(h: &HeaderMap) -> Read {
    // Of a field given more than once, the first counts, as a lookup would find it.
    let mut seen = Seen::default();
    for (k, v) in h {
        if k == header::USER_AGENT {
            seen.agent = seen.agent.or(Some(v.as_bytes()));
        } else if k == NETWORK_PROBE {
            seen.probe = seen.probe.or(Some(v.as_bytes()));
        } else if k == KUBELET_PROBE {
            seen.kubelet = true;
        } else if k == PROXY_REQUEST {
            seen.proxy = seen.proxy.or(Some(v.as_bytes()));
        } else if k == ORIGINAL_HOST
            || k == SERVING_REVISION
            || k == SERVING_NAMESPACE
            || k == NETWORK_HASH
        {
            seen.rewritten = true;
        }
    }
    seen.judge()
}

/// [`read`] for a request's fields kept as its client wrote them ([`Lines`]), names in any
/// case: the same answer as for the map they would make.
pub fn read_lines(lines: &Lines) -> Read {
    let mut seen = Seen::default();
    lines.for_each(|k, v| {
        // Every Knative name is letters and `-`, which `is_name` compares in any case.
        let is = |name: &HeaderName| h1::is_name(k, name.as_str().as_bytes());
        match k.len() {
            10 if is(&header::USER_AGENT) => seen.agent = seen.agent.or(Some(v)),
            15 if is(&NETWORK_PROBE) => seen.probe = seen.probe.or(Some(v)),
            15 if is(&KUBELET_PROBE) => seen.kubelet = true,
            15 if is(&PROXY_REQUEST) => seen.proxy = seen.proxy.or(Some(v)),
            15 if is(&ORIGINAL_HOST) => seen.rewritten = true,
            14 if is(&NETWORK_HASH) => seen.rewritten = true,
            24 if is(&SERVING_REVISION) => seen.rewritten = true,
            25 if is(&SERVING_NAMESPACE) => seen.rewritten = true,
            _ => {}
        }
    });
    seen.judge()
}

/// The Knative fields a pass over a request's fields found: the first value of each.
#[derive(Default)]
struct Seen<'a> {
    probe: Option<&'a [u8]>,
    agent: Option<&'a [u8]>,
    proxy: Option<&'a [u8]>,
    kubelet: bool,
    rewritten: bool,
}

impl Seen<'_> {
    fn judge(self) -> Read {
        let kind = if self.probe == Some(b"probe") {
            Kind::NetworkProbe
        } else if self.probe.is_some()
            || self.kubelet
            || HEALTH_CHECK_AGENTS
                .iter()
                .any(|p| self.agent.is_some_and(|a| a.starts_with(p.as_bytes())))
        {
            Kind::HealthCheck(String::from_utf8_lossy(self.probe.unwrap_or_default()).into_owned())
        } else {
            Kind::Traffic
        };
        Read {
            kind,
            proxied: self.proxy == Some(b"activator"),
            rewritten: self.rewritten,
        }
    }
}

/// Undoes the activator's and ingress's rewrites before a request reaches the app: `Host` comes
/// back from `K-Original-Host`, and the routing and probe headers are removed.
/// Called only for a request [`read`] found `rewritten`.
pub fn restore_request_headers(h: &mut HeaderMap) {
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

    /// Fields kept as the client wrote them, in any case, read as the map they make.
    #[test]
    fn kept_fields_read_as_their_map() {
        let fields = [
            "K-Network-Probe: probe",
            "k-network-probe: queue",
            "User-Agent: kube-probe/1.30",
            "USER-AGENT: Knative-Activator-Probe",
            "user-agent: curl/8",
            "K-Proxy-Request: activator",
            "k-proxy-request: other",
            "K-Kubelet-Probe: 1",
            "K-Original-Host: a.example",
            "Knative-Serving-Revision: r",
            "KNATIVE-SERVING-NAMESPACE: n",
            "k-network-HASH: h",
            "X-Other: 1",
            "K-Network-Probex: probe",
        ];
        // Each field alone, and each pair in both orders (the first value of a name counts).
        let mut heads: Vec<String> = fields.iter().map(|f| format!("{f}\r\n")).collect();
        for a in fields {
            for b in fields {
                heads.push(format!("{a}\r\n{b}\r\n"));
            }
        }
        for lines in heads {
            let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
            let mut buf = bytes::BytesMut::from(head.as_bytes());
            let parsed = crate::http::downstream::parse_head(&mut buf, 1 << 16, true)
                .unwrap()
                .unwrap();
            let kept = parsed.request.fields.clone().expect("kept as written");
            assert_eq!(
                read_lines(&kept),
                read(parsed.into_request().headers()),
                "{head:?}"
            );
        }
    }

    #[test]
    fn classifies_like_queue_proxy() {
        assert_eq!(
            read(&headers(&[("k-network-probe", "probe")])).kind,
            Kind::NetworkProbe
        );
        assert_eq!(
            read(&headers(&[
                ("k-network-probe", "queue"),
                ("user-agent", "kube-probe/1.30")
            ]))
            .kind,
            Kind::HealthCheck("queue".into())
        );
        assert_eq!(
            read(&headers(&[("user-agent", "kube-probe/1.30")])).kind,
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            read(&headers(&[("user-agent", "Knative-Activator-Probe")])).kind,
            Kind::HealthCheck(String::new())
        );
        assert_eq!(
            read(&headers(&[("k-network-probe", "activator")])).kind,
            Kind::HealthCheck("activator".into())
        );
        assert_eq!(
            read(&headers(&[("user-agent", "curl/8")])).kind,
            Kind::Traffic
        );
    }

    #[test]
    fn finds_the_activator_and_the_rewrites_in_the_same_pass() {
        let mut h = headers(&[("k-proxy-request", "activator"), ("user-agent", "curl/8")]);
        let r = read(&h);
        assert_eq!(
            (r.kind, r.proxied, r.rewritten),
            (Kind::Traffic, true, false)
        );
        // The first value counts, as a lookup finds it.
        h.append("k-proxy-request", http::HeaderValue::from_static("other"));
        h.append(
            "user-agent",
            http::HeaderValue::from_static("kube-probe/1.30"),
        );
        assert_eq!((read(&h).kind, read(&h).proxied), (Kind::Traffic, true));
        let mut h = headers(&[("k-proxy-request", "other"), ("user-agent", "curl/8")]);
        h.append(
            "k-proxy-request",
            http::HeaderValue::from_static("activator"),
        );
        assert!(!read(&h).proxied);
        for name in [
            "k-original-host",
            "knative-serving-revision",
            "knative-serving-namespace",
            "k-network-hash",
        ] {
            let r = read(&headers(&[("host", "a"), (name, "x")]));
            assert_eq!(
                (r.kind, r.proxied, r.rewritten),
                (Kind::Traffic, false, true)
            );
        }
        assert!(!read(&headers(&[("host", "a"), ("x-other", "1")])).rewritten);
        let r = read(&headers(&[("k-kubelet-probe", "1")]));
        assert_eq!(r.kind, Kind::HealthCheck(String::new()));
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
