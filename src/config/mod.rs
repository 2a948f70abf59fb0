//! The YAML configuration: serde types that mirror the file, and validation that rejects a bad
//! file at load time with the key path of every problem (`services[0].traffic: percents sum to
//! 95, must be 100`), so nothing starts on a half-understood config.
//!
//! Parsing is two steps. serde (through `serde_path_to_error`) catches syntax, types and unknown
//! keys and reports the first with its path; [`Config::validate`] then checks what the types
//! cannot say (sums, references, uniqueness) and reports every problem at once.

mod units;

pub mod sidecar;

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
    /// How often the config file is checked for changes (SIGHUP also reloads); 0 = only on
    /// SIGHUP.
    #[serde(default = "default_watch_interval")]
    pub watch_interval: Dur,
    /// A TLS listener (HTTPS, HTTP/2 over TLS); none if absent.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// Upstream connection settings shared by every revision.
    #[serde(default)]
    pub upstream: Upstream,
    /// The services, each with hosts, routes, traffic and revisions.
    pub services: Vec<Service>,
}

fn default_watch_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_drain_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// The TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Address of the TLS listener.
    pub listen: Addr,
    /// Certificates, chosen by SNI.
    pub certificates: Vec<Certificate>,
    /// Answer every request on the cleartext `listen` port with a 301 to HTTPS.
    #[serde(default)]
    pub redirect_http: bool,
    /// Time a client has to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
}

fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// A certificate chain and its key, PEM files, re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// SNI names this certificate serves; `*.example.com` matches one label.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Serve this one when SNI is absent or matches nothing (default: the first).
    #[serde(default)]
    pub default: bool,
}

/// TLS from rouse to a revision's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the CA certificates that sign the endpoints' certificates.
    pub ca: std::path::PathBuf,
    /// Name to verify the endpoints' certificates against; default: the endpoint's IP address.
    #[serde(default)]
    pub server_name: Option<String>,
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
    /// Whatever the client spoke: HTTP/2 requests go out over h2c, the rest over HTTP/1.1
    /// (what Knative's queue-proxy does; for apps that serve both on one port).
    Auto,
}

impl Protocol {
    /// The protocol one request goes out over, given the version it came in with.
    pub fn for_request(self, inbound: http::Version) -> Protocol {
        match self {
            Protocol::Auto if inbound == http::Version::HTTP_2 => Protocol::H2c,
            Protocol::Auto => Protocol::Http1,
            p => p,
        }
    }
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
    /// Autoscaling and the process scaler; absent = the static `endpoints`.
    #[serde(default)]
    pub scale: Option<Scale>,
    /// What requests see while the revision has no ready endpoint.
    #[serde(default)]
    pub cold_start: ColdStart,
    /// Connect to the endpoints over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// Autoscaling of one revision.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Fewest endpoints; 0 allows scale to zero.
    #[serde(default)]
    pub min: u32,
    /// Most endpoints.
    #[serde(default = "default_max_scale")]
    pub max: u32,
    /// Concurrency per endpoint to aim for; default 0.7 × container_concurrency, or 70 if that
    /// is 0.
    #[serde(default)]
    pub target: Option<f64>,
    /// No request active or held for this long → scale to zero (when `min` is 0).
    #[serde(default = "default_idle_grace")]
    pub idle_grace: Dur,
    /// Long averaging window of the autoscaler.
    #[serde(default = "default_stable_window")]
    pub stable_window: Dur,
    /// Short (panic) window as a percentage of the stable window.
    #[serde(default = "default_panic_window_percentage")]
    pub panic_window_percentage: f64,
    /// Panic when the short window wants this percentage of the ready endpoints.
    #[serde(default = "default_panic_threshold_percentage")]
    pub panic_threshold_percentage: f64,
    /// Most growth per decision, as a multiple of the ready endpoints.
    #[serde(default = "default_max_scale_up_rate")]
    pub max_scale_up_rate: f64,
    /// Most shrinkage per decision, as a divisor of the ready endpoints.
    #[serde(default = "default_max_scale_down_rate")]
    pub max_scale_down_rate: f64,
    /// Interval between autoscaler decisions.
    #[serde(default = "default_tick")]
    pub tick: Dur,
    /// Start local processes on demand.
    pub process: Option<Process>,
}

fn default_max_scale() -> u32 {
    1
}
fn default_idle_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_stable_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_panic_window_percentage() -> f64 {
    10.0
}
fn default_panic_threshold_percentage() -> f64 {
    200.0
}
fn default_max_scale_up_rate() -> f64 {
    1000.0
}
fn default_max_scale_down_rate() -> f64 {
    2.0
}
fn default_tick() -> Dur {
    Dur(Duration::from_secs(1))
}

/// A backend started as a local process per endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Program and arguments; `{port}` in any of them becomes the endpoint's port (also given
    /// in the `PORT` environment variable).
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default rouse's own.
    #[serde(default)]
    pub cwd: Option<std::path::PathBuf>,
    /// How readiness is checked.
    #[serde(default)]
    pub ready: Ready,
    /// A process not ready within this is killed and counted as failed to start.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: Dur,
    /// After SIGTERM, time before SIGKILL; also the longest wait for in-flight requests to
    /// finish before SIGTERM when scaling down.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Dur,
    /// Longest pause between attempts after failures to start (doubling from 1 s).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
}

fn default_boot_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_stop_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_max_backoff() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Readiness check of a started process: `tcp`, or `{ http_get: "/path" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ready {
    /// A TCP connection to the port succeeds.
    #[default]
    Tcp,
    /// `GET <path>` answers with a status below 500.
    HttpGet(String),
}

impl<'de> Deserialize<'de> for Ready {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const FORMS: &str = "`tcp` or `{ http_get: \"/path\" }`";
        impl<'de> de::Visitor<'de> for V {
            type Value = Ready;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{FORMS}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ready, E> {
                match v {
                    "tcp" => Ok(Ready::Tcp),
                    other => Err(E::custom(format!("unknown check {other:?}; use {FORMS}"))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Ready, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom(format!("empty; use {FORMS}")))?;
                let ready = match key.as_str() {
                    "http_get" => Ready::HttpGet(map.next_value()?),
                    "tcp" => {
                        map.next_value::<de::IgnoredAny>()?;
                        Ready::Tcp
                    }
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown check {other:?}; use {FORMS}"
                        )));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(format!("give one check only: {FORMS}")));
                }
                Ok(ready)
            }
        }
        d.deserialize_any(V)
    }
}

/// Cold-start behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColdStart {
    /// Answer at once with this instead of holding the request (scale-up still starts).
    pub placeholder: Option<Placeholder>,
    /// Add `rouse-cold-start: true` to responses that waited for a cold revision.
    pub header: bool,
}

impl Default for ColdStart {
    fn default() -> Self {
        ColdStart {
            placeholder: None,
            header: true,
        }
    }
}

/// A canned response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholder {
    /// Status code.
    #[serde(default = "default_placeholder_status")]
    pub status: u16,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_placeholder_status() -> u16 {
    503
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
    /// Once response headers are sent, `request` no longer applies (`idle` still does), so a
    /// long download or server stream is not cut off at a fixed age.
    #[serde(default)]
    pub exempt_streams: bool,
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
            if t.certificates.is_empty() {
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
            match (&r.scale, r.endpoints.is_empty()) {
                (None, true) => self.err(
                    format!("{rp}.endpoints"),
                    "empty; list at least one ip:port, or add scale.process to start processes",
                ),
                (Some(sc), _) => self.scale(&rp, r, sc),
                (None, false) => {}
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
        match &sc.process {
            None => self.err(
                format!("{sp}.process"),
                "missing; scaling needs a process to start (command, ready)",
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

/// A finite number strictly above `min` (NaN and infinities fail).
fn above(v: f64, min: f64) -> bool {
    v.is_finite() && v > min
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
