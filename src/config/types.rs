//! The YAML schema: serde types that mirror the file, key for key. Rules the types cannot
//! express are checked in [`validate`](super::validate).

use super::units::{ByteSize, Dur};
use super::words::or_list;
use crate::http::tls::{Certificate, UpstreamTls};
use serde::{Deserialize, Deserializer, de};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the data listener (HTTP/1.1 and h2c with prior knowledge on one port).
    pub listen: Addr,
    /// Address of the cluster-local listener (HTTP/1.1 and h2c): it serves every service,
    /// those with `visibility: cluster-local` included, which `listen` and `tls` never serve.
    #[serde(default)]
    pub listen_internal: Option<Addr>,
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
    /// The Kubernetes cluster that revisions with a `kubernetes` section come from; read
    /// from the pod's service account, or `KUBECONFIG`, or `~/.kube/config`.
    #[serde(default)]
    pub kubernetes: Kubernetes,
    /// One line per request, off when absent.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    /// The services, each with hosts, routes, traffic and revisions.
    #[serde(default)]
    pub services: Vec<Service>,
}

/// The access log: where its lines go and how they read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, or a file path (appended to, created if missing).
    #[serde(default = "default_access_log_to")]
    pub to: String,
    /// `json` (one object per line) or a template whose `{field}`s are replaced.
    #[serde(default = "default_access_log_format")]
    pub format: String,
}

fn default_access_log_to() -> String {
    "stdout".into()
}

fn default_access_log_format() -> String {
    "json".into()
}

/// Cluster-wide settings, used only when some revision has a `kubernetes` section.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    /// Namespace of revisions that name none; default rouse's own (the pod's namespace, from
    /// `POD_NAMESPACE` or the service account), else `default`.
    pub namespace: Option<String>,
    /// The Lease that elects the one replica making scale decisions above one and down.
    pub lease: Lease,
    /// How the elected replica finds the others, to add their demand to its own.
    pub peers: Option<Peers>,
    /// Also serve Knative's `Ingress` objects of this class, as the cluster's ingress.
    pub ingress: Option<IngressClass>,
    /// Serve Knative's Revisions as Knative's activator does: each is reached by the
    /// `Knative-Serving-Revision`/`-Namespace` headers or its `<name>.<namespace>.svc` host,
    /// through the pods of its private Service, and held while it has none.
    pub activator: Option<ActivatorSettings>,
    /// Report the demand of Knative revisions (`kubernetes.knative_revision`) to Knative's
    /// autoscaler, as Knative's activator does.
    pub autoscaler: Option<AutoscalerLink>,
}

/// `rouse activator`: which Revisions are served and how requests for them are held.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivatorSettings {
    /// The cluster's DNS domain: a request without the revision headers is routed by a Host
    /// of the form `<revision>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Serve only the Revisions of this namespace; default every namespace.
    pub namespace: Option<String>,
    /// This replica's pod IP (`POD_IP`): where it finds itself among the activators that
    /// Knative put in front of a revision, to take its share of the pods.
    pub pod_ip: Option<std::net::IpAddr>,
    /// Bounds on the requests held per revision while it has no free pod (Knative's own
    /// queue is practically unbounded). Default: 1000 requests, 64 MiB of declared bodies,
    /// held until the revision's timeout, no shedding.
    pub queue: Queue,
}

impl Default for ActivatorSettings {
    fn default() -> Self {
        ActivatorSettings {
            cluster_domain: "cluster.local".to_owned(),
            namespace: None,
            pod_ip: None,
            queue: Queue::knative(),
        }
    }
}

/// The websocket to Knative's autoscaler that revision stats go to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerLink {
    /// The autoscaler's stats endpoint.
    pub url: String,
    /// The name the stats carry as their pod (the autoscaler counts reporters by it);
    /// default `POD_NAME`, else the host name.
    pub pod_name: Option<String>,
}

impl Default for AutoscalerLink {
    fn default() -> Self {
        AutoscalerLink {
            url: "ws://autoscaler.knative-serving.svc.cluster.local:8080".to_owned(),
            pod_name: None,
        }
    }
}

/// Serving Knative Ingresses (`networking.internal.knative.dev/v1alpha1`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressClass {
    /// The `networking.knative.dev/ingress.class` annotation value of the Ingresses served;
    /// others are never touched.
    pub class: String,
    /// The Service in rouse's namespace that reaches the public listeners (`listen`, `tls`);
    /// named in each Ingress's `status.publicLoadBalancer`.
    pub public_service: String,
    /// The Service that reaches `listen_internal`, named in `status.privateLoadBalancer`;
    /// its EndpointSlices list the rouse pods that must all serve an Ingress before it is Ready.
    pub private_service: String,
    /// The cluster's DNS domain, for the Services' names and the short forms of
    /// cluster-local hosts.
    pub cluster_domain: String,
    /// Do the activator's job in the same hop: a split to a Knative revision goes straight
    /// to the pods of the revision's private Service, is held while there are none, and its
    /// demand is reported to the autoscaler (`kubernetes.autoscaler`), so Knative's
    /// activator is never in the path of these requests.
    pub activate: bool,
}

impl Default for IngressClass {
    fn default() -> Self {
        IngressClass {
            class: "rouse.ingress.networking.knative.dev".to_owned(),
            public_service: "rouse".to_owned(),
            private_service: "rouse-internal".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            activate: false,
        }
    }
}

/// Leader election among rouse replicas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lease {
    /// Name of the `coordination.k8s.io/v1` Lease.
    pub name: String,
    /// Its namespace; default rouse's own.
    pub namespace: Option<String>,
    /// A leader that has not renewed for this long is replaced.
    pub duration: Dur,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            name: "rouse".to_owned(),
            namespace: None,
            duration: Dur(Duration::from_secs(15)),
        }
    }
}

/// The other rouse replicas: the pods behind a Service, reached on their admin port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// The Service that selects every rouse pod.
    pub service: String,
    /// Its namespace; default rouse's own.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The port (name or number) of the admin listener in its EndpointSlices.
    pub port: PortRef,
}

/// Endpoints from a Kubernetes Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeEndpoints {
    /// The Service whose EndpointSlices (label `kubernetes.io/service-name`) list the pods.
    pub service: String,
    /// Its namespace; default `kubernetes.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The port, by name or number, as the EndpointSlices list it; may be left out when they
    /// list one port.
    #[serde(default)]
    pub port: Option<PortRef>,
    /// The pods' gRPC port, by name or number, as the EndpointSlices list it: gRPC requests
    /// go to each pod on this port over h2c, everything else to `port` (one
    /// `container_concurrency` for both).
    #[serde(default)]
    pub grpc_port: Option<PortRef>,
    /// Also use a pod the EndpointSlices list as not ready (and not terminating) as soon as
    /// it answers Knative's queue-proxy probe sent to it directly: the kubelet's readiness
    /// period and the slice update are then not part of a cold start.
    #[serde(default)]
    pub probe_not_ready: bool,
    /// The Knative Revision (`namespace/name`) these pods serve: its demand is reported to
    /// Knative's autoscaler (`kubernetes.autoscaler`), and requests carry
    /// `K-Proxy-Request: activator` so its queue-proxies do not count them twice.
    #[serde(default)]
    pub knative_revision: Option<String>,
    /// A Service whose EndpointSlices list the replicas of rouse that share these pods (the
    /// activators Knative put in front of the revision): each takes its own slice of the
    /// pods, as Knative's activators do, when the revision has a `container_concurrency`.
    #[serde(default)]
    pub shared_by: Option<String>,
}

/// A port named in a Service (`http`) or given as a number (`8080`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a port number from 1 to 65535 or a port name, like 8080 or http"
)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A port name.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => write!(f, "{s:?}"),
        }
    }
}

fn default_watch_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_drain_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// The TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Address of the TLS listener.
    pub listen: Addr,
    /// Certificates, chosen by SNI.
    pub certificates: Vec<Certificate>,
    /// Answer every request on the cleartext `listen` port with a 301 to HTTPS.
    #[serde(default)]
    pub redirect_http: bool,
    /// The port that redirects to HTTPS name; default the listener's own (443 is left out of
    /// the URL). Set it when clients reach the listener through another port (a Service).
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// Time a client has to complete the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
}

fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Client-facing limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers); larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Time a client has to send a complete request head once it starts one; then the
    /// connection is closed (slowloris protection).
    pub header_read_timeout: Dur,
    /// Most client connections open at once on each listener; beyond it, new connections wait
    /// in the kernel's listen queue until one closes.
    pub max_connections: usize,
    /// An HTTP/2 client connection on which no request has started for this long is closed
    /// (GOAWAY; streams still open finish). HTTP/1.1 connections idle between requests are
    /// closed after `header_read_timeout`.
    pub idle_timeout: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: ByteSize(64 << 10),
            header_read_timeout: Dur(Duration::from_secs(30)),
            max_connections: 20_000,
            idle_timeout: Dur(Duration::from_secs(120)),
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
    /// Which listeners serve it: `external` (all of them) or `cluster-local` (only
    /// `listen_internal`).
    #[serde(default)]
    pub visibility: Visibility,
    /// Answer cleartext requests with a 301 to HTTPS (the TLS listener).
    #[serde(default)]
    pub redirect_to_https: bool,
    /// Routes tried before the default traffic, longest path prefix first.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The default route's split; empty = requests no route matches get 404 (then `routes`
    /// must not be empty).
    #[serde(default)]
    pub traffic: Vec<Target>,
    /// The revisions that traffic can go to.
    pub revisions: Vec<Revision>,
    /// Per-request time limits; none by default.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Keep each client on the revision it first got; off by default.
    #[serde(default)]
    pub sticky: Option<Sticky>,
    /// Requests (health checks, bots, monitors) that must neither wake a revision nor keep
    /// it up; none by default.
    #[serde(default)]
    pub no_wake: Option<NoWake>,
    /// Move the default split to one revision, step by step.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// A gradual rollout of the service's default split to one revision.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The revision (an arm of `traffic`) that ends with all of it.
    pub to: String,
    /// From its first share to all of it.
    pub over: Dur,
    /// Equal steps to take.
    #[serde(default = "default_rollout_steps")]
    pub steps: u32,
}

fn default_rollout_steps() -> u32 {
    10
}

/// Requests that are not demand: matched by any of a path prefix, a user agent or a header,
/// they are passed to a revision only if it has a free slot at once, and otherwise answered
/// with `answer`; either way they neither start a revision nor count as its activity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoWake {
    /// Path prefixes.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Text found in `User-Agent`, ignoring case.
    #[serde(default)]
    pub user_agents: Vec<String>,
    /// Headers with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The answer when no slot is free (the revision is cold, or busy).
    #[serde(default = "asleep")]
    pub answer: Placeholder,
}

fn asleep() -> Placeholder {
    Placeholder {
        status: 503,
        body: "asleep\n".into(),
        headers: BTreeMap::new(),
    }
}

/// How a service pins clients to revisions: by a cookie rouse sets, or by a hash of a
/// request header. Exactly one of `cookie` and `header`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// The name of the cookie rouse sets to pin a client.
    #[serde(default)]
    pub cookie: Option<String>,
    /// How long the cookie lasts; none: until the browser closes.
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Pin by a hash of this request header's value instead (a user or session id).
    #[serde(default)]
    pub header: Option<String>,
}

/// Which listeners serve a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Every listener.
    #[default]
    External,
    /// Only the cluster-local listener (`listen_internal`).
    ClusterLocal,
}

impl<'de> Deserialize<'de> for Visibility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = d.deserialize_str(OneOf(&["external", "cluster-local"]))?;
        Ok([Visibility::External, Visibility::ClusterLocal][i])
    }
}

/// Reads one of a fixed set of names as its index in `.0`; anything else is told the names.
struct OneOf(&'static [&'static str]);

impl de::Visitor<'_> for OneOf {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&or_list(self.0))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|name| *name == v)
            .ok_or_else(|| E::unknown_variant(v, self.0))
    }
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
    /// Replaces the `Host` header (and HTTP/2 `:authority`) of matching requests.
    #[serde(default)]
    pub rewrite_host: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = d.deserialize_str(OneOf(&["http1", "h2c", "auto"]))?;
        Ok([Protocol::Http1, Protocol::H2c, Protocol::Auto][i])
    }
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
    /// The port on which each backend also serves gRPC (h2c): gRPC requests go there, the
    /// rest to the endpoint's own port; 0 with `scale.process`: rouse gives each process one
    /// (`{grpc_port}`, `GRPC_PORT`).
    #[serde(default)]
    pub grpc_port: Option<u16>,
    /// Static endpoints (`ip:port`).
    #[serde(default)]
    pub endpoints: Vec<Addr>,
    /// Endpoints from a Kubernetes Service instead: its ready pods.
    #[serde(default)]
    pub kubernetes: Option<KubeEndpoints>,
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
    /// A higher `min` at given hours of given days, in a time zone (office hours).
    #[serde(default)]
    pub keep_warm: Option<KeepWarm>,
    /// Start local processes on demand.
    #[serde(default)]
    pub process: Option<Process>,
    /// Scale this Deployment (in the namespace of the revision's `kubernetes` section)
    /// through its `scale` subresource.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Scale this StatefulSet instead.
    #[serde(default)]
    pub stateful_set: Option<String>,
}

impl Scale {
    /// The workload this section scales in Kubernetes, if any: (kind, name).
    pub fn workload(&self) -> Option<(WorkloadKind, &str)> {
        match (&self.deployment, &self.stateful_set) {
            (Some(d), _) => Some((WorkloadKind::Deployment, d)),
            (None, Some(s)) => Some((WorkloadKind::StatefulSet, s)),
            (None, None) => None,
        }
    }

    /// True when something runs this section's backends (a process, or a workload).
    pub fn runs_backends(&self) -> bool {
        self.process.is_some() || self.workload().is_some()
    }
}

/// A Kubernetes workload kind with a `scale` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        })
    }
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
    /// Answer a browser's page request (a GET that accepts `text/html`) at once with a small
    /// page that says the revision is starting and reloads itself, instead of a blank wait.
    pub waiting_page: bool,
}

impl Default for ColdStart {
    fn default() -> Self {
        ColdStart {
            placeholder: None,
            header: true,
            waiting_page: false,
        }
    }
}

/// Keep-warm windows: at least `min` endpoints while a window is open, on top of
/// `scale.min`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepWarm {
    /// An IANA time zone such as `Europe/Berlin`; `UTC` by default.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The windows; a revision is kept at the highest `min` of those open.
    pub windows: Vec<KeepWarmWindow>,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// One keep-warm window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepWarmWindow {
    /// Days it opens on (`mon` … `sun`); every day when empty.
    #[serde(default)]
    pub days: Vec<String>,
    /// Opening time, `HH:MM` local.
    pub from: String,
    /// Closing time, `HH:MM` local; earlier than `from` means the next day.
    pub to: String,
    /// Endpoints kept while it is open.
    #[serde(default = "default_keep_warm_min")]
    pub min: u32,
}

fn default_keep_warm_min() -> u32 {
    1
}

/// The day names of `keep_warm` windows, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Minutes after midnight of `HH:MM` (00:00 to 24:00).
pub fn parse_clock(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time of day; write HH:MM, like 08:30 or 18:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Held requests beyond this are answered 503 at once.
    pub max_requests: usize,
    /// Declared request body bytes (`Content-Length`) of held requests beyond this → 503.
    pub max_bytes: ByteSize,
    /// A request held longer than this gets 503; 0 means until the request timeout.
    pub max_wait: Dur,
    /// Under sustained overload (the queue has not emptied for this long, and the revision
    /// cannot add endpoints), an arrival predicted to wait longer than this gets 503 at once;
    /// 0 turns shedding off. Capped at `max_wait`.
    pub target_wait: Dur,
}

impl Queue {
    /// Bounds for a revision that Knative's autoscaler scales: held until the request's own
    /// timeout (as Knative's activator holds), never shed for a predicted wait (rouse does
    /// not know when Knative adds pods); the count and byte bounds stay.
    pub fn knative() -> Queue {
        Queue {
            max_wait: Dur(Duration::ZERO),
            target_wait: Dur(Duration::ZERO),
            ..Queue::default()
        }
    }
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            max_requests: 1000,
            max_bytes: ByteSize(64 << 20),
            max_wait: Dur(Duration::from_secs(10)),
            target_wait: Dur(Duration::from_secs(1)),
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
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address like 127.0.0.1:8080")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                parse_addr(v).map(Addr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses `ip:port` or `host:port` (resolved now), with an error that says how to write it.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    // A `name:port` whose port is a number was meant as an address: the lookup's own error
    // says why it failed. Anything else is not in the form at all.
    let named = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) if named => Err(format!(
            "cannot resolve {text:?}: {e}; write an IP address, like \"127.0.0.1:8080\", or a name this machine resolves"
        )),
        Err(_) => Err(format!(
            "{text:?} is not an address; write it as ip:port, like \"127.0.0.1:8080\""
        )),
    }
}
