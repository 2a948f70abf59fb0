//! rouse: a concurrency-aware reverse proxy and activator for request-driven, scale-to-zero
//! workloads.
//!
//! The crate is a set of shared blocks — [`server`], [`upstream`], [`router`], [`split`],
//! [`balance`], [`revision`] (endpoint slots and the bounded wait queue), [`stats`], [`autoscaler`],
//! [`scaler`], [`metrics`], [`error`], plus Knative's contracts ([`knative`], [`probe`], [`queue`],
//! [`drain`]) — that the [`roles`] compose. See `docs/architecture.md` for the request flow.

pub mod admin;
pub mod autoscaler;
pub mod balance;
pub mod body;
pub mod clock;
pub mod config;
pub mod drain;
pub mod error;
pub mod headers;
pub mod knative;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod revision;
pub mod roles;
pub mod router;
pub mod scaler;
pub mod server;
pub mod split;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upstream;
