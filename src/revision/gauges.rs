//! A revision's live gauges (in flight, held, endpoints, desired scale, per-endpoint in
//! flight), read from its atomics at scrape time rather than stored, so a revision removed by a
//! reload disappears from `/metrics` with the config that held it.

use super::Revision;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

/// The revisions whose gauges are exported: whoever owns the current set publishes it here.
#[derive(Debug, Clone)]
pub struct LiveRevisions(Arc<ArcSwap<Vec<Arc<Revision>>>>);

impl LiveRevisions {
    /// Registers the gauges in `metrics`; they report nothing until a set is published.
    pub fn register(metrics: &Metrics) -> LiveRevisions {
        let live = LiveRevisions(Arc::new(ArcSwap::from_pointee(Vec::new())));
        metrics.add_collector(Box::new(LiveCollector(live.0.clone())));
        live
    }

    /// Replaces the set of revisions whose live gauges are exported.
    pub fn publish(&self, revisions: Vec<Arc<Revision>>) {
        self.0.store(Arc::new(revisions));
    }
}

/// Exports the live gauges by reading revision state at scrape time.
#[derive(Debug)]
struct LiveCollector(Arc<ArcSwap<Vec<Arc<Revision>>>>);

/// Encodes one gauge family with a sample per revision, labelled by service and revision.
fn revision_gauge(
    encoder: &mut DescriptorEncoder,
    revs: &[Arc<Revision>],
    name: &str,
    help: &str,
    value: impl Fn(&Revision) -> i64,
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for r in revs {
        let labels = [("service", &*r.service), ("revision", &*r.name)];
        ConstGauge::new(value(r)).encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

fn saturating(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let revs = self.0.load();
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_in_flight",
            "Requests of a revision being proxied to an endpoint right now (streams and upgrades count until they end)",
            |r| i64::from(r.in_flight()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_held_requests",
            "Requests of a revision held waiting for an endpoint slot",
            |r| saturating(r.held()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_endpoints",
            "Endpoints a revision can send requests to",
            |r| saturating(r.endpoints().len()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_desired_scale",
            "Endpoints the autoscaler wants for a revision (static revisions: their endpoint count)",
            |r| i64::from(r.desired()),
        )?;
        revision_gauge(
            &mut encoder,
            &revs,
            "rouse_revision_min_scale",
            "The fewest endpoints a scaled revision's autoscaler keeps now: scale.min, or more while a keep-warm window is open",
            |r| i64::from(r.floor()),
        )?;
        let gauge = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "rouse_endpoint_in_flight",
            "Requests in flight to one endpoint",
            None,
            gauge.metric_type(),
        )?;
        for r in revs.iter() {
            for ep in r.endpoints().iter() {
                let addr = ep.addr.to_string();
                let labels = [
                    ("service", &*r.service),
                    ("revision", &*r.name),
                    ("endpoint", addr.as_str()),
                ];
                ConstGauge::new(i64::from(ep.in_flight())).encode(e.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
