//! The per-endpoint metrics, read from the endpoints themselves at scrape
//! time (a Prometheus collector): nothing is copied on the request path or
//! kept for endpoints discovery removed, and the breaker state is read from
//! its enum.

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::backends::{Backend, Backends};
use super::breaker::State;

/// Registered with the metrics at startup; sees the endpoints once
/// [`EndpointMetrics::watch`] hands it them.
#[derive(Clone, Default)]
pub struct EndpointMetrics {
    backends: Arc<OnceLock<Arc<Backends>>>,
}

impl fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointMetrics").field("watching", &self.backends.get().is_some()).finish()
    }
}

impl EndpointMetrics {
    /// From now on, scrapes report `backends`' endpoints.
    pub fn watch(&self, backends: Arc<Backends>) {
        let _ = self.backends.set(backends);
    }
}

/// The breaker state as a number: 0 closed, 1 half-open, 2 open.
fn breaker_gauge(state: State) -> i64 {
    match state {
        State::Closed { .. } => 0,
        State::HalfOpen { .. } => 1,
        State::Open { .. } => 2,
    }
}

type Read = fn(&Backend) -> i64;

/// Gauges: (name, help, how to read it off an endpoint).
const GAUGES: [(&str, &str, Read); 5] = [
    ("endpoint_healthy", "1 while the endpoint passes health checks", |b| i64::from(b.is_healthy())),
    ("endpoint_takes_async_writes", "1 while the endpoint takes async writes (its store up or not)", |b| {
        i64::from(b.takes_async())
    }),
    ("endpoint_in_flight", "Calls in flight per endpoint", |b| b.in_flight() as i64),
    ("endpoint_pool_connections", "Connections per endpoint pool", |b| b.pool_size() as i64),
    ("endpoint_breaker_state", "Breaker: 0 closed, 1 half-open, 2 open", |b| breaker_gauge(b.breaker.state())),
];

impl Collector for EndpointMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(backends) = self.backends.get() else { return Ok(()) };
        let all = backends.all();
        for (name, help, read) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for backend in all.iter() {
                let labels = [("endpoint", backend.name.as_str())];
                ConstGauge::new(read(backend)).encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "Calls the balancer sent to each endpoint";
        let mut picks = encoder.encode_descriptor("endpoint_picks", help, None, MetricType::Counter)?;
        for backend in all.iter() {
            let labels = [("endpoint", backend.name.as_str())];
            ConstCounter::new(backend.picks()).encode(picks.encode_family(&labels)?)?;
        }
        let help = "Breaker transitions per endpoint and target state";
        let mut transitions = encoder.encode_descriptor("breaker_transitions", help, None, MetricType::Counter)?;
        for backend in all.iter() {
            let (opened, closed) = backend.transitions();
            for (to, count) in [("open", opened), ("closed", closed)] {
                let labels = [("endpoint", backend.name.as_str()), ("to", to)];
                ConstCounter::new(count).encode(transitions.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
