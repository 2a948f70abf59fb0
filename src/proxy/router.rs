//! The route table: an immutable snapshot built from a validated config and swapped whole
//! (`ArcSwap`) on reload, so the request path reads it without locks.
//!
//! Lookup order: host (exact, case-insensitive, port stripped; `*` as fallback), then the
//! service's routes by longest path prefix (ties in file order, header matches ANDed), then the
//! service's default traffic. Within the matched route a `rouse-tag` header selects a tagged
//! arm; otherwise the split picks one.

use super::quiet::Quiet;
use super::rollout::{self, Rollout};
use super::split::Split;
use super::sticky::{self, Pin, Sticky};
use crate::config::{self, Config};
use crate::discovery;
use crate::http::headers::strip_port_bytes;
use crate::http::tls::TlsError;
use crate::http::upstream::Outgoing;
use crate::metrics::Metrics;
use crate::revision::Revision;
use crate::revision::registry::Registry;
use crate::revision::settings::{RevisionSettings, RevisionSpec};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Header that selects a tagged arm of the matched route.
pub const TAG_HEADER: HeaderName = HeaderName::from_static("rouse-tag");

type Headers = Box<[(HeaderName, HeaderValue)]>;

/// What a route's header match reads of a request: whether a field has a value.
pub trait Fields {
    /// True when one of the values of the field `name` is `value`.
    fn has(&self, name: &HeaderName, value: &HeaderValue) -> bool;
}

impl Fields for HeaderMap {
    fn has(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        self.get_all(name).iter().any(|x| x == value)
    }
}

/// A request as the proxy carries it: the fields in its map, and those kept as the client
/// wrote them, if any.
impl Fields for Outgoing {
    fn has(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        self.headers().has(name, value) || self.fields.as_ref().is_some_and(|f| f.has(name, value))
    }
}

/// One arm of a split.
#[derive(Debug)]
pub struct Arm {
    /// Where requests go.
    pub revision: Arc<Revision>,
    /// Headers set on requests sent through this arm.
    pub set_headers: Headers,
    tag: Option<Box<str>>,
    /// Its share of the split, in percent.
    pub percent: u32,
    /// What a sticky cookie that pins a client to its revision holds.
    pub token: Box<str>,
}

impl Arm {
    /// The tag that selects this arm, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

/// A route: match conditions plus a split.
#[derive(Debug)]
pub struct Route {
    path: Box<str>,
    headers: Headers,
    /// Headers set on every matching request.
    pub set_headers: Headers,
    /// Replaces the request's host.
    pub rewrite_host: Option<HeaderValue>,
    arms: Box<[Arm]>,
    /// Some arm has a tag.
    tagged: bool,
    split: Split,
    /// A gradual rollout moving this (default) route's split.
    rollout: Option<Arc<Rollout>>,
}

impl Route {
    fn matches<F: Fields + ?Sized>(&self, path: &str, fields: &F) -> bool {
        path.starts_with(&*self.path) && self.headers.iter().all(|(k, v)| fields.has(k, v))
    }

    /// Every arm, in the config's order.
    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The path prefix it matches.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The headers a request must carry to match.
    pub fn match_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The arm a `rouse-tag` header names, if any.
    fn tagged_arm(&self, headers: &HeaderMap) -> Option<&Arm> {
        // Most routes have no tags; they skip the header lookup.
        if !self.tagged {
            return None;
        }
        let tag = headers.get(&TAG_HEADER)?;
        self.arms.iter().find(|a| {
            a.tag
                .as_deref()
                .is_some_and(|t| t.as_bytes() == tag.as_bytes())
        })
    }

    /// The arm for a request: by `rouse-tag` if it names one, else by weighted choice.
    pub fn pick(&self, headers: &HeaderMap) -> &Arm {
        if let Some(arm) = self.tagged_arm(headers) {
            return arm;
        }
        // Validation guarantees a non-empty split summing to 100.
        match &self.rollout {
            None => &self.arms[self.split.pick().unwrap_or(0)],
            Some(r) => &self.arms[r.split().pick().unwrap_or(0)],
        }
    }

    /// The gradual rollout moving this route's split, if any.
    pub fn rollout(&self) -> Option<&Arc<Rollout>> {
        self.rollout.as_ref()
    }

    /// Each arm's share now, in arm order (a rollout's, while one moves the split).
    pub fn shares(&self) -> Vec<u32> {
        match &self.rollout {
            None => self.arms.iter().map(|a| a.percent).collect(),
            Some(r) => r.current(),
        }
    }

    /// The arm for a request of a service that pins its clients: by `rouse-tag`, else by the
    /// client's pin if it names an arm still in the split, else by weighted choice, with the
    /// `Set-Cookie` that pins the client to it when pins are cookies.
    pub fn pick_for(&self, headers: &HeaderMap, sticky: &Sticky) -> (&Arm, Option<HeaderValue>) {
        if let Some(arm) = self.tagged_arm(headers) {
            return (arm, None);
        }
        let guard = self.rollout.as_ref().map(|r| r.split());
        let split: &Split = guard.as_deref().map_or(&self.split, |s| s);
        let total = split.total();
        match &sticky.pin {
            Pin::Header(name) => match headers.get(name) {
                Some(v) if total > 0 => {
                    sticky.pinned.inc();
                    let roll =
                        u32::try_from(sticky::hash(v.as_bytes()) % u64::from(total)).unwrap_or(0);
                    (&self.arms[split.pick_with(roll)], None)
                }
                _ => {
                    sticky.new.inc();
                    (&self.arms[split.pick().unwrap_or(0)], None)
                }
            },
            Pin::Cookie { name, .. } => {
                let held = sticky::cookie(headers, name);
                if let Some(t) = held {
                    match self.arms.iter().enumerate().find(|(_, a)| *a.token == *t) {
                        Some((i, arm)) if split.weight_of(i) > 0 => {
                            sticky.pinned.inc();
                            return (arm, None);
                        }
                        // Its revision has left this split: replaced below.
                        Some(_) => {}
                        // A pin to a revision of another of the service's routes: kept for
                        // there; this route splits by its own shares and leaves the cookie.
                        None if sticky.knows(t) => {
                            sticky.pinned.inc();
                            return (&self.arms[split.pick().unwrap_or(0)], None);
                        }
                        None => {}
                    }
                }
                match held {
                    Some(_) => sticky.replaced.inc(),
                    None => sticky.new.inc(),
                };
                let arm = &self.arms[split.pick().unwrap_or(0)];
                (arm, sticky.set_cookie(&arm.token))
            }
        }
    }
}

/// Per-request time limits of a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// Total.
    pub request: Option<Duration>,
    /// Until response headers.
    pub response_start: Option<Duration>,
    /// Between body frames.
    pub idle: Option<Duration>,
    /// `request` stops applying once response headers are sent.
    pub exempt_streams: bool,
}

/// A service: routes (longest prefix first) and its default route.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: Arc<str>,
    routes: Box<[Route]>,
    /// `None`: requests no route matches get 404.
    default: Option<Route>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Served on the cluster-local listener only.
    cluster_local: bool,
    /// Cleartext requests get a 301 to HTTPS.
    pub redirect_to_https: bool,
    /// Clients keep the revision they first got.
    pub sticky: Option<Sticky>,
    /// Requests that are not demand.
    pub quiet: Option<Quiet>,
    /// Its routing reads or edits a request's fields other than its host (see
    /// [`Service::reads_fields`]).
    reads_fields: bool,
}

impl Service {
    /// True when routing a request to this service reads its fields other than the host in
    /// ways that need them in the map: a route that rewrites the host, an arm chosen by tag, a
    /// sticky pin, requests that are not demand (matched by their fields). Such a request has
    /// its fields in its map before it is routed. (A route's header match reads fields kept
    /// as written too, [`Fields`], and a field a route or an arm sets replaces one the client
    /// sent, `Outgoing::set_field`.)
    pub fn reads_fields(&self) -> bool {
        self.reads_fields
    }

    /// The first route that matches, else the default.
    pub fn route<F: Fields + ?Sized>(&self, path: &str, fields: &F) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matches(path, fields))
            .or(self.default.as_ref())
    }

    /// Its routes, in the order they are tried (longest prefix first).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route of requests no other route matches; `None` when they get 404.
    pub fn default_route(&self) -> Option<&Route> {
        self.default.as_ref()
    }
}

/// A host name of the table, found by the bytes of a request's host: a request's host is
/// looked up as it came, without being checked as text again (each check read every byte).
/// Hashed and compared as those bytes, so that a lookup by `[u8]` finds it.
#[derive(Debug, PartialEq, Eq)]
struct HostKey(Box<str>);

impl std::hash::Hash for HostKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for HostKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The whole snapshot.
#[derive(Debug)]
pub struct RouteTable {
    /// Looked up for every request: hashed with foldhash rather than SipHash, which cost a
    /// few hundred instructions for a short name. The keys come from configuration, so no
    /// client can choose what collides.
    hosts: HashMap<HostKey, usize, foldhash::fast::RandomState>,
    wildcard: Option<usize>,
    services: Box<[Service]>,
    revisions: Vec<Arc<Revision>>,
    rollouts: Vec<Arc<Rollout>>,
}

impl RouteTable {
    /// Builds the table. A revision present in `previous` with the same service, name and
    /// protocol is the same live object, updated in place: its in-flight counts, queue, pools
    /// and endpoints carry over, so a reload disturbs no request already running.
    pub fn build(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, TlsError> {
        let mut hosts = HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut wildcard = None;
        let mut services = Vec::with_capacity(cfg.services.len());
        let mut all = Vec::new();
        let mut rollouts = Vec::new();
        let registry = Registry::new(previous.map_or(&[], |p| &p.revisions), metrics);
        // Everything fallible first: a reload that fails must not have changed any live
        // revision (they are updated in place below).
        let mut settings = cfg
            .services
            .iter()
            .flat_map(|s| &s.revisions)
            .map(|r| RevisionSettings::from_config(&cfg.upstream, r))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        for (si, s) in cfg.services.iter().enumerate() {
            for h in &s.hosts {
                let h = h.trim().to_ascii_lowercase();
                if h == "*" {
                    wildcard.get_or_insert(si);
                } else {
                    hosts.entry(HostKey(h.into_boxed_str())).or_insert(si);
                }
            }
            let name: Arc<str> = s.name.as_str().into();
            let mut revs: HashMap<&str, Arc<Revision>> = HashMap::new();
            for r in &s.revisions {
                let rs = settings
                    .next()
                    .expect("one settings entry was built per revision, in this order");
                let revised = registry.revise(RevisionSpec {
                    service: name.clone(),
                    name: r.name.as_str().into(),
                    protocol: r.protocol,
                    settings: rs,
                });
                discovery::assign(&revised, r);
                let rev = revised.revision;
                all.push(rev.clone());
                revs.insert(&r.name, rev);
            }
            let route = |path: &str,
                         match_headers: &BTreeMap<String, String>,
                         set: &BTreeMap<String, String>,
                         rewrite_host: Option<&str>,
                         traffic: &[config::Target]| Route {
                path: path.into(),
                headers: header_list(match_headers),
                set_headers: header_list(set),
                // Validation has checked it.
                rewrite_host: rewrite_host.and_then(|h| HeaderValue::from_str(h).ok()),
                arms: traffic
                    .iter()
                    .map(|t| Arm {
                        revision: revs[t.revision.as_str()].clone(),
                        set_headers: header_list(&t.set_headers),
                        tag: t.tag.as_deref().map(Into::into),
                        percent: t.percent,
                        token: sticky::token(&t.revision),
                    })
                    .collect(),
                tagged: traffic.iter().any(|t| t.tag.is_some()),
                split: Split::new(traffic.iter().map(|t| t.percent)),
                rollout: None,
            };
            let mut routes: Vec<Route> = s
                .routes
                .iter()
                .map(|r| {
                    route(
                        &r.path,
                        &r.headers,
                        &r.set_headers,
                        r.rewrite_host.as_deref(),
                        &r.traffic,
                    )
                })
                .collect();
            // Stable sort: equal prefixes keep file order.
            routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
            let empty = BTreeMap::new();
            let mut default =
                (!s.traffic.is_empty()).then(|| route("/", &empty, &empty, None, &s.traffic));
            if let (Some(d), Some(ro)) = (&mut default, &s.rollout)
                && let Some(to) = s.traffic.iter().position(|t| t.revision == ro.to)
            {
                let spec = rollout::Spec {
                    service: name.clone(),
                    from: s.traffic.iter().map(|t| t.percent).collect(),
                    to,
                    over: ro.over.0,
                    steps: ro.steps,
                };
                let revision = d.arms[to].revision.clone();
                // The same rollout of the same revision goes on across a reload.
                let kept = previous.and_then(|p| {
                    p.rollouts
                        .iter()
                        .find(|r| r.spec == spec && Arc::ptr_eq(&r.revision, &revision))
                        .cloned()
                });
                let r = kept.unwrap_or_else(|| Rollout::start(spec, revision));
                rollouts.push(r.clone());
                d.rollout = Some(r);
            }
            let reads_fields = s.sticky.is_some()
                || s.no_wake.is_some()
                || routes
                    .iter()
                    .chain(&default)
                    .any(|r| r.rewrite_host.is_some() || r.tagged);
            services.push(Service {
                name: name.clone(),
                reads_fields,
                default,
                routes: routes.into(),
                cluster_local: s.visibility == config::Visibility::ClusterLocal,
                redirect_to_https: s.redirect_to_https,
                sticky: s.sticky.as_ref().and_then(|k| {
                    let counters = metrics.sticky(&s.name);
                    match (&k.cookie, &k.header) {
                        (Some(c), _) => Some(
                            Sticky::cookie(c, k.max_age.map(|d| d.0), counters)
                                .knowing(service_tokens(s)),
                        ),
                        // Validation has checked the name.
                        (None, Some(h)) => HeaderName::from_bytes(h.as_bytes())
                            .ok()
                            .map(|h| Sticky::header(h, counters)),
                        (None, None) => None,
                    }
                }),
                quiet: s
                    .no_wake
                    .as_ref()
                    .map(|n| Quiet::new(n, metrics.no_wake(&s.name))),
                timeouts: Timeouts {
                    request: s.timeouts.request.map(|d| d.0),
                    response_start: s.timeouts.response_start.map(|d| d.0),
                    idle: s.timeouts.idle.map(|d| d.0),
                    exempt_streams: s.timeouts.exempt_streams,
                },
            });
        }
        Ok(RouteTable {
            hosts,
            wildcard,
            services: services.into(),
            revisions: all,
            rollouts,
        })
    }

    /// The service for a Host or `:authority` value (port and case ignored), as a listener
    /// sees it: only the cluster-local listener (`internal`) sees cluster-local services.
    pub fn service(&self, host: impl AsRef<[u8]>, internal: bool) -> Option<&Service> {
        let h = strip_port_bytes(host.as_ref());
        let i = if h.iter().any(u8::is_ascii_uppercase) {
            self.hosts.get(h.to_ascii_lowercase().as_slice())
        } else {
            self.hosts.get(h)
        };
        let visible = |i: &usize| internal || !self.services[*i].cluster_local;
        i.copied()
            .filter(visible)
            .or(self.wildcard.filter(visible))
            .map(|i| &self.services[i])
    }

    /// Every revision in the table.
    pub fn revisions(&self) -> &[Arc<Revision>] {
        &self.revisions
    }

    /// Every gradual rollout going on.
    pub fn rollouts(&self) -> &[Arc<Rollout>] {
        &self.rollouts
    }

    /// Every service, in the config's order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The hosts that lead to the `i`th service, sorted, `*` last when it is the fallback.
    pub fn hosts_of(&self, i: usize) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .hosts
            .iter()
            .filter(|(_, s)| **s == i)
            .map(|(h, _)| &*h.0)
            .collect();
        out.sort_unstable();
        if self.wildcard == Some(i) {
            out.push("*");
        }
        out
    }
}

/// The pins a service's clients may hold: the revisions with a share in any of its splits,
/// and the one a rollout moves to.
fn service_tokens(s: &config::Service) -> Vec<Box<str>> {
    let shared = s
        .routes
        .iter()
        .flat_map(|r| &r.traffic)
        .chain(&s.traffic)
        .filter(|t| t.percent > 0)
        .map(|t| t.revision.as_str());
    let mut out: Vec<Box<str>> = shared
        .chain(s.rollout.as_ref().map(|r| r.to.as_str()))
        .map(sticky::token)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn header_list(m: &BTreeMap<String, String>) -> Headers {
    // Validation has checked every name and value.
    m.iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
listen: "127.0.0.1:0"
services:
  - name: a
    hosts: ["A.example", "*"]
    routes:
      - path: /api
        traffic: [{ revision: two, percent: 100 }]
      - path: /api/v1
        headers: { x-canary: "yes" }
        traffic: [{ revision: three, percent: 100 }]
      - path: /api/v1
        traffic: [{ revision: one, percent: 100 }]
    traffic:
      - { revision: one, percent: 100 }
      - { revision: three, percent: 0, tag: next }
    revisions:
      - { name: one, endpoints: ["127.0.0.1:1"] }
      - { name: two, endpoints: ["127.0.0.1:2"] }
      - { name: three, endpoints: ["127.0.0.1:3"] }
"#;

    fn pick<'a>(t: &'a RouteTable, host: &str, path: &str, h: &[(&str, &str)]) -> &'a str {
        let mut hm = HeaderMap::new();
        for (k, v) in h {
            hm.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        &t.service(host, false)
            .unwrap()
            .route(path, &hm)
            .unwrap()
            .pick(&hm)
            .revision
            .name
    }

    #[test]
    fn precedence_longest_prefix_then_headers_then_default() {
        let cfg = Config::parse(YAML).unwrap();
        let t = RouteTable::build(&cfg, &Arc::new(Metrics::new()), None).unwrap();
        assert_eq!(pick(&t, "a.EXAMPLE:8080", "/", &[]), "one");
        assert_eq!(pick(&t, "a.example", "/api/x", &[]), "two");
        assert_eq!(
            pick(&t, "a.example", "/api/v1/x", &[("x-canary", "yes")]),
            "three"
        );
        assert_eq!(
            pick(&t, "a.example", "/api/v1/x", &[("x-canary", "no")]),
            "one"
        );
        assert_eq!(pick(&t, "other", "/", &[("rouse-tag", "next")]), "three");
        assert_eq!(pick(&t, "other", "/", &[("rouse-tag", "nope")]), "one");
    }

    #[test]
    fn a_host_is_found_by_its_bytes_in_any_case_without_its_port() {
        let yaml = YAML.replace(
            r#"hosts: ["A.example", "*"]"#,
            r#"hosts: ["A.example", "[::1]"]"#,
        );
        let t = RouteTable::build(
            &Config::parse(&yaml).unwrap(),
            &Arc::new(Metrics::new()),
            None,
        )
        .unwrap();
        let name = |host: &[u8]| t.service(host, false).map(|s| s.name.to_string());
        // Found in any case, with or without a port; not found: a port that is not digits, a
        // second colon, another name, a byte past ASCII (a host value may hold one; it
        // matches no configured name and breaks nothing), nothing.
        for (host, want) in [
            (&b"a.example"[..], Some("a")),
            (b"A.Example", Some("a")),
            (b"a.example:8080", Some("a")),
            (b"A.EXAMPLE:80", Some("a")),
            (b"[::1]", Some("a")),
            (b"[::1]:8443", Some("a")),
            (b"a.example:x", None),
            (b"a.example:80:80", None),
            (b"b.example", None),
            (b"a.exampl\xe9", None),
            (b"", None),
        ] {
            assert_eq!(name(host).as_deref(), want, "{:?}", host.escape_ascii());
        }
    }

    #[test]
    fn reload_updates_revisions_in_place() {
        let cfg = Config::parse(YAML).unwrap();
        let m = Arc::new(Metrics::new());
        let t1 = RouteTable::build(&cfg, &m, None).unwrap();
        let kept = t1.revisions[0].endpoints()[0].clone();
        let changed = YAML
            .replace("127.0.0.1:3", "127.0.0.1:4")
            .replace("{ name: one,", "{ name: one, container_concurrency: 3,");
        let t2 = RouteTable::build(&Config::parse(&changed).unwrap(), &m, Some(&t1)).unwrap();
        assert!(Arc::ptr_eq(&t1.revisions[0], &t2.revisions[0]));
        assert!(Arc::ptr_eq(&t1.revisions[2], &t2.revisions[2]));
        assert_eq!(t2.revisions[0].settings().container_concurrency, 3);
        // Unchanged endpoints keep their live state; changed ones are replaced.
        assert!(Arc::ptr_eq(&kept, &t2.revisions[0].endpoints()[0]));
        assert_eq!(t2.revisions[2].endpoints()[0].addr.port(), 4);
        // A pool setting change gives fresh endpoints (new connections), same revision.
        let slower = changed.replace("listen:", "upstream: { pool_idle_timeout: 9s }\nlisten:");
        let t2b = RouteTable::build(&Config::parse(&slower).unwrap(), &m, Some(&t2)).unwrap();
        assert!(Arc::ptr_eq(&t2.revisions[0], &t2b.revisions[0]));
        assert!(!Arc::ptr_eq(&kept, &t2b.revisions[0].endpoints()[0]));
        // A reload that fails (an unreadable CA on the last revision) changes nothing live.
        let broken = changed
            .replace(
                "{ name: one, container_concurrency: 3,",
                "{ name: one, container_concurrency: 7,",
            )
            .replace(
                "{ name: three,",
                "{ name: three, tls: { ca: /nonexistent/ca.pem },",
            );
        assert!(RouteTable::build(&Config::parse(&broken).unwrap(), &m, Some(&t2b)).is_err());
        assert_eq!(t2b.revisions[0].settings().container_concurrency, 3);
        let h2 = YAML.replace("{ name: two,", "{ name: two, protocol: h2c,");
        let t3 = RouteTable::build(&Config::parse(&h2).unwrap(), &m, Some(&t2)).unwrap();
        assert!(
            !Arc::ptr_eq(&t2.revisions[1], &t3.revisions[1]),
            "new protocol, new revision"
        );
    }
}
