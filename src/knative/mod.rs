//! Knative Serving's contracts, reproduced so rouse can stand in for its components: the
//! probe and routing [`headers`], the autoscaler's [`stat`], the queue-proxy's environment
//! ([`env`]) and readiness probe JSON ([`probe_json`]), the queue-proxy [`front`] that answers
//! probes before traffic reaches the shared request path, and the traffic-driven [`drain`];
//! for the activator, its [`activator`] front and (with Kubernetes) the stats link to the
//! autoscaler.

pub mod activator;
#[cfg(feature = "kubernetes")]
pub mod autoscaler;
pub mod drain;
pub mod env;
pub mod front;
pub mod headers;
pub mod probe_json;
pub mod stat;
