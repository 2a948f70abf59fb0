//! The YAML configuration: serde types that mirror the file, and validation that rejects a bad
//! file at load time with the key path of every problem (`services[0].traffic: percents sum to
//! 95, must be 100`), so nothing starts on a half-understood config.
//!
//! Parsing is two steps. serde (through `serde_path_to_error`) catches syntax, types and unknown
//! keys and reports the first with its path; [`Config::validate`] then checks what the types
//! cannot say (sums, references, uniqueness) and reports every problem at once.

mod units;

pub use units::{ByteSize, Dur};

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, de};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One problem in a config file, anchored at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path such as `services[0].traffic[1].revision`; empty for the document root.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a valid config (syntax, types, unknown keys, or semantic rules).
    #[error("invalid config:\n{}", .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the data listener (HTTP/1.1 and h2c with prior knowledge on one port).
    pub listen: Addr,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`); none if absent.
    #[serde(default)]
    pub admin: Option<Addr>,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// Upstream connection settings shared by every revision.
    #[serde(default)]
    pub upstream: Upstream,
    /// The services, each with hosts, routes, traffic and revisions.
    pub services: Vec<Service>,
}

fn default_drain_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Client-facing limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers); larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Time a client has to send a complete request head once it starts one; then the
    /// connection is closed (slowloris protection).
    pub header_read_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: ByteSize(64 << 10),
            header_read_timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// Upstream connection behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Time allowed to establish a TCP connection to an endpoint.
    pub connect_timeout: Dur,
    /// A pooled keep-alive connection unused for this long is closed rather than reused. Kept
    /// below common application keep-alive timeouts (5 s) so rouse rarely reuses a connection
    /// the application is closing.
    pub pool_idle_timeout: Dur,
    /// Idle pooled connections kept per endpoint when `container_concurrency` is 0 (with a
    /// limit, the pool holds up to `container_concurrency` connections).
    pub max_idle_per_endpoint: usize,
    /// After a connection to an endpoint is refused, the balancer avoids it for this long
    /// (unless every endpoint is avoided).
    pub eject_after_connect_error: Dur,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout: Dur(Duration::from_secs(3)),
            pool_idle_timeout: Dur(Duration::from_secs(4)),
            max_idle_per_endpoint: 256,
            eject_after_connect_error: Dur(Duration::from_secs(1)),
        }
    }
}

/// A service: the unit that hosts route to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Hostnames (Host header or `:authority`, port stripped, case-insensitive); `*` = any.
    pub hosts: Vec<String>,
    /// Routes tried before the default traffic, longest path prefix first.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The default route's split.
    pub traffic: Vec<Target>,
    /// The revisions that traffic can go to.
    pub revisions: Vec<Revision>,
    /// Per-request time limits; none by default.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// A route: a path prefix plus exact header matches, with its own split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Literal path prefix; must start with `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Headers that must all be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers set (overwriting) on matching requests before the split.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// The split for this route.
    pub traffic: Vec<Target>,
}

fn default_path() -> String {
    "/".to_owned()
}

/// One arm of a split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Name of a revision of the same service.
    pub revision: String,
    /// Share of requests, 0 to 100; the arms of one split sum to 100.
    pub percent: u32,
    /// Name reachable with the `rouse-tag` request header, whatever the percent.
    #[serde(default)]
    pub tag: Option<String>,
    /// Headers set (overwriting) on requests that this arm receives.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
}

/// Upstream protocol of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// A revision: a set of endpoints running one version of the workload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// Name, unique within the service.
    pub name: String,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: Protocol,
    /// Most requests one endpoint handles at once; 0 = unlimited.
    #[serde(default)]
    pub container_concurrency: u32,
    /// Static endpoints (`ip:port`).
    #[serde(default)]
    pub endpoints: Vec<Addr>,
    /// Bounds on requests held while no endpoint can take them.
    #[serde(default)]
    pub queue: Queue,
}

/// Bounds on held requests for one revision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Held requests beyond this are answered 503 at once.
    pub max_requests: usize,
    /// Declared request body bytes (`Content-Length`) of held requests beyond this → 503.
    pub max_bytes: ByteSize,
    /// A request held longer than this gets 503; 0 means until the request timeout.
    pub max_wait: Dur,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            max_requests: 1000,
            max_bytes: ByteSize(64 << 20),
            max_wait: Dur(Duration::from_secs(10)),
        }
    }
}

/// Per-request time limits, each answered with 504. Absent means no limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Total time from arrival to the end of the response body (includes time held).
    #[serde(default)]
    pub request: Option<Dur>,
    /// Time from arrival until the upstream's response headers.
    #[serde(default)]
    pub response_start: Option<Dur>,
    /// Longest gap between two pieces of the response body.
    #[serde(default)]
    pub idle: Option<Dur>,
}

/// A socket address written as `ip:port` or `host:port` (resolved once, at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_addr(&text).map(Addr).map_err(de::Error::custom)
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(_) => Err(format!(
            "{text:?} is not an address; write it as ip:port, like \"127.0.0.1:8080\""
        )),
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // serde_norway appends "at line N column M" (kept: it helps find the spot) and may
            // prefix its own, coarser path (dropped: ours is exact).
            let mut message = e.into_inner().to_string();
            if let Some((prefix, rest)) = message.split_once(": ")
                && !prefix.contains(char::is_whitespace)
            {
                message = rest.to_owned();
            }
            ConfigError::Invalid(vec![ConfigIssue {
                path: if path == "." { String::new() } else { path },
                message: message.replace("missing field", "missing key"),
            }])
        })?;
        let issues = cfg.validate();
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Checks the rules serde cannot express; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = Validator::default();
        v.config(self);
        v.issues
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, c: &Config) {
        if c.services.is_empty() {
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
        if c.limits.max_header_bytes.0 < 8192 {
            self.err("limits.max_header_bytes", "must be at least 8KiB");
        }
        if c.limits.header_read_timeout.0.is_zero() {
            self.err("limits.header_read_timeout", "must be greater than 0");
        }
        if c.upstream.connect_timeout.0.is_zero() {
            self.err("upstream.connect_timeout", "must be greater than 0");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hosts: HashMap<String, usize> = HashMap::new();
        for (i, s) in c.services.iter().enumerate() {
            let p = format!("services[{i}]");
            if s.name.trim().is_empty() {
                self.err(format!("{p}.name"), "must not be empty");
            } else if let Some(prev) = names.insert(&s.name, i) {
                self.err(
                    format!("{p}.name"),
                    format!("{:?} is already the name of services[{prev}]", s.name),
                );
            }
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
            self.service(&p, s);
        }
    }

    fn service(&mut self, p: &str, s: &Service) {
        if s.revisions.is_empty() {
            self.err(format!("{p}.revisions"), "empty; add at least one revision");
        }
        let mut revs: HashMap<&str, usize> = HashMap::new();
        for (j, r) in s.revisions.iter().enumerate() {
            let rp = format!("{p}.revisions[{j}]");
            if r.name.trim().is_empty() {
                self.err(format!("{rp}.name"), "must not be empty");
            } else if let Some(prev) = revs.insert(&r.name, j) {
                self.err(
                    format!("{rp}.name"),
                    format!("{:?} is already the name of revisions[{prev}]", r.name),
                );
            }
            if r.endpoints.is_empty() {
                self.err(
                    format!("{rp}.endpoints"),
                    "empty; list at least one ip:port",
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
        self.traffic(&format!("{p}.traffic"), &s.traffic, &revs, &known);
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
            Ok(h) if crate::headers::is_hop_by_hop(&h) => self.err(
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

/// Removes a `:port` suffix from a host (keeps IPv6 brackets intact).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i)
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && host[..i].find(':').is_none() =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }
}
