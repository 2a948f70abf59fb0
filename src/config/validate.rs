//! The rules of a config that serde's types cannot express (sums, references, uniqueness,
//! ranges), each problem reported with its key path (`services[0].traffic: percents sum to
//! 95, must be 100`), every problem at once.

use super::load::ConfigIssue;
use super::types::*;
use crate::http::headers::{is_hop_by_hop, strip_port};
use http::{HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

impl Config {
    /// Checks the rules serde cannot express; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = Validator {
            pod_ip: self.kubernetes.activator.as_ref().and_then(|a| a.pod_ip),
            ..Validator::default()
        };
        v.config(self);
        v.issues
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
    /// `kubernetes.activator.pod_ip`, which `shared_by` needs.
    pod_ip: Option<std::net::IpAddr>,
}

impl Validator {
    /// Checks that entry `i` of `list` (at key path `at`) has a name, and that no earlier entry
    /// in `seen` has the same one.
    fn unique_name<'a>(
        &mut self,
        seen: &mut HashMap<&'a str, usize>,
        name: &'a str,
        i: usize,
        at: &str,
        list: &str,
    ) {
        if name.trim().is_empty() {
            self.err(format!("{at}.name"), "must not be empty");
        } else if let Some(prev) = seen.insert(name, i) {
            self.err(
                format!("{at}.name"),
                format!("{name:?} is already the name of {list}[{prev}]"),
            );
        }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, c: &Config) {
        if let Some(a) = &c.access_log {
            if let Err(e) = crate::observe::access::Format::parse(&a.format) {
                self.err("access_log.format", e);
            }
            if a.to.trim().is_empty() {
                self.err(
                    "access_log.to",
                    "must not be empty; write stdout, stderr or a file path",
                );
            }
        }
        if c.services.is_empty()
            && c.kubernetes.ingress.is_none()
            && c.kubernetes.activator.is_none()
        {
            self.err(
                "services",
                "no services; add at least one service with hosts, traffic and revisions",
            );
        }
        if let Some(admin) = c.admin
            && admin == c.listen
            && admin.0.port() != 0
        {
            self.err("admin", "must differ from listen");
        }
        if let Some(i) = c.listen_internal
            && i.0.port() != 0
            && (i == c.listen
                || Some(i) == c.admin
                || c.tls.as_ref().is_some_and(|t| t.listen == i))
        {
            self.err(
                "listen_internal",
                "must differ from listen, admin and tls.listen",
            );
        }
        if let Some(ing) = &c.kubernetes.ingress {
            if !cfg!(feature = "kubernetes") {
                self.err(
                    "kubernetes.ingress",
                    "this rouse was built without Kubernetes support; use a build with the `kubernetes` feature (the release image has it)",
                );
            }
            if ing.class.trim().is_empty() {
                self.err("kubernetes.ingress.class", "must not be empty");
            }
            if ing.activate && c.kubernetes.autoscaler.is_none() {
                self.err(
                    "kubernetes.ingress.activate",
                    "needs kubernetes.autoscaler, or revisions at zero are never woken; Knative's is { url: ws://autoscaler.knative-serving.svc.cluster.local:8080 }",
                );
            }
            self.object_name("kubernetes.ingress.public_service", &ing.public_service);
            self.object_name("kubernetes.ingress.private_service", &ing.private_service);
            if c.listen_internal.is_none() {
                self.err(
                    "listen_internal",
                    "kubernetes.ingress needs a cluster-local listener for ClusterLocal rules; add listen_internal",
                );
            }
        }
        if let Some(a) = &c.kubernetes.activator {
            if !cfg!(feature = "kubernetes") {
                self.err(
                    "kubernetes.activator",
                    "this rouse was built without Kubernetes support; use a build with the `kubernetes` feature (the release image has it)",
                );
            }
            self.subdomain("kubernetes.activator.cluster_domain", &a.cluster_domain);
            if let Some(ns) = &a.namespace {
                self.object_name("kubernetes.activator.namespace", ns);
            }
        }
        if let Some(a) = &c.kubernetes.autoscaler {
            let rest = a.url.strip_prefix("ws://").unwrap_or_default();
            if rest.is_empty() || rest.starts_with('/') {
                self.err(
                    "kubernetes.autoscaler.url",
                    format!(
                        "{:?} is not a ws:// URL with a host; Knative's is ws://autoscaler.knative-serving.svc.cluster.local:8080",
                        a.url
                    ),
                );
            }
        }
        if c.limits.max_header_bytes.0 < 8192 {
            self.err("limits.max_header_bytes", "must be at least 8KiB");
        }
        if c.limits.max_connections == 0 {
            self.err(
                "limits.max_connections",
                "must be at least 1; it bounds the client connections open at once",
            );
        }
        let k = &c.kubernetes;
        if let Some(ns) = &k.namespace {
            self.object_name("kubernetes.namespace", ns);
        }
        self.subdomain("kubernetes.lease.name", &k.lease.name);
        if let Some(ns) = &k.lease.namespace {
            self.object_name("kubernetes.lease.namespace", ns);
        }
        if k.lease.duration.0 < Duration::from_secs(2) {
            self.err(
                "kubernetes.lease.duration",
                "must be at least 2s: the leader renews it every fifth of it",
            );
        } else if k.lease.duration.0.subsec_nanos() != 0 {
            self.err(
                "kubernetes.lease.duration",
                "must be whole seconds (a Lease stores seconds)",
            );
        }
        if let Some(p) = &k.peers {
            self.object_name("kubernetes.peers.service", &p.service);
            if let Some(ns) = &p.namespace {
                self.object_name("kubernetes.peers.namespace", ns);
            }
            match &p.port {
                PortRef::Name(n) => self.port_name("kubernetes.peers.port", n),
                PortRef::Number(0) => self.err(
                    "kubernetes.peers.port",
                    "0 is not a port; give 1-65535 or a port name",
                ),
                PortRef::Number(_) => {}
            }
        }
        if c.limits.idle_timeout.0.is_zero() {
            self.err("limits.idle_timeout", "must be greater than 0");
        }
        if c.limits.header_read_timeout.0.is_zero() {
            self.err("limits.header_read_timeout", "must be greater than 0");
        }
        if c.upstream.connect_timeout.0.is_zero() {
            self.err("upstream.connect_timeout", "must be greater than 0");
        }
        if let Some(t) = &c.tls {
            if t.listen.0.port() != 0 && (t.listen == c.listen || Some(t.listen) == c.admin) {
                self.err("tls.listen", "must differ from listen and admin");
            }
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, cert) in t.certificates.iter().enumerate() {
                for (j, h) in cert.hosts.iter().enumerate() {
                    if let Some(prev) = seen.insert(h.trim().to_ascii_lowercase(), i)
                        && prev != i
                    {
                        self.err(
                            format!("tls.certificates[{i}].hosts[{j}]"),
                            format!("{h:?} is already served by certificates[{prev}]"),
                        );
                    }
                }
            }
            if t.certificates.is_empty() && c.kubernetes.ingress.is_none() {
                self.err(
                    "tls.certificates",
                    "empty; add at least one { cert: FILE, key: FILE }",
                );
            }
            if t.certificates.iter().filter(|c| c.default).count() > 1 {
                self.err("tls.certificates", "more than one is marked default");
            }
            for (i, cert) in t.certificates.iter().enumerate() {
                for (j, h) in cert.hosts.iter().enumerate() {
                    let bare = h.trim().strip_prefix("*.").unwrap_or(h.trim());
                    if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                        self.err(
                            format!("tls.certificates[{i}].hosts[{j}]"),
                            format!("{h:?} is not a host name or *.wildcard"),
                        );
                    }
                }
            }
            if t.handshake_timeout.0.is_zero() {
                self.err("tls.handshake_timeout", "must be greater than 0");
            }
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hosts: HashMap<String, usize> = HashMap::new();
        for (i, s) in c.services.iter().enumerate() {
            let p = format!("services[{i}]");
            self.unique_name(&mut names, &s.name, i, &p, "services");
            if s.hosts.is_empty() {
                self.err(
                    format!("{p}.hosts"),
                    "empty; list at least one hostname, or \"*\" for any",
                );
            }
            for (j, h) in s.hosts.iter().enumerate() {
                let hp = format!("{p}.hosts[{j}]");
                let norm = h.trim().to_ascii_lowercase();
                if norm.is_empty() {
                    self.err(hp, "must not be empty");
                    continue;
                }
                if norm != "*"
                    && (norm.contains(['/', ' ', '*'])
                        || http::uri::Authority::try_from(norm.as_str()).is_err())
                {
                    self.err(hp, format!("{h:?} is not a hostname"));
                    continue;
                }
                if norm != "*" && strip_port(&norm).len() != norm.len() {
                    self.err(
                        hp,
                        format!("{h:?} has a port; list the name only, ports are ignored"),
                    );
                    continue;
                }
                if let Some(prev) = hosts.insert(norm, i)
                    && prev != i
                {
                    self.err(hp, format!("{h:?} is already a host of services[{prev}]"));
                }
            }
            if s.visibility == Visibility::ClusterLocal && c.listen_internal.is_none() {
                self.err(
                    format!("{p}.visibility"),
                    "cluster-local services are served only on listen_internal; add it",
                );
            }
            if s.redirect_to_https && c.tls.is_none() {
                self.err(
                    format!("{p}.redirect_to_https"),
                    "there is no TLS listener to redirect to; add a tls section",
                );
            }
            self.service(&p, s);
        }
    }

    fn sticky(&mut self, p: &str, k: &crate::config::Sticky) {
        match (&k.cookie, &k.header) {
            (Some(_), Some(_)) | (None, None) => self.err(
                p,
                "give one of cookie (a name for the cookie rouse sets) or header (a request header whose value pins the client)",
            ),
            (Some(c), None) => {
                if k.max_age.is_some_and(|a| a.0 < Duration::from_secs(1)) {
                    self.err(
                        format!("{p}.max_age"),
                        "must be at least 1s (a Max-Age of 0 deletes the cookie); leave it out for a cookie that lasts until the browser closes",
                    );
                }
                // RFC 6265's cookie-name is an RFC 9110 token, as a header name is (any case).
                let token = !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                    });
                if !token {
                    self.err(
                        format!("{p}.cookie"),
                        format!("{c:?} is not a cookie name; use letters, digits and - _ . only"),
                    );
                }
            }
            (None, Some(h)) => {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.err(format!("{p}.header"), format!("{h:?} is not a valid header name"));
                }
                if k.max_age.is_some() {
                    self.err(
                        format!("{p}.max_age"),
                        "only a cookie has a max_age; a header pin lasts as long as the client sends it",
                    );
                }
            }
        }
    }

    fn keep_warm(&mut self, p: &str, k: &KeepWarm, max: u32) {
        if let Err(e) = jiff::tz::TimeZone::get(&k.time_zone) {
            self.err(
                format!("{p}.time_zone"),
                format!(
                    "{:?} is not a known time zone ({e}); write an IANA name like Europe/Berlin, America/New_York or UTC",
                    k.time_zone
                ),
            );
        }
        if k.windows.is_empty() {
            self.err(format!("{p}.windows"), "empty; add a window like { days: [mon, tue, wed, thu, fri], from: \"08:00\", to: \"18:00\" }");
        }
        for (i, w) in k.windows.iter().enumerate() {
            let wp = format!("{p}.windows[{i}]");
            for (j, d) in w.days.iter().enumerate() {
                if !DAYS.contains(&d.to_ascii_lowercase().as_str()) {
                    self.err(
                        format!("{wp}.days[{j}]"),
                        format!("{d:?} is not a day; write one of {}", DAYS.join(", ")),
                    );
                }
            }
            for (key, t) in [("from", &w.from), ("to", &w.to)] {
                if let Err(e) = parse_clock(t) {
                    self.err(format!("{wp}.{key}"), e);
                }
            }
            if w.min == 0 || w.min > max {
                self.err(
                    format!("{wp}.min"),
                    format!("{} must be from 1 to scale.max ({max})", w.min),
                );
            }
        }
    }

    fn rollout(&mut self, p: &str, r: &Rollout, traffic: &[Target]) {
        match traffic.iter().find(|t| t.revision == r.to) {
            None if traffic.is_empty() => self.err(
                p,
                "moves the default traffic, which this service has none of; add traffic with the revisions to move between",
            ),
            None => self.err(
                format!("{p}.to"),
                format!(
                    "{:?} is not in traffic; add {{ revision: {}, percent: 0 }} to traffic",
                    r.to, r.to
                ),
            ),
            Some(t) if t.percent == 100 => self.err(
                format!("{p}.to"),
                format!("{:?} already has 100 % of traffic; nothing to roll out", r.to),
            ),
            Some(_) => {}
        }
        if r.over.0.is_zero() {
            self.err(format!("{p}.over"), "must be greater than 0, like 10m");
        }
        if !(1..=100).contains(&r.steps) {
            self.err(
                format!("{p}.steps"),
                format!("{} must be from 1 to 100", r.steps),
            );
        }
    }

    fn no_wake(&mut self, p: &str, n: &NoWake) {
        if n.paths.is_empty() && n.user_agents.is_empty() && n.headers.is_empty() {
            self.err(
                p,
                "matches nothing; list paths (prefixes like /healthz), user_agents (text like kube-probe) or headers",
            );
        }
        for (i, path) in n.paths.iter().enumerate() {
            if !path.starts_with('/') {
                self.err(
                    format!("{p}.paths[{i}]"),
                    format!("{path:?} must start with \"/\""),
                );
            }
        }
        for (i, a) in n.user_agents.iter().enumerate() {
            if a.trim().is_empty() {
                self.err(
                    format!("{p}.user_agents[{i}]"),
                    "must not be empty (it would match every request)",
                );
            }
        }
        for (k, v) in &n.headers {
            self.header(&format!("{p}.headers.{k}"), k, v);
        }
        if !(200..=599).contains(&n.answer.status) {
            self.err(
                format!("{p}.answer.status"),
                format!("{} is not a final HTTP status (200-599)", n.answer.status),
            );
        }
        for (k, v) in &n.answer.headers {
            self.header(&format!("{p}.answer.headers.{k}"), k, v);
        }
    }

    fn service(&mut self, p: &str, s: &Service) {
        if s.revisions.is_empty() {
            self.err(format!("{p}.revisions"), "empty; add at least one revision");
        }
        let mut revs: HashMap<&str, usize> = HashMap::new();
        for (j, r) in s.revisions.iter().enumerate() {
            let rp = format!("{p}.revisions[{j}]");
            self.unique_name(&mut revs, &r.name, j, &rp, "revisions");
            match (&r.scale, r.endpoints.is_empty(), &r.kubernetes) {
                (_, _, Some(k)) => self.kube_endpoints(&rp, r, k),
                // Never any endpoint: it answers every request with its placeholder.
                (None, true, None) if r.cold_start.placeholder.is_some() => {}
                (None, true, None) => self.err(
                    format!("{rp}.endpoints"),
                    "empty; list at least one ip:port, add scale.process to start processes, a kubernetes section to take the pods of a Service, or a cold_start.placeholder to answer every request with it",
                ),
                (None, false, None) => {}
                (Some(_), _, None) => {}
            }
            if let Some(sc) = &r.scale {
                self.scale(&rp, r, sc);
            }
            if let Some(p) = &r.cold_start.placeholder {
                if !(200..=599).contains(&p.status) {
                    self.err(
                        format!("{rp}.cold_start.placeholder.status"),
                        format!("{} is not a final HTTP status (200-599)", p.status),
                    );
                }
                for (k, v) in &p.headers {
                    self.header(&format!("{rp}.cold_start.placeholder.headers.{k}"), k, v);
                }
            }
            if let Some(g) = r.grpc_port {
                if r.protocol != Protocol::Http1 {
                    self.err(
                        format!("{rp}.grpc_port"),
                        "needs protocol http1: gRPC goes to this port over h2c, everything else to the endpoint's own port over HTTP/1.1",
                    );
                }
                if r.kubernetes.is_some() {
                    self.err(
                        format!("{rp}.grpc_port"),
                        "is for processes and listed endpoints; for a Service's pods write kubernetes.grpc_port (its gRPC port by name or number)",
                    );
                } else if g == 0 && r.scale.as_ref().and_then(|s| s.process.as_ref()).is_none() {
                    self.err(
                        format!("{rp}.grpc_port"),
                        "0 (a port for each process, as {grpc_port} and GRPC_PORT) needs scale.process; for static endpoints write their gRPC port",
                    );
                }
            }
            if r.protocol == Protocol::Auto && r.tls.is_some() {
                self.err(
                    format!("{rp}.protocol"),
                    "auto cannot be combined with tls (ALPN picks one protocol per connection); set http1 or h2c",
                );
            }
            let mut seen = HashMap::new();
            for (k, e) in r.endpoints.iter().enumerate() {
                if let Some(prev) = seen.insert(e.0, k) {
                    self.err(
                        format!("{rp}.endpoints[{k}]"),
                        format!("{} is listed twice (also endpoints[{prev}])", e.0),
                    );
                }
            }
        }
        let known = || {
            s.revisions
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // No default traffic is allowed when routes take every request there is.
        if !s.traffic.is_empty() || s.routes.is_empty() {
            self.traffic(&format!("{p}.traffic"), &s.traffic, &revs, &known);
        }
        if let Some(k) = &s.sticky {
            self.sticky(&format!("{p}.sticky"), k);
        }
        if let Some(n) = &s.no_wake {
            self.no_wake(&format!("{p}.no_wake"), n);
        }
        if let Some(r) = &s.rollout {
            self.rollout(&format!("{p}.rollout"), r, &s.traffic);
        }
        let mut route_keys: HashMap<(&str, &BTreeMap<String, String>), usize> = HashMap::new();
        for (j, r) in s.routes.iter().enumerate() {
            let rp = format!("{p}.routes[{j}]");
            if !r.path.starts_with('/') {
                self.err(
                    format!("{rp}.path"),
                    format!("{:?} must start with \"/\"", r.path),
                );
            }
            for (k, val) in &r.headers {
                self.header(&format!("{rp}.headers.{k}"), k, val);
            }
            for (k, val) in &r.set_headers {
                self.header(&format!("{rp}.set_headers.{k}"), k, val);
            }
            if let Some(h) = &r.rewrite_host
                && (h.contains(['/', ' ', '@'])
                    || http::uri::Authority::try_from(h.as_str()).is_err())
            {
                self.err(
                    format!("{rp}.rewrite_host"),
                    format!("{h:?} is not a host name (with an optional port)"),
                );
            }
            if let Some(prev) = route_keys.insert((&r.path, &r.headers), j) {
                self.err(
                    rp.clone(),
                    format!("same path and headers as routes[{prev}], so it could never match"),
                );
            }
            self.traffic(&format!("{rp}.traffic"), &r.traffic, &revs, &known);
        }
        let t = &s.timeouts;
        for (name, d) in [
            ("request", t.request),
            ("response_start", t.response_start),
            ("idle", t.idle),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                self.err(
                    format!("{p}.timeouts.{name}"),
                    "must be greater than 0; leave it out for no limit",
                );
            }
        }
    }

    fn scale(&mut self, rp: &str, r: &Revision, sc: &Scale) {
        let sp = format!("{rp}.scale");
        if sc.max == 0 {
            self.err(format!("{sp}.max"), "must be at least 1");
        }
        if sc.min > sc.max {
            self.err(
                format!("{sp}.min"),
                format!("{} is above max {}", sc.min, sc.max),
            );
        }
        if let Some(t) = sc.target
            && !above(t, 0.0)
        {
            self.err(format!("{sp}.target"), "must be a number above 0");
        }
        if sc.idle_grace.0.is_zero() {
            self.err(format!("{sp}.idle_grace"), "must be greater than 0");
        }
        if let Some(k) = &sc.keep_warm {
            self.keep_warm(&format!("{sp}.keep_warm"), k, sc.max);
        }
        if sc.tick.0.is_zero() {
            self.err(format!("{sp}.tick"), "must be greater than 0");
        } else if sc.stable_window.0 < sc.tick.0 {
            self.err(
                format!("{sp}.stable_window"),
                "must be at least one tick long",
            );
        }
        if !above(sc.panic_window_percentage, 0.0) || sc.panic_window_percentage > 100.0 {
            self.err(
                format!("{sp}.panic_window_percentage"),
                "must be above 0 and at most 100",
            );
        }
        if !above(sc.panic_threshold_percentage, 100.0) {
            self.err(
                format!("{sp}.panic_threshold_percentage"),
                "must be above 100",
            );
        }
        if !above(sc.max_scale_up_rate, 1.0) {
            self.err(format!("{sp}.max_scale_up_rate"), "must be above 1");
        }
        if !above(sc.max_scale_down_rate, 1.0) {
            self.err(format!("{sp}.max_scale_down_rate"), "must be above 1");
        }
        if let Some((kind, name)) = sc.workload() {
            let key = match kind {
                WorkloadKind::Deployment => "deployment",
                WorkloadKind::StatefulSet => "stateful_set",
            };
            self.subdomain(&format!("{sp}.{key}"), name);
            if sc.deployment.is_some() && sc.stateful_set.is_some() {
                self.err(
                    format!("{sp}.stateful_set"),
                    "give deployment or stateful_set, not both",
                );
            }
            if sc.process.is_some() {
                self.err(
                    format!("{sp}.process"),
                    format!("give process or {key}, not both: one thing runs the backends"),
                );
            }
            if r.kubernetes.is_none() {
                self.err(
                    format!("{rp}.kubernetes"),
                    format!("missing; scale.{key} needs the Service whose EndpointSlices list the pods, e.g. kubernetes: {{ service: {name} }}"),
                );
            }
            return;
        }
        match &sc.process {
            None => self.err(
                format!("{sp}.process"),
                "missing; scaling needs a process to start (command, ready), or a deployment or stateful_set to scale",
            ),
            Some(p) => {
                if !r.endpoints.is_empty() {
                    self.err(
                        format!("{rp}.endpoints"),
                        "must be empty when scale.process starts the endpoints",
                    );
                }
                if p.command.first().is_none_or(|c| c.trim().is_empty()) {
                    self.err(
                        format!("{sp}.process.command"),
                        "empty; give the program and its arguments, with {port} where the port goes",
                    );
                }
                if let Ready::HttpGet(path) = &p.ready
                    && !path.starts_with('/')
                {
                    self.err(
                        format!("{sp}.process.ready.http_get"),
                        format!("{path:?} must start with \"/\""),
                    );
                }
                if p.boot_timeout.0.is_zero() {
                    self.err(
                        format!("{sp}.process.boot_timeout"),
                        "must be greater than 0",
                    );
                }
                if p.stop_grace.0.is_zero() {
                    self.err(
                        format!("{sp}.process.stop_grace"),
                        "must be greater than 0 (it is also how long in-flight requests may finish)",
                    );
                }
                if p.max_backoff.0 < Duration::from_millis(100) {
                    self.err(
                        format!("{sp}.process.max_backoff"),
                        "must be at least 100ms, or a failing command restarts in a tight loop",
                    );
                }
            }
        }
    }

    /// A revision whose endpoints are the ready pods of a Kubernetes Service.
    fn kube_endpoints(&mut self, rp: &str, r: &Revision, k: &KubeEndpoints) {
        let kp = format!("{rp}.kubernetes");
        if !cfg!(feature = "kubernetes") {
            self.err(
                kp.clone(),
                "this rouse was built without Kubernetes support; use a build with the `kubernetes` feature (the release image has it)",
            );
        }
        if !r.endpoints.is_empty() {
            self.err(
                format!("{rp}.endpoints"),
                "must be empty when the kubernetes section gives the endpoints",
            );
        }
        if r.scale.as_ref().is_some_and(|s| s.process.is_some()) {
            self.err(
                format!("{rp}.scale.process"),
                "a revision with a kubernetes section runs pods, not local processes; scale them with scale.deployment or scale.stateful_set",
            );
        }
        self.object_name(&format!("{kp}.service"), &k.service);
        if let Some(ns) = &k.namespace {
            self.object_name(&format!("{kp}.namespace"), ns);
        }
        if let Some(PortRef::Name(n)) = &k.port {
            self.port_name(&format!("{kp}.port"), n);
        }
        if k.port == Some(PortRef::Number(0)) {
            self.err(
                format!("{kp}.port"),
                "0 is not a port; give 1-65535 or a port name",
            );
        }
        if let Some(g) = &k.grpc_port {
            match g {
                PortRef::Name(n) => self.port_name(&format!("{kp}.grpc_port"), n),
                PortRef::Number(0) => self.err(
                    format!("{kp}.grpc_port"),
                    "0 is not a port; give 1-65535 or a port name",
                ),
                PortRef::Number(_) => {}
            }
            if r.protocol != Protocol::Http1 {
                self.err(
                    format!("{kp}.grpc_port"),
                    "needs protocol http1: gRPC goes to this port over h2c, everything else to kubernetes.port over HTTP/1.1",
                );
            }
            if k.grpc_port == k.port && k.port.is_some() {
                self.err(
                    format!("{kp}.grpc_port"),
                    "is the same port as kubernetes.port; leave grpc_port out when one port serves both",
                );
            }
        }
        if let Some(kr) = &k.knative_revision {
            match kr.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    self.object_name(&format!("{kp}.knative_revision"), ns);
                    self.object_name(&format!("{kp}.knative_revision"), name);
                }
                _ => self.err(
                    format!("{kp}.knative_revision"),
                    format!("{kr:?} is not namespace/name, e.g. default/hello-00001"),
                ),
            }
        }
        if let Some(s) = &k.shared_by {
            self.object_name(&format!("{kp}.shared_by"), s);
            if self.pod_ip.is_none() {
                self.err(
                    format!("{kp}.shared_by"),
                    "needs kubernetes.activator.pod_ip, this replica's address among those the Service lists",
                );
            }
        }
    }

    /// Names of Services and namespaces: DNS labels (RFC 1123).
    fn object_name(&mut self, at: &str, name: &str) {
        if !dns_label(name) {
            self.err(
                at,
                format!("{name:?} is not a Kubernetes name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"),
            );
        }
    }

    /// Names of Deployments, StatefulSets and Leases: DNS subdomains (labels joined by dots).
    fn subdomain(&mut self, at: &str, name: &str) {
        if name.len() > 253 || !name.split('.').all(dns_label) {
            self.err(
                at,
                format!("{name:?} is not a Kubernetes object name: use lowercase letters, digits, '-' and '.', at most 253, each dot-separated part starting and ending with a letter or digit"),
            );
        }
    }

    /// Port names (IANA service names, as Kubernetes checks them).
    fn port_name(&mut self, at: &str, name: &str) {
        if name.parse::<u16>().is_ok() {
            self.err(
                at,
                format!(
                    "{name:?} is a number in quotes; write it without quotes to mean port {name}"
                ),
            );
        } else if name.len() > 15
            || !dns_label(name)
            || name.contains("--")
            || !name.bytes().any(|b| b.is_ascii_lowercase())
        {
            self.err(
                at,
                format!("{name:?} is not a port name: use 1-15 lowercase letters, digits and '-' with at least one letter, as in the Service's ports"),
            );
        }
    }

    fn traffic(
        &mut self,
        p: &str,
        targets: &[Target],
        revs: &HashMap<&str, usize>,
        known: &dyn Fn() -> String,
    ) {
        if targets.is_empty() {
            self.err(
                p,
                "empty; add at least one { revision, percent } with percents summing to 100",
            );
            return;
        }
        let mut sum = 0u64;
        let mut tags: HashMap<&str, usize> = HashMap::new();
        for (k, t) in targets.iter().enumerate() {
            let tp = format!("{p}[{k}]");
            sum += u64::from(t.percent);
            if t.percent > 100 {
                self.err(
                    format!("{tp}.percent"),
                    format!("{} is over 100", t.percent),
                );
            }
            if !revs.contains_key(t.revision.as_str()) {
                self.err(
                    format!("{tp}.revision"),
                    format!(
                        "{:?} is not a revision of this service (known: {})",
                        t.revision,
                        known()
                    ),
                );
            }
            if let Some(tag) = &t.tag {
                if tag.trim().is_empty() || HeaderValue::from_str(tag).is_err() {
                    self.err(
                        format!("{tp}.tag"),
                        "must be non-empty text usable as a header value",
                    );
                } else if let Some(prev) = tags.insert(tag, k) {
                    self.err(
                        format!("{tp}.tag"),
                        format!("{tag:?} is already the tag of {p}[{prev}]"),
                    );
                }
            }
            for (hk, hv) in &t.set_headers {
                self.header(&format!("{tp}.set_headers.{hk}"), hk, hv);
            }
        }
        if sum != 100 {
            self.err(p, format!("percents sum to {sum}, must be 100"));
        }
    }

    fn header(&mut self, p: &str, name: &str, value: &str) {
        match HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => self.err(p, format!("{name:?} is not a valid header name")),
            Ok(h) if is_hop_by_hop(&h) => self.err(
                p,
                format!("{name:?} is a hop-by-hop header and cannot be routed on or set"),
            ),
            Ok(_) => {}
        }
        if HeaderValue::from_str(value).is_err() {
            self.err(p, format!("{value:?} is not a valid header value"));
        }
    }
}

/// A finite number strictly above `min` (NaN and infinities fail).
fn above(v: f64, min: f64) -> bool {
    v.is_finite() && v > min
}

/// A DNS label (RFC 1123): 1-63 lowercase letters, digits and '-', alphanumeric at both ends.
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    /// The issues of `yaml` as `path: message` lines.
    fn issues(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .issues()
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect(),
        }
    }

    #[test]
    fn sticky_needs_one_pin_with_a_valid_name() {
        let svc = |sticky: &str| {
            format!(
                "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: ['*']\n    sticky: {sticky}\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions: [{{ name: r, endpoints: ['127.0.0.1:9'] }}]\n"
            )
        };
        assert!(issues(&svc("{ cookie: rouse-s, max_age: 1h }")).is_empty());
        assert!(issues(&svc("{ header: x-user }")).is_empty());
        let one = "services[0].sticky: give one of cookie (a name for the cookie rouse sets) or header (a request header whose value pins the client)";
        assert_eq!(issues(&svc("{}")), [one]);
        assert_eq!(issues(&svc("{ cookie: a, header: b }")), [one]);
        assert_eq!(
            issues(&svc("{ cookie: 'a b' }")),
            [
                "services[0].sticky.cookie: \"a b\" is not a cookie name; use letters, digits and - _ . only"
            ]
        );
        assert_eq!(
            issues(&svc("{ header: 'x y', max_age: 1h }")),
            [
                "services[0].sticky.header: \"x y\" is not a valid header name",
                "services[0].sticky.max_age: only a cookie has a max_age; a header pin lasts as long as the client sends it",
            ]
        );
    }

    #[test]
    fn no_wake_must_match_something_and_answer_with_a_status() {
        let svc = |n: &str| {
            format!(
                "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: ['*']\n    no_wake: {n}\n    traffic: [{{ revision: r, percent: 100 }}]\n    revisions: [{{ name: r, endpoints: ['127.0.0.1:9'] }}]\n"
            )
        };
        assert!(issues(&svc("{ paths: [/healthz] }")).is_empty());
        assert_eq!(
            issues(&svc("{ answer: { status: 99 } }")),
            [
                "services[0].no_wake: matches nothing; list paths (prefixes like /healthz), user_agents (text like kube-probe) or headers",
                "services[0].no_wake.answer.status: 99 is not a final HTTP status (200-599)",
            ]
        );
        assert_eq!(
            issues(&svc("{ paths: [healthz], user_agents: [''] }")),
            [
                "services[0].no_wake.paths[0]: \"healthz\" must start with \"/\"",
                "services[0].no_wake.user_agents[0]: must not be empty (it would match every request)",
            ]
        );
    }

    #[test]
    fn keep_warm_windows_are_checked_by_key() {
        let rev = |k: &str| {
            with_revision(
                &format!(
                    "        scale: {{ process: {{ command: [x] }}, max: 2, keep_warm: {k} }}\n"
                ),
                "",
            )
        };
        assert!(
            issues(&rev("{ time_zone: Europe/Berlin, windows: [{ days: [mon, FRI], from: '08:00', to: '18:00' }] }"))
                .is_empty()
        );
        assert_eq!(
            issues(&rev(
                "{ time_zone: Mars/Olympus, windows: [{ days: [monday], from: '8:00', to: '24:01', min: 3 }] }"
            )),
            [
                "services[0].revisions[0].scale.keep_warm.time_zone: \"Mars/Olympus\" is not a known time zone (failed to find time zone `Mars/Olympus` in time zone database); write an IANA name like Europe/Berlin, America/New_York or UTC",
                "services[0].revisions[0].scale.keep_warm.windows[0].days[0]: \"monday\" is not a day; write one of mon, tue, wed, thu, fri, sat, sun",
                "services[0].revisions[0].scale.keep_warm.windows[0].from: \"8:00\" is not a time of day; write HH:MM, like 08:30 or 18:00",
                "services[0].revisions[0].scale.keep_warm.windows[0].to: \"24:01\" is not a time of day; write HH:MM, like 08:30 or 18:00",
                "services[0].revisions[0].scale.keep_warm.windows[0].min: 3 must be from 1 to scale.max (2)",
            ]
        );
    }

    #[test]
    fn a_rollout_must_name_an_arm_and_take_time() {
        let svc = |traffic: &str, r: &str| {
            format!(
                "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: ['*']\n    rollout: {r}\n    traffic: {traffic}\n    routes: [{{ path: /x, traffic: [{{ revision: a, percent: 100 }}] }}]\n    revisions: [{{ name: a, endpoints: ['127.0.0.1:9'] }}, {{ name: b, endpoints: ['127.0.0.1:8'] }}]\n"
            )
        };
        let split = "[{ revision: a, percent: 100 }, { revision: b, percent: 0 }]";
        assert!(issues(&svc(split, "{ to: b, over: 10m }")).is_empty());
        assert_eq!(
            issues(&svc(
                "[{ revision: a, percent: 100 }]",
                "{ to: b, over: 0s, steps: 0 }"
            )),
            [
                "services[0].rollout.to: \"b\" is not in traffic; add { revision: b, percent: 0 } to traffic",
                "services[0].rollout.over: must be greater than 0, like 10m",
                "services[0].rollout.steps: 0 must be from 1 to 100",
            ]
        );
        assert_eq!(
            issues(&svc(split, "{ to: a, over: 1m }")),
            ["services[0].rollout.to: \"a\" already has 100 % of traffic; nothing to roll out"]
        );
        assert_eq!(
            issues(&svc("[]", "{ to: a, over: 1m }")),
            [
                "services[0].rollout: moves the default traffic, which this service has none of; add traffic with the revisions to move between"
            ]
        );
    }

    #[test]
    fn a_grpc_port_needs_http1_and_a_port_or_processes() {
        assert!(
            issues(&with_revision(
                "        grpc_port: 8081\n        endpoints: ['127.0.0.1:8080']\n",
                ""
            ))
            .is_empty()
        );
        assert_eq!(
            issues(&with_revision(
                "        grpc_port: 0\n        protocol: h2c\n        endpoints: ['127.0.0.1:8080']\n",
                ""
            )),
            [
                "services[0].revisions[0].grpc_port: needs protocol http1: gRPC goes to this port over h2c, everything else to the endpoint's own port over HTTP/1.1",
                "services[0].revisions[0].grpc_port: 0 (a port for each process, as {grpc_port} and GRPC_PORT) needs scale.process; for static endpoints write their gRPC port",
            ]
        );
    }

    #[test]
    fn access_log_templates_and_sinks_are_checked_by_key() {
        let got = issues(&with_revision(
            "        endpoints: ['127.0.0.1:9']\n",
            "access_log: { to: '', format: '{method} {nope}' }\n",
        ));
        assert_eq!(
            got,
            [
                "access_log.format: no field {nope}; the fields are time, client, method, host, path, protocol, status, bytes, duration_ms, service, revision, upstream, cold_start, wait_ms, error, trace_id",
                "access_log.to: must not be empty; write stdout, stderr or a file path",
            ]
        );
    }

    fn with_revision(rev: &str, top: &str) -> String {
        shaped(top, "", rev)
    }

    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn a_build_without_kubernetes_says_so() {
        let got = issues(&with_revision(
            "        kubernetes: { service: hello }\n",
            "",
        ));
        assert_eq!(
            got,
            [
                "services[0].revisions[0].kubernetes: this rouse was built without Kubernetes support; use a build with the `kubernetes` feature (the release image has it)"
            ]
        );
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn kubernetes_sections_are_checked_with_their_key_paths() {
        let ok = with_revision(
            "        kubernetes: { service: hello, namespace: apps, port: http, grpc_port: 9090 }\n        scale: { deployment: hello.v1 }\n",
            "kubernetes: { namespace: apps, lease: { name: rouse.lock, duration: 10s }, peers: { service: rouse, port: admin } }\n",
        );
        assert_eq!(issues(&ok), Vec::<String>::new());
        let p = "services[0].revisions[0]";
        for (rev, top, want) in [
            (
                "        endpoints: [127.0.0.1:2]\n        kubernetes: { service: hello }\n",
                "",
                format!("{p}.endpoints: must be empty when the kubernetes section gives the endpoints"),
            ),
            (
                "        scale: { deployment: hello }\n",
                "",
                format!("{p}.kubernetes: missing; scale.deployment needs the Service whose EndpointSlices list the pods, e.g. kubernetes: {{ service: hello }}"),
            ),
            (
                "        kubernetes: { service: Hello_World }\n",
                "",
                format!("{p}.kubernetes.service: \"Hello_World\" is not a Kubernetes name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"),
            ),
            (
                "        kubernetes: { service: hello, port: \"8080\" }\n",
                "",
                format!("{p}.kubernetes.port: \"8080\" is a number in quotes; write it without quotes to mean port 8080"),
            ),
            (
                "        kubernetes: { service: hello, port: a-very-long-port-name }\n",
                "",
                format!("{p}.kubernetes.port: \"a-very-long-port-name\" is not a port name: use 1-15 lowercase letters, digits and '-' with at least one letter, as in the Service's ports"),
            ),
            (
                "        grpc_port: 9090\n        kubernetes: { service: hello }\n",
                "",
                format!("{p}.grpc_port: is for processes and listed endpoints; for a Service's pods write kubernetes.grpc_port (its gRPC port by name or number)"),
            ),
            (
                "        protocol: h2c\n        kubernetes: { service: hello, port: http, grpc_port: grpc }\n",
                "",
                format!("{p}.kubernetes.grpc_port: needs protocol http1: gRPC goes to this port over h2c, everything else to kubernetes.port over HTTP/1.1"),
            ),
            (
                "        kubernetes: { service: hello, port: http, grpc_port: http }\n",
                "",
                format!("{p}.kubernetes.grpc_port: is the same port as kubernetes.port; leave grpc_port out when one port serves both"),
            ),
            (
                "        kubernetes: { service: hello, grpc_port: 0 }\n",
                "",
                format!("{p}.kubernetes.grpc_port: 0 is not a port; give 1-65535 or a port name"),
            ),
            (
                "        kubernetes: { service: hello, grpc_port: GRPC }\n",
                "",
                format!("{p}.kubernetes.grpc_port: \"GRPC\" is not a port name: use 1-15 lowercase letters, digits and '-' with at least one letter, as in the Service's ports"),
            ),
            (
                "        kubernetes: { service: hello }\n        scale: { deployment: hello, stateful_set: hello }\n",
                "",
                format!("{p}.scale.stateful_set: give deployment or stateful_set, not both"),
            ),
            (
                "        kubernetes: { service: hello }\n",
                "kubernetes: { lease: { duration: 1s } }\n",
                "kubernetes.lease.duration: must be at least 2s: the leader renews it every fifth of it".to_owned(),
            ),
            (
                "        kubernetes: { service: hello }\n",
                "kubernetes: { lease: { duration: 2500ms } }\n",
                "kubernetes.lease.duration: must be whole seconds (a Lease stores seconds)".to_owned(),
            ),
        ] {
            let got = issues(&with_revision(rev, top));
            assert_eq!(got, [want], "for\n{rev}{top}");
        }
        // A process and a workload both running the backends.
        let got = issues(&with_revision(
            "        kubernetes: { service: hello }\n        scale: { deployment: hello, process: { command: [x] } }\n",
            "",
        ));
        assert!(got.contains(&format!("{p}.scale.process: give process or deployment, not both: one thing runs the backends")), "{got:?}");
    }

    /// A file with one service `s` (hosts `*`, all traffic to `r`), `svc` added to the
    /// service, `rev` to its revision `r`, and `top` at the top.
    fn shaped(top: &str, svc: &str, rev: &str) -> String {
        format!(
            "listen: 127.0.0.1:1\n{top}services:\n  - name: s\n    hosts: ['*']\n    traffic: [{{ revision: r, percent: 100 }}]\n{svc}    revisions:\n      - name: r\n{rev}"
        )
    }

    /// Every rule the validator has, triggered once: each answer names its key and says what
    /// is wrong. (The rules tested elsewhere in this file are not repeated.)
    #[test]
    fn every_rule_answers_with_its_key_path() {
        let ep = "        endpoints: ['127.0.0.1:2']\n";
        let proc_ =
            |extra: &str| format!("        scale: {{ process: {{ command: [x]{extra} }} }}\n");
        let scale =
            |extra: &str| format!("        scale: {{ process: {{ command: [x] }}, {extra} }}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                "listen: 127.0.0.1:1\nservices:\n  - name: ''\n    hosts: ['*']\n    traffic: [{ revision: r, percent: 100 }]\n    revisions: [{ name: r, endpoints: ['127.0.0.1:2'] }]\n".into(),
                "services[0].name: must not be empty",
            ),
            (
                shaped("listen_internal: 127.0.0.1:1\n", "", ep),
                "listen_internal: must differ from listen, admin and tls.listen",
            ),
            (
                shaped("kubernetes: { ingress: { class: ' ', activate: true } }\n", "", ep),
                "kubernetes.ingress.class: must not be empty",
            ),
            (
                shaped("kubernetes: { ingress: { activate: true } }\n", "", ep),
                "kubernetes.ingress.activate: needs kubernetes.autoscaler",
            ),
            (
                shaped("kubernetes: { ingress: {} }\n", "", ep),
                "listen_internal: kubernetes.ingress needs a cluster-local listener",
            ),
            (
                shaped("kubernetes: { autoscaler: { url: 'http://x' } }\n", "", ep),
                "kubernetes.autoscaler.url: \"http://x\" is not a ws:// URL with a host",
            ),
            (
                shaped("limits: { max_header_bytes: 4KiB }\n", "", ep),
                "limits.max_header_bytes: must be at least 8KiB",
            ),
            (
                shaped("kubernetes: { peers: { service: rouse, port: 0 } }\n", "", ep),
                "kubernetes.peers.port: 0 is not a port",
            ),
            (
                shaped("limits: { idle_timeout: 0s }\n", "", ep),
                "limits.idle_timeout: must be greater than 0",
            ),
            (
                shaped("limits: { header_read_timeout: 0s }\n", "", ep),
                "limits.header_read_timeout: must be greater than 0",
            ),
            (
                shaped("upstream: { connect_timeout: 0s }\n", "", ep),
                "upstream.connect_timeout: must be greater than 0",
            ),
            (
                shaped("tls: { listen: 127.0.0.1:3, certificates: [{ cert: a, key: a, hosts: [x.test] }, { cert: b, key: b, hosts: [X.test] }] }\n", "", ep),
                "tls.certificates[1].hosts[0]: \"X.test\" is already served by certificates[0]",
            ),
            (
                shaped("tls: { listen: 127.0.0.1:3, certificates: [] }\n", "", ep),
                "tls.certificates: empty; add at least one",
            ),
            (
                shaped("", "", ep).replacen("hosts: ['*']", "hosts: ['']", 1),
                "services[0].hosts[0]: must not be empty",
            ),
            (
                shaped("", "", ep).replacen("hosts: ['*']", "hosts: ['a b']", 1),
                "services[0].hosts[0]: \"a b\" is not a hostname",
            ),
            (
                shaped("", "    sticky: { cookie: pin, max_age: 500ms }\n", ep),
                "services[0].sticky.max_age: must be at least 1s",
            ),
            (
                shaped("", "", &scale("keep_warm: { windows: [] }")),
                "services[0].revisions[0].scale.keep_warm.windows: empty",
            ),
            (
                "listen: 127.0.0.1:1\nservices:\n  - name: s\n    hosts: ['*']\n    traffic: []\n    revisions: []\n".into(),
                "services[0].revisions: empty; add at least one revision",
            ),
            (
                shaped("", "    routes:\n      - { path: /a, traffic: [{ revision: r, percent: 100 }] }\n      - { path: /a, traffic: [{ revision: r, percent: 100 }] }\n", ep),
                "services[0].routes[1]: same path and headers as routes[0], so it could never match",
            ),
            (
                shaped("", "    timeouts: { request: 0s }\n", ep),
                "services[0].timeouts.request: must be greater than 0; leave it out for no limit",
            ),
            (
                shaped("", "", &scale("tick: 0s")),
                "services[0].revisions[0].scale.tick: must be greater than 0",
            ),
            (
                shaped("", "", &scale("panic_window_percentage: 150")),
                "services[0].revisions[0].scale.panic_window_percentage: must be above 0 and at most 100",
            ),
            (
                shaped("", "", &scale("max_scale_up_rate: 1")),
                "services[0].revisions[0].scale.max_scale_up_rate: must be above 1",
            ),
            (
                shaped("", "", &scale("max_scale_down_rate: 0.5")),
                "services[0].revisions[0].scale.max_scale_down_rate: must be above 1",
            ),
            (
                shaped("", "", &proc_(", boot_timeout: 0s")),
                "services[0].revisions[0].scale.process.boot_timeout: must be greater than 0",
            ),
            (
                shaped("", "", &proc_(", stop_grace: 0s")),
                "services[0].revisions[0].scale.process.stop_grace: must be greater than 0",
            ),
            (
                shaped("", "", &proc_(", max_backoff: 50ms")),
                "services[0].revisions[0].scale.process.max_backoff: must be at least 100ms",
            ),
            (
                shaped("", "", "        kubernetes: { service: hello, knative_revision: hello }\n"),
                "services[0].revisions[0].kubernetes.knative_revision: \"hello\" is not namespace/name",
            ),
            (
                shaped("", "", "        kubernetes: { service: hello, shared_by: rouse }\n"),
                "services[0].revisions[0].kubernetes.shared_by: needs kubernetes.activator.pod_ip",
            ),
            (
                shaped("kubernetes: { lease: { name: Rouse } }\n", "", ep),
                "kubernetes.lease.name: \"Rouse\" is not a Kubernetes object name",
            ),
            (
                shaped("", "", ep).replacen(
                    "traffic: [{ revision: r, percent: 100 }]",
                    "traffic: [{ revision: r, percent: 100, tag: '' }]",
                    1,
                ),
                "services[0].traffic[0].tag: must be non-empty text usable as a header value",
            ),
            (
                shaped("", "    routes:\n      - { path: /a, set_headers: { x-a: \"\\x01\" }, traffic: [{ revision: r, percent: 100 }] }\n", ep),
                "services[0].routes[0].set_headers.x-a: \"\\u{1}\" is not a valid header value",
            ),
        ];
        let mut missed = Vec::new();
        for (yaml, want) in &cases {
            let got = issues(yaml);
            if !got.iter().any(|g| g.starts_with(want)) {
                missed.push(format!("want {want:?}\n got {got:?}\n in:\n{yaml}"));
            }
        }
        assert!(missed.is_empty(), "{}", missed.join("\n\n"));
    }
}
