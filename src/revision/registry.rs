//! Revisions kept across reloads. A revision of a new config whose identity (service, name and
//! protocol) is already live is the same object, with its settings updated in place: its
//! in-flight counts, queue, pools and endpoints carry over, so a reload disturbs no request
//! already running. Whoever builds a new snapshot (the route table today, a Kubernetes watcher
//! next) resolves its revisions here; endpoints are set by their source afterwards.

use super::Revision;
use super::settings::RevisionSpec;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::Arc;

/// The live revisions a new snapshot may keep.
#[derive(Debug)]
pub struct Registry<'a> {
    live: HashMap<(&'a str, &'a str), &'a Arc<Revision>>,
    metrics: &'a Arc<Metrics>,
}

/// A revision of the new snapshot, and how it relates to the live one.
#[derive(Debug)]
pub struct Revised {
    /// The revision to route to.
    pub revision: Arc<Revision>,
    /// The live revision was kept (updated in place).
    pub kept: bool,
    /// Its connections must now be made differently (TLS, timeouts): endpoints that stay need
    /// fresh pools.
    pub new_pools: bool,
}

impl<'a> Registry<'a> {
    /// A registry over the revisions live now (none at start).
    pub fn new(live: &'a [Arc<Revision>], metrics: &'a Arc<Metrics>) -> Registry<'a> {
        Registry {
            live: live.iter().map(|r| ((&*r.service, &*r.name), r)).collect(),
            metrics,
        }
    }

    /// The revision for `spec`: the live one with the same identity, its settings replaced, or
    /// a new one without endpoints.
    pub fn revise(&self, spec: RevisionSpec) -> Revised {
        if let Some(old) = self.live.get(&(&*spec.service, &*spec.name))
            && old.protocol == spec.protocol
        {
            let new_pools = old.settings().pool.differs(&spec.settings.pool);
            old.update(spec.settings);
            return Revised {
                revision: Arc::clone(old),
                kept: true,
                new_pools,
            };
        }
        Revised {
            revision: Arc::new(Revision::new(spec, Vec::new(), self.metrics)),
            kept: false,
            new_pools: false,
        }
    }
}
