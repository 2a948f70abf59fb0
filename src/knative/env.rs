//! The sidecar's settings: the environment variables Knative gives its queue-proxy (so rouse
//! is a drop-in), each also a command-line flag for use outside Knative, plus a few of rouse's
//! own with `ROUSE_` names. Every problem is reported at once, naming the variable and flag.

use super::probe_json::{self, ProbeError};
use crate::config::{
    Addr, ByteSize, ColdStart, Config, Dur, Limits, Protocol, Queue, Revision, Service, Target,
    Timeouts, Upstream,
};
use crate::probe::Probe;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The raw values, as given by flags or the environment (flags win).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SidecarArgs {
    /// Most requests the app handles at once; 0 = no limit and no queue.
    #[arg(long, env = "CONTAINER_CONCURRENCY")]
    pub container_concurrency: Option<String>,
    /// Port for clients (HTTP/1.1 and h2c on the same port); 8012 in Knative.
    #[arg(long, env = "QUEUE_SERVING_PORT")]
    pub serving_port: Option<String>,
    /// The app's port on 127.0.0.1.
    #[arg(long, env = "USER_PORT")]
    pub user_port: Option<String>,
    /// Total time per request in whole seconds (0 = no limit).
    #[arg(long, env = "REVISION_TIMEOUT_SECONDS")]
    pub revision_timeout_seconds: Option<String>,
    /// Time until the app's response headers, in seconds (0 or unset = off).
    #[arg(long, env = "REVISION_RESPONSE_START_TIMEOUT_SECONDS")]
    pub response_start_timeout_seconds: Option<String>,
    /// Longest silence in a response body, in seconds (0 or unset = off).
    #[arg(long, env = "REVISION_IDLE_TIMEOUT_SECONDS")]
    pub idle_timeout_seconds: Option<String>,
    /// The app's readiness probe, as Kubernetes probe JSON (or a JSON array of them).
    #[arg(long, env = "SERVING_READINESS_PROBE")]
    pub readiness_probe: Option<String>,
    /// Namespace of the revision.
    #[arg(long, env = "SERVING_NAMESPACE")]
    pub namespace: Option<String>,
    /// Configuration that owns the revision.
    #[arg(long, env = "SERVING_CONFIGURATION")]
    pub configuration: Option<String>,
    /// The revision.
    #[arg(long, env = "SERVING_REVISION")]
    pub revision: Option<String>,
    /// This pod's name (reported in every `Stat`).
    #[arg(long, env = "SERVING_POD")]
    pub pod: Option<String>,
    /// This pod's IP.
    #[arg(long, env = "SERVING_POD_IP")]
    pub pod_ip: Option<String>,
    /// Knative service that owns the revision (optional).
    #[arg(long, env = "SERVING_SERVICE")]
    pub service: Option<String>,
    /// Address every listener binds to.
    #[arg(long, env = "ROUSE_BIND")]
    pub bind: Option<String>,
    /// Port of `/wait-for-drain`.
    #[arg(long, env = "ROUSE_ADMIN_PORT")]
    pub admin_port: Option<String>,
    /// Port of the autoscaler's protobuf stats.
    #[arg(long, env = "ROUSE_STATS_PORT")]
    pub stats_port: Option<String>,
    /// Port of the Prometheus metrics.
    #[arg(long, env = "ROUSE_METRICS_PORT")]
    pub metrics_port: Option<String>,
    /// Requests that may wait for the app (default 10 × CONTAINER_CONCURRENCY).
    #[arg(long, env = "ROUSE_QUEUE_DEPTH")]
    pub queue_depth: Option<String>,
    /// Longest a request waits for the app, like `2s` (default: until its timeout).
    #[arg(long, env = "ROUSE_QUEUE_MAX_WAIT")]
    pub queue_max_wait: Option<String>,
    /// Time without new requests that ends a drain, like `30s`.
    #[arg(long, env = "ROUSE_DRAIN_QUIET_PERIOD")]
    pub drain_quiet_period: Option<String>,
    /// Longest a drain lasts (default: the revision timeout).
    #[arg(long, env = "ROUSE_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    /// Per-pod concurrency limit (0 = none).
    pub container_concurrency: u32,
    /// Client listener.
    pub serving: SocketAddr,
    /// `/wait-for-drain` listener.
    pub admin: SocketAddr,
    /// Protobuf stats listener.
    pub stats: SocketAddr,
    /// Prometheus listener.
    pub metrics: SocketAddr,
    /// The app.
    pub user: SocketAddr,
    /// Total per-request time.
    pub timeout: Option<Duration>,
    /// Until response headers.
    pub response_start_timeout: Option<Duration>,
    /// Between body pieces.
    pub idle_timeout: Option<Duration>,
    /// Readiness probes of the app.
    pub probes: Vec<Probe>,
    /// Namespace.
    pub namespace: String,
    /// Configuration.
    pub configuration: String,
    /// Revision.
    pub revision: String,
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub pod_ip: String,
    /// Knative service, if any.
    pub service: Option<String>,
    /// Requests that may wait.
    pub queue_depth: usize,
    /// Longest wait (`None` = until the request's timeout).
    pub queue_max_wait: Option<Duration>,
    /// Quiet period of a drain.
    pub drain_quiet: Duration,
    /// Bound of a drain.
    pub drain_timeout: Duration,
}

/// Everything wrong with the sidecar's settings.
#[derive(Debug, thiserror::Error)]
pub struct SidecarError(pub Vec<String>);

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the sidecar's settings have {} problem(s):",
            self.0.len()
        )?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// One setting's names, for messages.
struct Key {
    env: &'static str,
    flag: &'static str,
}

struct Check {
    problems: Vec<String>,
}

impl Check {
    fn missing(&mut self, k: &Key) {
        self.problems.push(format!(
            "{} is not set (or pass --{}): it is required",
            k.env, k.flag
        ));
    }

    fn bad(&mut self, k: &Key, value: &str, what: impl fmt::Display) {
        self.problems
            .push(format!("{} (--{}) = {value:?}: {what}", k.env, k.flag));
    }

    fn text(&mut self, v: &Option<String>, k: &Key) -> Option<String> {
        match v.as_deref().map(str::trim) {
            None | Some("") => {
                self.missing(k);
                None
            }
            Some(s) => Some(s.to_owned()),
        }
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        v: &Option<String>,
        k: &Key,
        required: bool,
        what: &str,
    ) -> Option<T> {
        match v.as_deref().map(str::trim) {
            None | Some("") => {
                if required {
                    self.missing(k);
                }
                None
            }
            Some(s) => match s.parse() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.bad(k, s, format!("expected {what}"));
                    None
                }
            },
        }
    }

    fn duration(&mut self, v: &Option<String>, k: &Key) -> Option<Duration> {
        let s = v.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(_) => {
                self.bad(k, s, "expected a duration like 500ms, 2s or 1m");
                None
            }
        }
    }
}

macro_rules! key {
    ($env:literal, $flag:literal) => {
        &Key {
            env: $env,
            flag: $flag,
        }
    };
}

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

impl SidecarArgs {
    /// Validates every value; all problems come back together.
    pub fn settings(&self) -> Result<SidecarSettings, SidecarError> {
        let mut c = Check {
            problems: Vec::new(),
        };
        let cc: Option<u32> = c.number(
            &self.container_concurrency,
            key!("CONTAINER_CONCURRENCY", "container-concurrency"),
            true,
            "a whole number, 0 for no limit",
        );
        let port = "a port number (0-65535)";
        let serving: Option<u16> = c.number(
            &self.serving_port,
            key!("QUEUE_SERVING_PORT", "serving-port"),
            true,
            port,
        );
        let user_key = key!("USER_PORT", "user-port");
        let user: Option<u16> = c.number(&self.user_port, user_key, true, port);
        if user == Some(0) {
            c.bad(user_key, "0", "the app's port cannot be 0");
        }
        let timeout: Option<u64> = c.number(
            &self.revision_timeout_seconds,
            key!("REVISION_TIMEOUT_SECONDS", "revision-timeout-seconds"),
            true,
            "whole seconds, 0 for no limit",
        );
        let start: Option<u64> = c.number(
            &self.response_start_timeout_seconds,
            key!(
                "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
                "response-start-timeout-seconds"
            ),
            false,
            "whole seconds, 0 for off",
        );
        let idle: Option<u64> = c.number(
            &self.idle_timeout_seconds,
            key!("REVISION_IDLE_TIMEOUT_SECONDS", "idle-timeout-seconds"),
            false,
            "whole seconds, 0 for off",
        );
        let namespace = c.text(&self.namespace, key!("SERVING_NAMESPACE", "namespace"));
        let configuration = c.text(
            &self.configuration,
            key!("SERVING_CONFIGURATION", "configuration"),
        );
        let revision = c.text(&self.revision, key!("SERVING_REVISION", "revision"));
        let pod = c.text(&self.pod, key!("SERVING_POD", "pod"));
        let pod_ip = c.text(&self.pod_ip, key!("SERVING_POD_IP", "pod-ip"));
        let bind_key = key!("ROUSE_BIND", "bind");
        let bind = match self.bind.as_deref().map(str::trim) {
            None | Some("") => Some(IpAddr::from([0, 0, 0, 0])),
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    c.bad(
                        bind_key,
                        s,
                        "expected an IP address like 0.0.0.0 or 127.0.0.1",
                    );
                    None
                }
            },
        };
        let mut side_port = |v: &Option<String>, k: &Key, default: u16| {
            c.number::<u16>(v, k, false, port).unwrap_or(default)
        };
        let admin = side_port(
            &self.admin_port,
            key!("ROUSE_ADMIN_PORT", "admin-port"),
            8022,
        );
        let stats = side_port(
            &self.stats_port,
            key!("ROUSE_STATS_PORT", "stats-port"),
            9090,
        );
        let metrics = side_port(
            &self.metrics_port,
            key!("ROUSE_METRICS_PORT", "metrics-port"),
            9091,
        );
        let depth: Option<usize> = c.number(
            &self.queue_depth,
            key!("ROUSE_QUEUE_DEPTH", "queue-depth"),
            false,
            "a whole number of requests",
        );
        let max_wait = c.duration(
            &self.queue_max_wait,
            key!("ROUSE_QUEUE_MAX_WAIT", "queue-max-wait"),
        );
        let quiet = c.duration(
            &self.drain_quiet_period,
            key!("ROUSE_DRAIN_QUIET_PERIOD", "drain-quiet-period"),
        );
        let drain_timeout = c.duration(
            &self.drain_timeout,
            key!("ROUSE_DRAIN_TIMEOUT", "drain-timeout"),
        );
        let probe_key = key!("SERVING_READINESS_PROBE", "readiness-probe");
        let probes = user.and_then(|u| {
            match probe_json::parse(self.readiness_probe.as_deref().unwrap_or(""), u) {
                Ok(p) => Some(p),
                Err(e) => {
                    let shown = self.readiness_probe.as_deref().unwrap_or("");
                    let hint = match e {
                        ProbeError::Syntax(_) => "; give JSON like {\"tcpSocket\":{\"port\":8080}}",
                        ProbeError::Unsupported(_) => "",
                    };
                    c.bad(probe_key, shown, format!("{e}{hint}"));
                    None
                }
            }
        });
        let all = (
            cc,
            serving,
            user,
            timeout,
            namespace,
            configuration,
            revision,
            pod,
            pod_ip,
            bind,
            probes,
        );
        let (
            Some(cc),
            Some(serving),
            Some(user),
            Some(timeout),
            Some(namespace),
            Some(configuration),
            Some(revision),
            Some(pod),
            Some(pod_ip),
            Some(bind),
            Some(probes),
        ) = all
        else {
            return Err(SidecarError(c.problems));
        };
        if !c.problems.is_empty() {
            return Err(SidecarError(c.problems));
        }
        let timeout = secs(timeout);
        let at = |p: u16| SocketAddr::new(bind, p);
        Ok(SidecarSettings {
            container_concurrency: cc,
            serving: at(serving),
            admin: at(admin),
            stats: at(stats),
            metrics: at(metrics),
            user: SocketAddr::from(([127, 0, 0, 1], user)),
            timeout,
            response_start_timeout: start.and_then(secs),
            idle_timeout: idle.and_then(secs),
            probes,
            namespace,
            configuration,
            revision,
            pod,
            pod_ip,
            service: self
                .service
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            queue_depth: depth.unwrap_or(10 * cc as usize),
            queue_max_wait: max_wait.filter(|d| !d.is_zero()),
            drain_quiet: quiet.unwrap_or(Duration::from_secs(30)),
            drain_timeout: drain_timeout
                .or(timeout)
                .unwrap_or(Duration::from_secs(300)),
        })
    }
}

impl SidecarSettings {
    /// The forwarding configuration: one service for every host, one revision whose single
    /// endpoint is the app, with the breaker's limit and queue, protocol chosen per request
    /// (h2c for HTTP/2 clients, as queue-proxy does), and a total timeout that stops at the
    /// first response byte so streams and WebSockets are not cut off at a fixed age.
    pub fn gateway_config(&self) -> Config {
        let name = self.revision.clone();
        Config {
            listen: Addr(self.serving),
            listen_internal: None,
            admin: None,
            drain_timeout: Dur(Duration::from_secs(1)),
            watch_interval: Dur(Duration::ZERO),
            tls: None,
            limits: Limits::default(),
            upstream: Upstream::default(),
            kubernetes: Default::default(),
            access_log: None,
            services: vec![Service {
                name: self
                    .service
                    .clone()
                    .unwrap_or_else(|| self.configuration.clone()),
                hosts: vec!["*".into()],
                visibility: Default::default(),
                redirect_to_https: false,
                routes: Vec::new(),
                traffic: vec![Target {
                    revision: name.clone(),
                    percent: 100,
                    tag: None,
                    set_headers: BTreeMap::new(),
                }],
                revisions: vec![Revision {
                    grpc_port: None,
                    name,
                    protocol: Protocol::Auto,
                    container_concurrency: self.container_concurrency,
                    endpoints: vec![Addr(self.user)],
                    kubernetes: None,
                    queue: Queue {
                        max_requests: self.queue_depth,
                        // Held requests keep their bodies in the client's socket, not here, so
                        // the count bounds memory; a byte cap would only refuse big uploads.
                        max_bytes: ByteSize(u64::MAX),
                        max_wait: Dur(self.queue_max_wait.unwrap_or(Duration::ZERO)),
                        // queue-proxy's breaker holds requests until their timeout; so does the
                        // drop-in.
                        target_wait: Dur(Duration::ZERO),
                    },
                    scale: None,
                    cold_start: ColdStart::default(),
                    tls: None,
                }],
                timeouts: Timeouts {
                    request: self.timeout.map(Dur),
                    // queue-proxy's idle timer runs from arrival while nothing is written, so
                    // before the headers it bounds the wait as a response-start limit does.
                    response_start: match (self.response_start_timeout, self.idle_timeout) {
                        (Some(a), Some(b)) => Some(Dur(a.min(b))),
                        (a, b) => a.or(b).map(Dur),
                    },
                    idle: self.idle_timeout.map(Dur),
                    exempt_streams: true,
                },
                sticky: None,
                no_wake: None,
                rollout: None,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SidecarArgs {
        SidecarArgs {
            container_concurrency: Some("10".into()),
            serving_port: Some("8012".into()),
            user_port: Some("8080".into()),
            revision_timeout_seconds: Some("300".into()),
            namespace: Some("default".into()),
            configuration: Some("hello".into()),
            revision: Some("hello-00001".into()),
            pod: Some("hello-00001-deployment-abc".into()),
            pod_ip: Some("10.0.0.7".into()),
            ..SidecarArgs::default()
        }
    }

    #[test]
    fn knative_defaults() {
        let s = full().settings().unwrap();
        assert_eq!(s.queue_depth, 100);
        assert_eq!(s.serving.port(), 8012);
        assert_eq!(s.admin.port(), 8022);
        assert_eq!(s.stats.port(), 9090);
        assert_eq!(s.metrics.port(), 9091);
        assert_eq!(s.timeout, Some(Duration::from_secs(300)));
        assert_eq!(s.drain_quiet, Duration::from_secs(30));
        assert_eq!(s.drain_timeout, Duration::from_secs(300));
        assert_eq!(s.probes, vec![probe_json::default_probe(8080)]);
        let cfg = s.gateway_config();
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    }

    #[test]
    fn every_problem_is_named() {
        let mut a = full();
        a.container_concurrency = Some("ten".into());
        a.user_port = None;
        a.pod = None;
        a.queue_max_wait = Some("soon".into());
        let e = a.settings().unwrap_err().to_string();
        for says in [
            "CONTAINER_CONCURRENCY (--container-concurrency) = \"ten\"",
            "USER_PORT is not set (or pass --user-port)",
            "SERVING_POD is not set",
            "ROUSE_QUEUE_MAX_WAIT (--queue-max-wait) = \"soon\"",
        ] {
            assert!(e.contains(says), "{says} missing from: {e}");
        }
        assert!(e.contains("4 problem(s)"), "{e}");
    }
}
