//! Prometheus metrics of the gateway (docs/observability.md, "Metrics").

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tally_runtime::http::ConnMetrics;
use tally_runtime::metrics::{latency_histogram, render, size_histogram};

type Labels<const N: usize> = [(&'static str, String); N];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

mod requests;
use requests::RequestMetrics;

/// Labels of the per-request HTTP metrics: static strings and a number, so
/// recording allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Reloads of the settings file (`*_settings_*`).
    pub settings: tally_runtime::live::SettingsMetrics,
    /// Requests answered 503 at once by load shedding, by bound (`in_flight`, `queue`).
    pub shed: Family<[(&'static str, &'static str); 1], Counter>,
    /// Connections of the public listener.
    pub public_connections: ConnMetrics,
    /// Connections of the admin listener.
    pub admin_connections: ConnMetrics,
    /// HTTP requests by route, method and status, and their latency by route.
    requests: Arc<RequestMetrics>,
    /// Calls to counters by gRPC method and status code.
    pub upstream_requests: Family<Labels<2>, Counter>,
    /// Latency of calls to counters by gRPC method.
    pub upstream_duration: HistogramFamily<Labels<1>>,
    /// Increments per coalesced BatchIncrement call.
    pub coalesced_operations: Histogram,
    /// Reads per coalesced BatchGet call.
    pub coalesced_reads: Histogram,
    /// Calls sent again, by gRPC method and why (`not_sent`, `unknown`).
    pub retries: Family<Labels<2>, Counter>,
    /// Retries the budget did not allow.
    pub retries_refused: Counter,
    /// Read cache lookups by result (`hit`, `miss`): the two series,
    /// resolved once (a lookup is on every read's path).
    cache_hits: Counter,
    cache_misses: Counter,
    /// API keys in force (`TALLY_AUTH=api_keys`).
    pub auth_keys: Gauge,
    /// Reloads of the keys file by result (`ok`, `failed`).
    pub auth_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    /// Reloads of TLS certificate files (listener, upstream) by result.
    pub tls_reloads: tally_runtime::tls::ReloadMetrics,
    /// API requests refused by reason (`unauthenticated`, `forbidden`, `rate_limited`).
    pub auth_refused: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_collectors(Vec::new())
    }

    /// With `collectors` registered too: series computed at scrape time
    /// from state that lives elsewhere (the client's per-endpoint series),
    /// so this module needs to know nothing of it.
    pub fn with_collectors(collectors: Vec<Box<dyn Collector>>) -> Metrics {
        let mut registry = Registry::with_prefix("tally_gateway");
        let requests = Arc::new(RequestMetrics::new());
        registry.register_collector(Box::new(requests.clone()));
        let upstream_requests = Family::default();
        registry.register("upstream_requests", "gRPC calls to counters by method and code", upstream_requests.clone());
        let upstream_duration: HistogramFamily<Labels<1>> = Family::new_with_constructor(latency_histogram);
        registry.register("upstream_request_duration_seconds", "gRPC call latency", upstream_duration.clone());
        let coalesced_operations = size_histogram();
        registry.register("coalesced_operations", "Increments per coalesced call", coalesced_operations.clone());
        let coalesced_reads = size_histogram();
        registry.register("coalesced_reads", "Reads per coalesced BatchGet call", coalesced_reads.clone());
        let retries: Family<Labels<2>, Counter> = Family::default();
        registry.register("retries", "Calls sent again, by method and reason", retries.clone());
        // Present at zero from the start, so `rate()` and alerts see them before the first retry.
        // (A refused call is never resent, so there is no `refused` reason.)
        for method in ["Increment", "BatchIncrement", "Get", "BatchGet", "Reset", "GetResource"] {
            for reason in ["not_sent", "unknown"] {
                let _ = retries.get_or_create(&[("method", method.into()), ("reason", reason.into())]);
            }
        }
        let retries_refused = Counter::default();
        registry.register("retries_refused", "Retries refused by the retry budget", retries_refused.clone());
        let cache_lookups: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
        registry.register("cache_lookups", "Read cache lookups by result", cache_lookups.clone());
        let cache_hits = cache_lookups.get_or_create(&[("result", "hit")]).clone();
        let cache_misses = cache_lookups.get_or_create(&[("result", "miss")]).clone();
        for collector in collectors {
            registry.register_collector(collector);
        }
        let shed = Family::default();
        registry.register("requests_shed", "Requests answered 503 at once by load shedding, by bound", shed.clone());
        for bound in ["in_flight", "queue"] {
            let _ = shed.get_or_create(&[("bound", bound)]);
        }
        let auth_keys = Gauge::default();
        registry.register("auth_keys", "API keys in force", auth_keys.clone());
        let auth_reloads = Family::default();
        registry.register("auth_reloads", "Reloads of the API keys file by result", auth_reloads.clone());
        let tls_reloads = tally_runtime::tls::ReloadMetrics::default();
        registry.register("tls_reloads", "Reloads of TLS certificate files by result", tls_reloads.clone());
        let auth_refused = Family::default();
        registry.register(
            "auth_refused",
            "API requests refused by authentication or authorization",
            auth_refused.clone(),
        );
        for reason in ["unauthenticated", "forbidden", "rate_limited"] {
            let _ = auth_refused.get_or_create(&[("reason", reason)]);
        }
        for result in ["ok", "failed"] {
            let _ = auth_reloads.get_or_create(&[("result", result)]);
        }
        let (public_connections, admin_connections) = (ConnMetrics::default(), ConnMetrics::default());
        public_connections.register(registry.sub_registry_with_label(("listener".into(), "public".into())));
        admin_connections.register(registry.sub_registry_with_label(("listener".into(), "admin".into())));
        let settings = tally_runtime::live::SettingsMetrics::default();
        settings.register(&mut registry);
        Metrics {
            registry,
            settings,
            auth_keys,
            auth_reloads,
            tls_reloads,
            auth_refused,
            shed,
            public_connections,
            admin_connections,
            requests,
            upstream_requests,
            upstream_duration,
            coalesced_operations,
            coalesced_reads,
            retries,
            retries_refused,
            cache_hits,
            cache_misses,
        }
    }

    pub fn record_http(&self, route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
        self.requests.record(HttpLabels { route, method, status }, elapsed);
    }

    pub fn observe_upstream(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let code = tally_proto::contract::code_label(code);
        self.upstream_requests.get_or_create(&[("method", method.into()), ("code", code.into())]).inc();
        self.upstream_duration.get_or_create(&[("method", method.into())]).observe(elapsed.as_secs_f64());
    }

    /// A call sent again, for `reason` (`Failure::label`).
    pub fn retry(&self, method: &'static str, reason: &'static str) {
        self.retries.get_or_create(&[("method", method.into()), ("reason", reason.into())]).inc();
    }

    /// A request shed by `bound` (`in_flight` or `queue`).
    pub fn shed(&self, bound: &'static str) {
        self.shed.get_or_create(&[("bound", bound)]).inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit { &self.cache_hits } else { &self.cache_misses }.inc();
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
