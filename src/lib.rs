//! rouse: a concurrency-aware reverse proxy and activator for request-driven, scale-to-zero
//! workloads.
//!
//! The crate is a set of shared blocks that the [`roles`] compose, one folder per concern:
//! [`http`] (the wire: listener, TLS, client, body, headers, tunnels), [`proxy`] (the request
//! path: route, split, forward), [`revision`] (endpoints, slots, the bounded queue, phases),
//! [`scale`] (the autoscaler and the scalers), [`discovery`] (where endpoints come from),
//! [`knative`] (Knative's wire contracts), `kubernetes` (EndpointSlices, workload scaling and
//! leader election, behind the `kubernetes` feature), [`config`], [`admin`], and the small shared pieces
//! [`error`], [`metrics`], [`probe`], [`clock`] and [`workers`] (the threads that serve
//! client connections). No module imports one that imports it back
//! (a test checks). See `docs/architecture.md` for the map and the request flow.

pub mod admin;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod error;
pub mod http;
pub mod knative;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod metrics;
pub mod observe;
pub mod probe;
pub mod proxy;
pub mod revision;
pub mod roles;
pub mod scale;
pub mod workers;
