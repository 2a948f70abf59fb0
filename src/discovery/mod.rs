//! Where a revision's endpoints come from. Today: the static `endpoints` list of the config,
//! applied here, or a scaler that owns the set (`scale.process`, see [`crate::scale`]), which
//! publishes endpoints as its backends become ready. Kubernetes EndpointSlices are the next
//! source; each feeds the same two calls on a revision, `set_endpoint_addrs` and
//! `replace_endpoints`.

use crate::config;
use crate::revision::registry::Revised;

/// Gives a revised revision its endpoints from `r`: the static list, or none while a scaler
/// takes over. Endpoints that stay keep their live state unless their pools must change.
pub fn assign(revised: &Revised, r: &config::Revision) {
    let rev = &revised.revision;
    let scaled = r.scale.as_ref().is_some_and(|s| s.process.is_some());
    let was_scaled = rev.set_managed(scaled);
    if scaled {
        if revised.kept && !was_scaled {
            // Static until now: the scaler starts from zero and publishes its own endpoints.
            rev.set_endpoint_addrs(&[]);
            rev.set_desired(0);
        }
        return;
    }
    // Nobody scales a static revision: its queue is all the capacity it will get.
    rev.set_ceiling(0);
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
