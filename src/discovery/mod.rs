//! Where a revision's endpoints come from: the static `endpoints` list of the config, applied
//! here; a scaler that owns the set (`scale.process`, see [`crate::scale`]), which publishes
//! endpoints as its backends become ready; or a Kubernetes Service's EndpointSlices (the
//! `kubernetes` feature), watched and fed in the same way. Every source uses the same two
//! calls on a revision, `set_endpoint_addrs` and `replace_endpoints`.

use crate::config::{self, Config};
use crate::revision::Revision;
use crate::revision::registry::Revised;
use crate::scale::scaler::MakeScaler;
use std::pin::Pin;
use std::sync::Arc;

/// Gives a revised revision its endpoints from `r`: the static list, or none while another
/// source (a scaler, a watch) takes over. Endpoints that stay keep their live state unless
/// their pools must change.
pub fn assign(revised: &Revised, r: &config::Revision) {
    let rev = &revised.revision;
    let autoscaled = r.scale.as_ref().is_some_and(config::Scale::runs_backends);
    if !autoscaled {
        // Nobody scales this revision: its queue is all the capacity it will get.
        rev.set_ceiling(0);
        rev.set_floor(0);
    }
    let owned_elsewhere = autoscaled || r.kubernetes.is_some();
    let was_owned = rev.set_managed(owned_elsewhere);
    if owned_elsewhere {
        if revised.kept && !was_owned {
            // Static until now: the new source starts from nothing and publishes its own.
            rev.set_endpoint_addrs(&[]);
            rev.set_desired(0);
        }
        return;
    }
    let addrs: Vec<_> = r.endpoints.iter().map(|a| a.0).collect();
    if revised.new_pools {
        // Connections must be made differently now: fresh endpoints, and requests already on
        // the old ones finish there.
        rev.replace_endpoints(&addrs);
    } else {
        rev.set_endpoint_addrs(&addrs);
    }
    rev.set_desired(u32::try_from(addrs.len()).unwrap_or(u32::MAX));
}

/// A source of endpoints outside the config file (Kubernetes), kept in step with the config
/// on every load.
pub trait Source: Send + Sync + std::fmt::Debug + 'static {
    /// Follows the revisions of `cfg` that this source serves, among the live `revisions`.
    fn sync<'a>(
        &'a self,
        cfg: &'a Config,
        revisions: &'a [Arc<Revision>],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

    /// Stops following (at shutdown).
    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Whether this source knows the endpoints it serves, and what it is missing.
    fn readiness(&self) -> Readiness;

    /// An admin page this source answers (`path` and its text), if any.
    fn page(&self, path: &str) -> Option<String> {
        let _ = path;
        None
    }

    /// The scaler maker for the backends this source also runs, if any.
    fn maker(self: Arc<Self>) -> Option<Arc<dyn MakeScaler>>;
}

/// What `/readyz` shows for a source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readiness {
    /// False until the source knows its endpoints.
    pub ready: bool,
    /// Problems, one line each, naming what is missing.
    pub notes: Vec<String>,
}

/// The outside sources a gateway was built with.
#[derive(Debug, Clone, Default)]
pub struct Outside {
    sources: Vec<Arc<dyn Source>>,
}

impl Outside {
    /// A gateway's outside sources.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Outside {
        Outside { sources }
    }

    /// The scaler makers of the sources that also run backends.
    pub fn makers(&self) -> Vec<Arc<dyn MakeScaler>> {
        self.sources
            .iter()
            .filter_map(|s| s.clone().maker())
            .collect()
    }

    /// Brings every source in step with `cfg`.
    pub async fn sync(&self, cfg: &Config, revisions: &[Arc<Revision>]) {
        for s in &self.sources {
            s.sync(cfg, revisions).await;
        }
    }

    /// Stops every source.
    pub async fn stop(&self) {
        for s in &self.sources {
            s.stop().await;
        }
    }

    /// The first source's answer for an admin `path`.
    pub fn page(&self, path: &str) -> Option<String> {
        self.sources.iter().find_map(|s| s.page(path))
    }

    /// Ready when every source is; the notes of all.
    pub fn readiness(&self) -> Readiness {
        let mut all = Readiness {
            ready: true,
            notes: Vec::new(),
        };
        for s in &self.sources {
            let r = s.readiness();
            all.ready &= r.ready;
            all.notes.extend(r.notes);
        }
        all
    }
}
