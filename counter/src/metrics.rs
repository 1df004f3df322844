//! Prometheus metrics of the counter service (docs/observability.md, "Metrics").
//!
//! One registry, created at startup and shared; every metric a request path
//! touches is a field here so recording is a field access, not a lookup by name.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tally_runtime::http::ConnMetrics;
use tally_runtime::metrics::{latency_histogram, render, size_histogram};

use crate::incoming::GrpcConnMetrics;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    /// Reloads of the settings file (`*_settings_*`).
    pub settings: tally_runtime::live::SettingsMetrics,
    /// Per-method handles of `requests` and `request_duration`.
    pub rpc: RpcSet,
    /// `store_duration` of `incr`, `ordered`, `get`, `list` and `flush`,
    /// resolved once.
    pub store_incr: Histogram,
    pub store_ordered: Histogram,
    pub store_get: Histogram,
    pub store_list: Histogram,
    pub store_flush: Histogram,
    /// gRPC requests by method and status code.
    pub requests: Family<Labels2, Counter>,
    /// gRPC request latency by method.
    pub request_duration: HistogramFamily<Labels>,
    /// Operations carried by one group-commit flush.
    pub commit_ops: Histogram,
    /// Store commands one flush needed after per-counter summing (ops / commands = coalescing ratio).
    pub commit_commands: Histogram,
    /// Store round-trip latency by operation (`incr`, `get`).
    pub store_duration: HistogramFamily<Labels>,
    /// Store failures by kind (`not_applied`, `unknown`, `unconfirmed`, `rejected`, `config`).
    pub store_errors: Family<Labels, Counter>,
    /// 1 while the last readiness probe of the store succeeded.
    pub store_up: Gauge,
    /// Counters waiting in the write-behind buffer.
    pub buffer_keys: Gauge,
    /// The most counters the buffer holds (`TALLY_BUFFER_CAPACITY`): with
    /// `buffer_keys`, how full it is.
    pub buffer_capacity: Gauge,
    /// Age of the oldest operation in the batch at the last flush attempt.
    pub buffer_oldest_age: Gauge<f64, AtomicU64>,
    /// Async operations by what happened to them (`buffered`, `applied_sync`, `rejected`).
    pub async_ops: Family<Labels, Counter>,
    /// Buffered (acknowledged) increments that could not be applied, by reason
    /// (`overflow`, `rejected`, `shutdown_timeout`, `unconfirmed`). Each is also logged
    /// at ERROR with its counter and delta.
    pub async_lost: Family<Labels, Counter>,
    /// Keyed operations answered from their first application (not applied again).
    pub idempotency_replays: Counter,
    /// Requests refused at once because the commit queue was full.
    pub commit_shed: Counter,
    /// Connections of the gRPC listener.
    pub grpc_connections: GrpcConnMetrics,
    /// Connections of the admin HTTP listener.
    pub admin_connections: ConnMetrics,
    /// Reloads of the gRPC listener's TLS files by result.
    pub tls_reloads: tally_runtime::tls::ReloadMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tally_counter");
        let requests = Family::default();
        registry.register("grpc_requests", "gRPC requests by method and status code", requests.clone());
        let request_duration: HistogramFamily<Labels> = Family::new_with_constructor(latency_histogram);
        registry.register("grpc_request_duration_seconds", "gRPC request latency", request_duration.clone());
        let commit_ops = size_histogram();
        registry.register("commit_batch_operations", "Operations per group-commit flush", commit_ops.clone());
        let commit_commands = size_histogram();
        registry.register("commit_batch_commands", "Store commands per flush after summing", commit_commands.clone());
        let store_duration: HistogramFamily<Labels> = Family::new_with_constructor(latency_histogram);
        registry.register("store_duration_seconds", "Store round-trip latency", store_duration.clone());
        let store_errors: Family<Labels, Counter> = Family::default();
        registry.register("store_errors", "Store failures by kind", store_errors.clone());
        let store_up = Gauge::default();
        registry.register("store_up", "1 while the store answers readiness probes", store_up.clone());
        let buffer_keys = Gauge::default();
        registry.register("buffer_keys", "Counters waiting in the write-behind buffer", buffer_keys.clone());
        let buffer_capacity = Gauge::default();
        registry.register("buffer_capacity", "Most counters the write-behind buffer holds", buffer_capacity.clone());
        let async_ops: Family<Labels, Counter> = Family::default();
        registry.register("async_operations", "Async operations by outcome", async_ops.clone());
        let async_lost: Family<Labels, Counter> = Family::default();
        registry.register("async_lost_operations", "Acknowledged async increments not applied", async_lost.clone());
        let buffer_oldest_age = Gauge::default();
        let help = "Age of the oldest buffered operation at the last flush attempt";
        registry.register("buffer_oldest_age_seconds", help, buffer_oldest_age.clone());
        let idempotency_replays = Counter::default();
        let help = "Keyed operations answered from their first application";
        registry.register("idempotency_replays", help, idempotency_replays.clone());
        // Present at zero from the start, so `rate()` and alerts work before the first event.
        for kind in ["not_applied", "unknown", "unconfirmed", "rejected", "config"] {
            let _ = store_errors.get_or_create(&[("kind", kind)]);
        }
        for outcome in ["buffered", "applied_sync", "rejected"] {
            let _ = async_ops.get_or_create(&[("outcome", outcome)]);
        }
        for reason in ["overflow", "rejected", "shutdown_timeout", "unconfirmed"] {
            let _ = async_lost.get_or_create(&[("reason", reason)]);
        }
        let commit_shed = Counter::default();
        registry.register(
            "commit_shed",
            "Requests refused at once because the commit queue was full",
            commit_shed.clone(),
        );
        let grpc_connections = GrpcConnMetrics::default();
        registry.register("grpc_connections_open", "Open gRPC connections", grpc_connections.open.clone());
        let help = "gRPC connections closed at once because the connection cap was reached";
        registry.register("grpc_connections_rejected", help, grpc_connections.rejected.clone());
        let help = "gRPC connections closed because no HTTP/2 preface arrived within the handshake timeout";
        registry.register("grpc_handshake_timeouts", help, grpc_connections.handshake_timeouts.clone());
        let help = "gRPC connections closed because their TLS handshake failed (e.g. a missing or untrusted client certificate) or timed out";
        registry.register("grpc_tls_handshake_failures", help, grpc_connections.tls_failures.clone());
        let help = "gRPC connections sent a GOAWAY and closed because no call was open on them for the idle timeout";
        registry.register("grpc_connections_idle_closed", help, grpc_connections.idle_closed.clone());
        let tls_reloads = tally_runtime::tls::ReloadMetrics::default();
        registry.register("tls_reloads", "Reloads of TLS certificate files by result", tls_reloads.clone());
        let admin_connections = ConnMetrics::default();
        admin_connections.register(registry.sub_registry_with_label(("listener".into(), "admin".into())));
        let rpc = RpcSet {
            increment: RpcMetrics::new("Increment", &requests, &request_duration),
            batch_increment: RpcMetrics::new("BatchIncrement", &requests, &request_duration),
            get: RpcMetrics::new("Get", &requests, &request_duration),
            batch_get: RpcMetrics::new("BatchGet", &requests, &request_duration),
            stream_increments: RpcMetrics::new("StreamIncrements", &requests, &request_duration),
            reset: RpcMetrics::new("Reset", &requests, &request_duration),
            get_resource: RpcMetrics::new("GetResource", &requests, &request_duration),
        };
        let store_op = |op| store_duration.get_or_create(&[("op", op)]).clone();
        let (store_incr, store_ordered) = (store_op("incr"), store_op("ordered"));
        let (store_get, store_list, store_flush) = (store_op("get"), store_op("list"), store_op("flush"));
        let settings = tally_runtime::live::SettingsMetrics::default();
        settings.register(&mut registry);
        Metrics {
            registry,
            settings,
            rpc,
            store_incr,
            store_ordered,
            store_get,
            store_list,
            store_flush,
            commit_shed,
            grpc_connections,
            admin_connections,
            tls_reloads,
            requests,
            request_duration,
            commit_ops,
            commit_commands,
            store_duration,
            store_errors,
            store_up,
            buffer_keys,
            buffer_oldest_age,
            buffer_capacity,
            async_ops,
            async_lost,
            idempotency_replays,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        render(&self.registry)
    }
}

/// The handles of every gRPC method.
pub struct RpcSet {
    pub increment: RpcMetrics,
    pub batch_increment: RpcMetrics,
    pub get: RpcMetrics,
    pub batch_get: RpcMetrics,
    pub stream_increments: RpcMetrics,
    pub reset: RpcMetrics,
    pub get_resource: RpcMetrics,
}

/// One gRPC method's request count and latency. Its `OK` series and its
/// latency histogram are resolved once, so a successful call (the hot path,
/// once per streamed message) records without hashing labels or taking the
/// family's lock; other codes go through the family.
#[derive(Clone)]
pub struct RpcMetrics {
    method: &'static str,
    ok: Counter,
    duration: Histogram,
    requests: Family<Labels2, Counter>,
}

impl RpcMetrics {
    fn new(method: &'static str, requests: &Family<Labels2, Counter>, durations: &HistogramFamily<Labels>) -> Self {
        RpcMetrics {
            method,
            ok: requests.get_or_create(&[("method", method), ("code", "OK")]).clone(),
            duration: durations.get_or_create(&[("method", method)]).clone(),
            requests: requests.clone(),
        }
    }

    /// Records one call that started at `started` and ended with `code`.
    pub fn observe(&self, started: Instant, code: tonic::Code) {
        self.observe_many(started, code, 1);
    }

    /// Records `calls` calls that started together and ended with `code`.
    pub fn observe_many(&self, started: Instant, code: tonic::Code, calls: u64) {
        let seconds = started.elapsed().as_secs_f64();
        if code == tonic::Code::Ok {
            self.ok.inc_by(calls);
        } else {
            self.requests
                .get_or_create(&[("method", self.method), ("code", tally_proto::contract::code_label(code))])
                .inc_by(calls);
        }
        for _ in 0..calls {
            self.duration.observe(seconds);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
