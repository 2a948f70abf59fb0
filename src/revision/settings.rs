//! What a revision is (its identity) and the settings a reload can change in place, built from
//! the config.

use super::queue::QueueLimits;
use crate::config::{self, Protocol};
use crate::http::client::PoolSettings;
use crate::http::tls::{Connector, TlsError};
use std::sync::Arc;
use std::time::Duration;

/// What identifies a revision: a reload with the same identity updates the live revision in
/// place (settings, endpoints) instead of replacing it, so in-flight counts, the queue and
/// wake-ups stay in one place.
#[derive(Debug, Clone)]
pub struct RevisionSpec {
    /// Owning service's name.
    pub service: Arc<str>,
    /// The revision's name.
    pub name: Arc<str>,
    /// Protocol spoken to endpoints.
    pub protocol: Protocol,
    /// Everything a reload may change.
    pub settings: RevisionSettings,
}

/// The settings of a revision that a reload can change in place.
#[derive(Debug, Clone)]
pub struct RevisionSettings {
    /// Per-endpoint limit; 0 = unlimited.
    pub container_concurrency: u32,
    /// Queue bounds.
    pub limits: QueueLimits,
    /// How long to avoid an endpoint that refused a connection.
    pub eject_for: Duration,
    /// Connection pool settings for new endpoints.
    pub pool: PoolSettings,
    /// Cold-start behaviour.
    pub cold_start: ColdStart,
    /// The Knative Revision (namespace, name) whose demand is reported to Knative's
    /// autoscaler.
    pub knative: Option<Arc<(String, String)>>,
    /// The backends' gRPC port (`grpc_port`): 0 when each backend is given its own (processes
    /// given two ports, pods with `kubernetes.grpc_port`).
    pub grpc_port: Option<u16>,
}

/// What requests see while a revision is cold.
#[derive(Debug, Clone, Default)]
pub struct ColdStart {
    /// Answer at once with this instead of holding.
    pub placeholder: Option<Arc<config::Placeholder>>,
    /// Mark responses that waited with `rouse-cold-start: true`.
    pub header: bool,
    /// The page a browser gets while the revision starts, made once per config.
    pub waiting_page: Option<bytes::Bytes>,
}

impl RevisionSettings {
    /// A revision's settings from the config. The only step of a reload that can fail
    /// (loading an upstream CA bundle), so callers run it for every revision before they
    /// change any live one.
    pub fn from_config(
        upstream: &config::Upstream,
        r: &config::Revision,
    ) -> Result<RevisionSettings, TlsError> {
        Ok(RevisionSettings {
            container_concurrency: r.container_concurrency,
            limits: QueueLimits::from(&r.queue),
            eject_for: upstream.eject_after_connect_error.0,
            pool: PoolSettings {
                max_idle: if r.container_concurrency > 0 {
                    r.container_concurrency as usize
                } else {
                    upstream.max_idle_per_endpoint
                },
                idle_timeout: upstream.pool_idle_timeout.0,
                connect_timeout: upstream.connect_timeout.0,
                tls: r
                    .tls
                    .as_ref()
                    .map(|t| Connector::new(t, r.protocol == Protocol::H2c))
                    .transpose()?
                    .map(Arc::new),
            },
            cold_start: ColdStart {
                placeholder: r.cold_start.placeholder.clone().map(Arc::new),
                header: r.cold_start.header,
                waiting_page: r
                    .cold_start
                    .waiting_page
                    .then(|| crate::http::waiting::page(&r.name)),
            },
            // A Service's pods: each endpoint's gRPC address comes with it from the slices.
            grpc_port: match r.kubernetes.as_ref().and_then(|k| k.grpc_port.as_ref()) {
                Some(_) => Some(0),
                None => r.grpc_port,
            },
            knative: r
                .kubernetes
                .as_ref()
                .and_then(|k| k.knative_revision.as_deref()?.split_once('/'))
                .map(|(ns, name)| Arc::new((ns.to_owned(), name.to_owned()))),
        })
    }
}
