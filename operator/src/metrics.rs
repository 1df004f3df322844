//! The operator's own Prometheus metrics: reconciles by result, their
//! duration, and whether this replica holds the leader lease.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied`, `invalid` (spec rejected), `error` (API failure, retried)
    /// or `deleting` (the resource is being deleted).
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge<i64, AtomicI64>,
    /// Connections of the HTTP listener.
    pub connections: tally_runtime::http::ConnMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tally_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconciles", "Reconciles of CounterClusters by result", reconciles.clone());
        let reconcile_duration = tally_runtime::metrics::latency_histogram();
        registry.register("reconcile_duration_seconds", "Time of one reconcile", reconcile_duration.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let connections = tally_runtime::http::ConnMetrics::default();
        connections.register(&mut registry);
        Metrics { registry, reconciles, reconcile_duration, leader, connections }
    }

    pub fn count(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn render(&self) -> String {
        tally_runtime::metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_result() {
        let m = Metrics::new();
        m.count("applied");
        m.count("applied");
        m.count("invalid");
        m.leader.set(1);
        let text = m.render();
        assert!(text.contains(r#"tally_operator_reconciles_total{result="applied"} 2"#), "{text}");
        assert!(text.contains(r#"tally_operator_reconciles_total{result="invalid"} 1"#), "{text}");
        assert!(text.contains("tally_operator_leader 1"), "{text}");
        assert!(text.contains("tally_operator_reconcile_duration_seconds_bucket"), "{text}");
    }
}
