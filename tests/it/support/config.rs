//! A typed builder for the gateway's YAML config file.
//!
//! It renders YAML text (through serde_norway), so every test config goes through the same
//! parser and validation as a file given to `rouse run`. Keys that are not set are left out and
//! take their defaults. Durations and sizes are written as in a file: `"300ms"`, `"10s"`.
//!
//! ```ignore
//! let gw = Cfg::new()
//!     .admin()
//!     .service(
//!         Svc::new("s")
//!             .host("*")
//!             .split(&[("r1", 80), ("r2", 20)])
//!             .route(Route::new("/api").header("x", "y").to("r2"))
//!             .revision(Rev::new("r1").cc(1).endpoint(a.addr))
//!             .revision(Rev::new("r2").endpoint(b.addr)),
//!     )
//!     .start()
//!     .await;
//! ```

use super::{Config, Gateway, write_config};
use serde_norway::{Mapping, Value};
use std::fmt::Display;
use std::path::PathBuf;

/// A YAML mapping under construction; keys keep the order they were first set in.
#[derive(Clone, Debug, Default)]
struct Map(Mapping);

impl Map {
    /// Sets `key` to `value`.
    fn set(mut self, key: &str, value: impl Into<Value>) -> Map {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets `key` to `value` in the mapping under `outer`, creating that mapping if needed.
    fn set_in(mut self, outer: &str, key: &str, value: impl Into<Value>) -> Map {
        self.0
            .entry(outer.into())
            .or_insert_with(|| Mapping::new().into())
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("{outer} is not a mapping"))
            .insert(key.into(), value.into());
        self
    }

    /// Appends `item` to the list under `key`, creating the list if needed.
    fn push(mut self, key: &str, item: impl Into<Value>) -> Map {
        self.0
            .entry(key.into())
            .or_insert_with(|| Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .unwrap_or_else(|| panic!("{key} is not a list"))
            .push(item.into());
        self
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::Mapping(m.0)
    }
}

/// Declares a builder: one YAML mapping, which can be set as a value of its parent, with a
/// method for each listed key that sets the key to its argument. Keys that need more than that
/// get their methods in a separate `impl`.
macro_rules! node {
    (
        $(#[$attr:meta])*
        $node:ident {
            $( $(#[$doc:meta])* $key:ident: $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug)]
        pub struct $node(Map);

        impl From<$node> for Value {
            fn from(n: $node) -> Value {
                n.0.into()
            }
        }

        impl $node {
            $(
                $(#[$doc])*
                pub fn $key(self, value: $ty) -> $node {
                    $node(self.0.set(stringify!($key), value))
                }
            )*
        }
    };
}

node!(
    /// The whole file.
    Cfg {
        /// `drain_timeout`: how long SIGTERM waits for in-flight requests.
        drain_timeout: &str,
        /// `watch_interval`: how often the file and certificates are checked (`"0s"`: SIGHUP only).
        watch_interval: &str,
        /// `tls`: the HTTPS listener.
        tls: TlsListener,
        /// `listen_internal`: the cluster-local listener.
        listen_internal: &str,
    }
);

impl Cfg {
    /// A config with its data listener on `127.0.0.1:0` and nothing else yet.
    pub fn new() -> Cfg {
        Cfg(Map::default().set("listen", "127.0.0.1:0"))
    }

    /// A config whose one service is [`Svc::single`]`(rev)`.
    pub fn single(rev: Rev) -> Cfg {
        Cfg::new().service(Svc::single(rev))
    }

    /// `listen`: the data listener's address.
    pub fn listen(self, addr: impl Display) -> Cfg {
        Cfg(self.0.set("listen", addr.to_string()))
    }

    /// `admin` on `127.0.0.1:0`.
    pub fn admin(self) -> Cfg {
        self.admin_at("127.0.0.1:0")
    }

    /// `admin`: the admin listener's address.
    pub fn admin_at(self, addr: impl Display) -> Cfg {
        Cfg(self.0.set("admin", addr.to_string()))
    }

    /// `limits.idle_timeout`: how long an HTTP/2 client connection may go without a request.
    pub fn idle_timeout(self, d: &str) -> Cfg {
        Cfg(self.0.set_in("limits", "idle_timeout", d))
    }

    /// `limits.header_read_timeout`: time a client has to send a request head.
    pub fn header_read_timeout(self, d: &str) -> Cfg {
        Cfg(self.0.set_in("limits", "header_read_timeout", d))
    }

    /// `limits.max_connections`: client connections open at once per listener.
    pub fn max_connections(self, n: u64) -> Cfg {
        Cfg(self.0.set_in("limits", "max_connections", n))
    }

    /// `upstream.pool_idle_timeout`: idle pooled connections older than this are not reused.
    pub fn pool_idle_timeout(self, d: &str) -> Cfg {
        Cfg(self.0.set_in("upstream", "pool_idle_timeout", d))
    }

    /// `upstream.max_idle_per_endpoint`: idle connections kept per endpoint (no
    /// `container_concurrency`).
    pub fn max_idle_per_endpoint(self, n: u32) -> Cfg {
        Cfg(self.0.set_in("upstream", "max_idle_per_endpoint", n))
    }

    /// `upstream.connect_timeout`.
    pub fn connect_timeout(self, d: &str) -> Cfg {
        Cfg(self.0.set_in("upstream", "connect_timeout", d))
    }

    /// `access_log`: where lines go (`to`) and how they read (`format`).
    pub fn access_log(self, to: &str, format: &str) -> Cfg {
        Cfg(self
            .0
            .set_in("access_log", "to", to)
            .set_in("access_log", "format", format))
    }

    /// Adds a service to `services`.
    pub fn service(self, s: Svc) -> Cfg {
        Cfg(self.0.push("services", s))
    }

    /// The config as YAML text.
    pub fn yaml(&self) -> String {
        serde_norway::to_string(&Value::from(self.0.clone())).expect("a mapping renders")
    }

    /// The config as rouse loads it from a file; panics with the issues if it is invalid.
    pub fn parse(&self) -> Config {
        let yaml = self.yaml();
        Config::parse(&yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
    }

    /// Starts an in-process gateway on free ports, or says why it cannot start.
    ///
    /// A listener asked for on `127.0.0.1:0` (each of them, by default) gets a
    /// port from [`dead_addr`](super::dead_addr) rather than from the kernel's ephemeral range:
    /// rouse picks its process backends' ports there, and a test's gateway that bound one
    /// before the backend did would receive that backend's readiness probes (and then the
    /// requests of another test) as requests of its own.
    pub async fn try_start(&self) -> std::io::Result<Gateway> {
        let any = Value::from("127.0.0.1:0");
        let mut map = self.0.clone();
        for key in ["listen", "admin", "listen_internal"] {
            if map.0.get(key) == Some(&any) {
                map = map.set(key, super::dead_addr().await.to_string());
            }
        }
        if let Some(tls) = map.0.get_mut("tls").and_then(Value::as_mapping_mut)
            && tls.get("listen") == Some(&any)
        {
            tls.insert("listen".into(), super::dead_addr().await.to_string().into());
        }
        Gateway::start(Cfg(map).parse()).await
    }

    /// Starts an in-process gateway on free ports.
    pub async fn start(&self) -> Gateway {
        self.try_start().await.expect("gateway starts")
    }

    /// Writes the YAML to a config file in a fresh temp dir and returns its path.
    pub fn write(&self, name: &str) -> PathBuf {
        write_config(name, &self.yaml())
    }
}

node!(
    /// One entry of `services`.
    Svc {
        /// `timeouts`: the per-request time limits.
        timeouts: Timeouts,
        /// `visibility`: `external` or `cluster-local`.
        visibility: &str,
        /// `redirect_to_https`: cleartext requests get a 301 to HTTPS.
        redirect_to_https: bool,
    }
);

impl Svc {
    /// `sticky: { cookie, max_age }`: clients pinned by a cookie rouse sets.
    pub fn sticky_cookie(self, name: &str, max_age: Option<&str>) -> Svc {
        let s = Svc(self.0.set_in("sticky", "cookie", name));
        match max_age {
            Some(a) => Svc(s.0.set_in("sticky", "max_age", a)),
            None => s,
        }
    }

    /// `no_wake`: requests with these path prefixes or user agents are not demand.
    pub fn no_wake(self, paths: &[&str], user_agents: &[&str]) -> Svc {
        Svc(self
            .0
            .set_in("no_wake", "paths", paths)
            .set_in("no_wake", "user_agents", user_agents))
    }

    /// `rollout`: move the default split to `to` in `steps` over `over`.
    pub fn rollout(self, to: &str, over: &str, steps: u32) -> Svc {
        Svc(self
            .0
            .set_in("rollout", "to", to)
            .set_in("rollout", "over", over)
            .set_in("rollout", "steps", steps))
    }

    /// `sticky: { header }`: clients pinned by a hash of a request header.
    pub fn sticky_header(self, name: &str) -> Svc {
        Svc(self.0.set_in("sticky", "header", name))
    }

    /// A service named `name`, with no hosts, traffic or revisions yet.
    pub fn new(name: &str) -> Svc {
        Svc(Map::default().set("name", name))
    }

    /// Service `s`, on any host, sending everything to `rev`.
    pub fn single(rev: Rev) -> Svc {
        Svc::new("s").host("*").only(rev)
    }

    /// Service `s`, on any host, splitting traffic 50/50 between `a` and `b`.
    pub fn halves(a: Rev, b: Rev) -> Svc {
        let (na, nb) = (a.name().to_owned(), b.name().to_owned());
        Svc::new("s")
            .host("*")
            .split(&[(&na, 50), (&nb, 50)])
            .revision(a)
            .revision(b)
    }

    /// Adds a name to `hosts` (`"*"` for any host).
    pub fn host(self, host: &str) -> Svc {
        Svc(self.0.push("hosts", host))
    }

    /// Adds `(revision, percent)` arms to the default `traffic`.
    pub fn split(self, arms: &[(&str, u32)]) -> Svc {
        arms.iter().fold(self, |s, &(rev, percent)| {
            s.traffic(Target::new(rev, percent))
        })
    }

    /// Adds one arm to the default `traffic`.
    pub fn traffic(self, t: Target) -> Svc {
        Svc(self.0.push("traffic", t))
    }

    /// Adds a route to `routes`.
    pub fn route(self, r: Route) -> Svc {
        Svc(self.0.push("routes", r))
    }

    /// Adds a revision to `revisions`.
    pub fn revision(self, r: Rev) -> Svc {
        Svc(self.0.push("revisions", r))
    }

    /// Adds `rev` and sends 100 % of the default traffic to it.
    pub fn only(self, rev: Rev) -> Svc {
        let name = rev.name().to_owned();
        self.split(&[(&name, 100)]).revision(rev)
    }
}

node!(
    /// One entry of a service's `routes`.
    Route {
        /// `rewrite_host`: the Host matching requests are sent with.
        rewrite_host: &str,
    }
);

impl Route {
    /// A route matching the path prefix `path`.
    pub fn new(path: &str) -> Route {
        Route(Map::default().set("path", path))
    }

    /// Adds to `headers`: the route matches only requests carrying `name: value`.
    pub fn header(self, name: &str, value: &str) -> Route {
        Route(self.0.set_in("headers", name, value))
    }

    /// Adds to `set_headers`: `name: value` is set on matching requests.
    pub fn set_header(self, name: &str, value: &str) -> Route {
        Route(self.0.set_in("set_headers", name, value))
    }

    /// Sends 100 % of the route's traffic to revision `rev`.
    pub fn to(self, rev: &str) -> Route {
        self.traffic(Target::new(rev, 100))
    }

    /// Adds one arm to the route's `traffic`.
    pub fn traffic(self, t: Target) -> Route {
        Route(self.0.push("traffic", t))
    }
}

node!(
    /// One arm of a `traffic` split.
    Target {
        /// `tag`: the arm is reachable with `rouse-tag: <tag>`, whatever its percent.
        tag: &str,
    }
);

impl Target {
    /// `percent` of the split goes to revision `rev`.
    pub fn new(rev: &str, percent: u32) -> Target {
        Target(Map::default().set("revision", rev).set("percent", percent))
    }

    /// Adds to `set_headers`: `name: value` is set on requests this arm receives.
    pub fn set_header(self, name: &str, value: &str) -> Target {
        Target(self.0.set_in("set_headers", name, value))
    }
}

node!(
    /// A service's `timeouts`; each is off unless set.
    #[derive(Default)]
    Timeouts {
        /// `request`: arrival to the end of the response body.
        request: &str,
        /// `response_start`: arrival to the response headers.
        response_start: &str,
        /// `idle`: longest gap between response body pieces.
        idle: &str,
        /// `exempt_streams`: whether `request` stops applying once the response headers are sent.
        exempt_streams: bool,
    }
);

impl Timeouts {
    /// No limits yet.
    pub fn new() -> Timeouts {
        Timeouts::default()
    }
}

node!(
    /// One entry of a service's `revisions`.
    Rev {
        /// `protocol` spoken to the endpoints: `http1`, `h2c` or `auto`.
        protocol: &str,
        /// `queue`: bounds on requests held while no endpoint has room.
        queue: Queue,
        /// `scale`: endpoints started as processes and scaled by load.
        scale: Scale,
    }
);

impl Rev {
    /// A revision named `name`, with no endpoints yet.
    pub fn new(name: &str) -> Rev {
        Rev(Map::default().set("name", name))
    }

    /// The revision's name.
    pub fn name(&self) -> &str {
        self.0
            .0
            .get("name")
            .and_then(Value::as_str)
            .expect("a name")
    }

    /// `container_concurrency`: most requests one endpoint handles at once (0: no limit).
    pub fn cc(self, n: u32) -> Rev {
        Rev(self.0.set("container_concurrency", n))
    }

    /// Adds a static endpoint to `endpoints`.
    pub fn endpoint(self, addr: impl Display) -> Rev {
        Rev(self.0.push("endpoints", addr.to_string()))
    }

    /// `cold_start.placeholder`: answered at once while no endpoint is ready.
    pub fn placeholder(self, p: Placeholder) -> Rev {
        Rev(self.0.set_in("cold_start", "placeholder", p))
    }

    /// `cold_start.header`: whether responses that waited for a cold start are marked.
    pub fn cold_start_header(self, mark: bool) -> Rev {
        Rev(self.0.set_in("cold_start", "header", mark))
    }

    /// `grpc_port`: the backends also take gRPC there (0: one per process, from rouse).
    pub fn grpc_port(self, port: u16) -> Rev {
        Rev(self.0.set("grpc_port", port))
    }

    /// `cold_start.waiting_page`: browsers asking for a page while it starts get one that
    /// reloads itself.
    pub fn waiting_page(self, on: bool) -> Rev {
        Rev(self.0.set_in("cold_start", "waiting_page", on))
    }

    /// `tls`: connect to the endpoints over TLS, trusting the CA bundle `ca` and verifying
    /// `server_name` (default: the endpoint's IP address).
    pub fn tls(self, ca: &str, server_name: Option<&str>) -> Rev {
        let t = Map::default().set("ca", ca);
        let t = match server_name {
            Some(name) => t.set("server_name", name),
            None => t,
        };
        Rev(self.0.set("tls", t))
    }
}

node!(
    /// A revision's `queue`.
    #[derive(Default)]
    Queue {
        /// `max_requests`: held requests beyond this are refused (503 queue-full).
        max_requests: u64,
        /// `max_bytes`: declared body bytes of held requests beyond this are refused.
        max_bytes: u64,
        /// `max_wait`: longest hold before 503 queue-timeout.
        max_wait: &str,
        /// `target_wait`: under sustained overload, the longest predicted wait admitted.
        target_wait: &str,
    }
);

impl Queue {
    /// The default bounds, until some are set.
    pub fn new() -> Queue {
        Queue::default()
    }
}

node!(
    /// A revision's `scale`.
    Scale {
        /// `min`: fewest endpoints (0 allows scale to zero).
        min: u32,
        /// `max`: most endpoints.
        max: u32,
        /// `target`: concurrency per endpoint to aim for.
        target: f64,
        /// `idle_grace`: nothing active or held this long scales to `min`.
        idle_grace: &str,
        /// `stable_window`: the autoscaler's long averaging window.
        stable_window: &str,
        /// `tick`: interval between autoscaler decisions.
        tick: &str,
    }
);

impl Scale {
    /// Scaling that starts `process` for each endpoint.
    pub fn new(process: Process) -> Scale {
        Scale(Map::default().set("process", process))
    }
}

node!(
    /// `scale.process`: the command started for each endpoint.
    Process {
        /// `boot_timeout`: a process not ready by then is killed and counted as failed.
        boot_timeout: &str,
        /// `stop_grace`: time between SIGTERM and SIGKILL.
        stop_grace: &str,
        /// `cwd`: the folder the process starts in.
        cwd: &str,
    }
);

impl Process {
    /// Runs `command` (program, then arguments).
    pub fn new(command: &[&str]) -> Process {
        Process(Map::default().set("command", command))
    }

    /// Adds `key=value` to `env`.
    pub fn env(self, key: &str, value: &str) -> Process {
        Process(self.0.set_in("env", key, value))
    }

    /// `ready: { http_get: path }`: ready once `GET path` answers below 500.
    pub fn ready_http_get(self, path: &str) -> Process {
        Process(self.0.set_in("ready", "http_get", path))
    }
}

node!(
    /// `cold_start.placeholder`: a canned answer.
    Placeholder {}
);

impl Placeholder {
    /// Answers `status` with `body`.
    pub fn new(status: u16, body: &str) -> Placeholder {
        Placeholder(Map::default().set("status", status).set("body", body))
    }

    /// Adds `name: value` to its `headers`.
    pub fn header(self, name: &str, value: &str) -> Placeholder {
        Placeholder(self.0.set_in("headers", name, value))
    }
}

node!(
    /// `tls`: the HTTPS listener.
    TlsListener {
        /// `redirect_http`: answer every cleartext request with a 301 to HTTPS.
        redirect_http: bool,
        /// `redirect_port`: the port redirects name.
        redirect_port: u16,
        /// `handshake_timeout`: time allowed for a TLS handshake.
        handshake_timeout: &str,
    }
);

impl TlsListener {
    /// A listener on `127.0.0.1:0` with no certificates yet.
    pub fn new() -> TlsListener {
        TlsListener(Map::default().set("listen", "127.0.0.1:0"))
    }

    /// Adds a certificate to `certificates`.
    pub fn cert(self, c: Cert) -> TlsListener {
        TlsListener(self.0.push("certificates", c))
    }
}

node!(
    /// One entry of `tls.certificates`.
    Cert {}
);

impl Cert {
    /// The PEM chain in file `cert` with the PEM key in file `key`.
    pub fn new(cert: &str, key: &str) -> Cert {
        Cert(Map::default().set("cert", cert).set("key", key))
    }

    /// Adds an SNI name to its `hosts`.
    pub fn host(self, host: &str) -> Cert {
        Cert(self.0.push("hosts", host))
    }

    /// `default: true`: served when no certificate lists the SNI name, or there is none.
    pub fn default_for_unknown_names(self) -> Cert {
        Cert(self.0.set("default", true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::{Protocol, Ready};
    use std::time::Duration;

    #[test]
    fn a_minimal_config_renders_only_the_keys_it_sets() {
        let cfg = Cfg::single(Rev::new("r").endpoint("127.0.0.1:9"));
        assert_eq!(
            cfg.yaml(),
            "listen: 127.0.0.1:0\n\
             services:\n\
             - name: s\n  \
               hosts:\n  \
               - '*'\n  \
               traffic:\n  \
               - revision: r\n    \
                 percent: 100\n  \
               revisions:\n  \
               - name: r\n    \
                 endpoints:\n    \
                 - 127.0.0.1:9\n"
        );
        let c = cfg.parse();
        assert!(c.admin.is_none() && c.tls.is_none());
        let r = &c.services[0].revisions[0];
        assert_eq!((r.container_concurrency, r.queue.max_requests), (0, 1000));
        assert!(r.scale.is_none() && r.tls.is_none());
    }

    #[test]
    fn every_builder_key_reaches_the_parser() {
        let backend = Process::new(&["python3", "app.py", "{port}"])
            .env("MODE", "yes")
            .ready_http_get("/ready")
            .boot_timeout("500ms")
            .stop_grace("2s");
        let c = Cfg::new()
            .listen("127.0.0.1:8080")
            .admin_at("127.0.0.1:9901")
            .drain_timeout("10s")
            .watch_interval("50ms")
            .header_read_timeout("400ms")
            .pool_idle_timeout("30s")
            .connect_timeout("2s")
            .listen_internal("127.0.0.1:8081")
            .tls(
                TlsListener::new()
                    .redirect_http(true)
                    .redirect_port(443)
                    .cert(Cert::new("a.pem", "a.key").host("a.test"))
                    .cert(Cert::new("b.pem", "b.key").host("*.b.test")),
            )
            .service(
                Svc::new("s")
                    .host("*")
                    .visibility("cluster-local")
                    .redirect_to_https(true)
                    .route(
                        Route::new("/api")
                            .header("x-canary", "yes")
                            .set_header("x-v", "0")
                            .rewrite_host("inner.test")
                            .to("two"),
                    )
                    .timeouts(
                        Timeouts::new()
                            .request("1s")
                            .response_start("300ms")
                            .idle("200ms")
                            .exempt_streams(true),
                    )
                    .split(&[("one", 90)])
                    .traffic(Target::new("two", 10).tag("t").set_header("x-rev", "2"))
                    .revision(
                        Rev::new("one")
                            .cc(4)
                            .protocol("h2c")
                            .endpoint("127.0.0.1:1")
                            .endpoint("127.0.0.1:2")
                            .queue(
                                Queue::new()
                                    .max_requests(3)
                                    .max_bytes(100)
                                    .max_wait("400ms"),
                            )
                            .tls("ca.pem", Some("one.internal")),
                    )
                    .revision(
                        Rev::new("two")
                            .scale(
                                Scale::new(backend)
                                    .min(0)
                                    .max(3)
                                    .target(1.0)
                                    .idle_grace("1s")
                                    .stable_window("2s")
                                    .tick("200ms"),
                            )
                            .placeholder(
                                Placeholder::new(503, "warming up").header("retry-after", "2"),
                            ),
                    ),
            )
            .parse();
        let ms = Duration::from_millis;
        assert_eq!(c.listen.0.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.unwrap().0.to_string(), "127.0.0.1:9901");
        assert_eq!(
            (c.drain_timeout.0, c.watch_interval.0),
            (ms(10_000), ms(50))
        );
        assert_eq!(c.limits.header_read_timeout.0, ms(400));
        assert_eq!(c.upstream.pool_idle_timeout.0, ms(30_000));
        assert_eq!(c.upstream.connect_timeout.0, ms(2_000));
        assert_eq!(c.listen_internal.unwrap().0.to_string(), "127.0.0.1:8081");
        let tls = c.tls.unwrap();
        assert!(tls.redirect_http);
        assert_eq!(tls.redirect_port, Some(443));
        assert_eq!(tls.certificates[1].key, PathBuf::from("b.key"));
        assert_eq!(tls.certificates[1].hosts, ["*.b.test"]);

        let s = &c.services[0];
        assert_eq!(s.hosts, ["*"]);
        assert_eq!(s.visibility, rouse::config::Visibility::ClusterLocal);
        assert!(s.redirect_to_https);
        let route = &s.routes[0];
        assert_eq!(route.path, "/api");
        assert_eq!(route.rewrite_host.as_deref(), Some("inner.test"));
        assert_eq!(route.headers["x-canary"], "yes");
        assert_eq!(route.set_headers["x-v"], "0");
        assert_eq!(
            (route.traffic[0].revision.as_str(), route.traffic[0].percent),
            ("two", 100)
        );
        let t = &s.timeouts;
        assert_eq!(t.request.unwrap().0, ms(1000));
        assert_eq!(t.response_start.unwrap().0, ms(300));
        assert_eq!(t.idle.unwrap().0, ms(200));
        assert!(t.exempt_streams);
        assert_eq!(
            (s.traffic[0].revision.as_str(), s.traffic[0].percent),
            ("one", 90)
        );
        assert_eq!(s.traffic[1].tag.as_deref(), Some("t"));
        assert_eq!(s.traffic[1].set_headers["x-rev"], "2");

        let one = &s.revisions[0];
        assert_eq!(one.container_concurrency, 4);
        assert_eq!(one.protocol, Protocol::H2c);
        assert_eq!(one.endpoints.len(), 2);
        assert_eq!(one.endpoints[1].0.to_string(), "127.0.0.1:2");
        assert_eq!(
            (
                one.queue.max_requests,
                one.queue.max_bytes.0,
                one.queue.max_wait.0
            ),
            (3, 100, ms(400))
        );
        let up = one.tls.as_ref().unwrap();
        assert_eq!(up.ca, PathBuf::from("ca.pem"));
        assert_eq!(up.server_name.as_deref(), Some("one.internal"));

        let two = &s.revisions[1];
        let sc = two.scale.as_ref().unwrap();
        assert_eq!((sc.min, sc.max, sc.target), (0, 3, Some(1.0)));
        assert_eq!(
            (sc.idle_grace.0, sc.stable_window.0, sc.tick.0),
            (ms(1000), ms(2000), ms(200))
        );
        let p = sc.process.as_ref().unwrap();
        assert_eq!(p.command, ["python3", "app.py", "{port}"]);
        assert_eq!(p.env["MODE"], "yes");
        assert_eq!(p.ready, Ready::HttpGet("/ready".into()));
        assert_eq!((p.boot_timeout.0, p.stop_grace.0), (ms(500), ms(2000)));
        let ph = two.cold_start.placeholder.as_ref().unwrap();
        assert_eq!((ph.status, ph.body.as_str()), (503, "warming up"));
        assert_eq!(ph.headers["retry-after"], "2");
    }
}
