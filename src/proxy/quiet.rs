//! Requests that are not demand (`no_wake`): health checks, bots and monitors that poll a
//! service would otherwise start its revisions at zero and keep them from ever scaling down.
//! Matched by a path prefix, a text in `User-Agent` or an exact header, such a request is
//! passed to a revision only when a slot is free at once, and then not counted as activity;
//! otherwise (the revision is cold, or every endpoint busy) it gets the configured answer,
//! without poking the autoscaler and without waiting.

use crate::config;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, USER_AGENT};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;

/// A service's `no_wake` matches, its answer and its counters.
#[derive(Debug)]
pub struct Quiet {
    paths: Box<[Box<str>]>,
    /// Lower-cased.
    agents: Box<[Box<str>]>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// What a matched request gets when no slot is free.
    pub answer: Arc<config::Placeholder>,
    /// Matched requests answered with `answer`.
    pub answered: Counter,
    /// Matched requests passed to a free slot.
    pub passed: Counter,
}

impl Quiet {
    /// The runtime form of `n` (validated), counting into `[answered, passed]`.
    pub fn new(n: &config::NoWake, [answered, passed]: [Counter; 2]) -> Quiet {
        Quiet {
            paths: n.paths.iter().map(|p| p.as_str().into()).collect(),
            agents: n
                .user_agents
                .iter()
                .map(|a| a.to_ascii_lowercase().into())
                .collect(),
            headers: n
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            answer: Arc::new(n.answer.clone()),
            answered,
            passed,
        }
    }

    /// True for a request that is not demand.
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        self.paths.iter().any(|p| path.starts_with(&**p))
            || self
                .headers
                .iter()
                .any(|(k, v)| headers.get_all(k).iter().any(|x| x == v))
            || (!self.agents.is_empty()
                && headers
                    .get(USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ua| {
                        let ua = ua.to_ascii_lowercase();
                        self.agents.iter().any(|a| ua.contains(&**a))
                    }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_of_path_agent_or_header_matches() {
        let n: config::NoWake = serde_norway::from_str(
            "{ paths: [/healthz], user_agents: [GoogleBot, kube-probe], headers: { x-monitor: '1' } }",
        )
        .unwrap();
        let q = Quiet::new(&n, Default::default());
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert!(q.matches("/healthz/deep", &h(&[])));
        assert!(q.matches(
            "/",
            &h(&[("user-agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")])
        ));
        assert!(q.matches("/", &h(&[("user-agent", "kube-probe/1.30")])));
        assert!(q.matches("/", &h(&[("x-monitor", "1")])));
        assert!(!q.matches("/", &h(&[("x-monitor", "2")])));
        assert!(!q.matches("/health", &h(&[("user-agent", "curl/8")])));
        assert_eq!(n.answer.status, 503);
        assert_eq!(n.answer.body, "asleep\n");
    }
}
