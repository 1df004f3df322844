//! The counter's trace spans, per the OpenTelemetry semantic conventions
//! (RPC server, database client). Created only for sampled requests (the
//! decision is made once, as a request arrives: [`telemetry::sample`]);
//! otherwise each function returns a disabled span at no cost.

use opentelemetry::trace::SpanContext;
use tally_runtime::telemetry;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of one gRPC request, from its head, continuing the caller's
/// trace from the `traceparent` metadata. Health checks and reflection are
/// not traced: they would drown the requests.
pub fn rpc_server(request: &http::request::Parts) -> Span {
    let path = request.uri.path();
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else { return Span::none() };
    if !telemetry::enabled() || !service.starts_with("tally.") {
        return Span::none();
    }
    let parent = telemetry::extract(&request.headers);
    if !telemetry::sample(&parent, telemetry::Caller::Trusted) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc.server",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        trace_id = Empty,
    );
    telemetry::adopt(&span, parent);
    span
}

/// Records a request's gRPC status on the current server span.
pub fn rpc_status(code: tonic::Code) {
    if !telemetry::enabled() {
        return;
    }
    telemetry::record_grpc_status(&Span::current(), code as i32);
}

/// The calling request's span, to be linked with the flush that applies it.
pub fn current() -> Span {
    if telemetry::enabled() { Span::current() } else { Span::none() }
}

/// The span of one group commit into the store: a child of the first
/// request it carries and linked both ways with every one of them, so each
/// request's trace shows the flush that applied it.
pub fn group_commit(store: &'static str, members: &[Span], operations: usize) -> Span {
    let Some(first) = members.iter().find(|m| !m.is_none()).filter(|_| telemetry::enabled()) else {
        return Span::none();
    };
    let span = flush_span(store, Some(first), operations, false);
    telemetry::link_batch(&span, members);
    span
}

/// The span of one write-behind flush, linked to the (finished) requests
/// whose acknowledged writes it applies, and a child of the first of them.
pub fn buffer_flush(store: &'static str, members: &[SpanContext], operations: usize) -> Span {
    // Only when some buffered request was traced: a flush of unsampled
    // writes must not start traces of its own.
    if !telemetry::enabled() || members.is_empty() {
        return Span::none();
    }
    let span = flush_span(store, None, operations, true);
    if let Some(first) = members.first() {
        use opentelemetry::trace::TraceContextExt;
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(first.clone()));
    }
    for member in members {
        span.add_link(member.clone());
    }
    span
}

fn flush_span(store: &'static str, parent: Option<&Span>, operations: usize, write_behind: bool) -> Span {
    let parent = parent.and_then(Span::id);
    tracing::info_span!(
        parent: parent,
        "db.client",
        otel.name = "BATCH HINCRBY",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = store,
        db.operation.name = "BATCH HINCRBY",
        db.operation.batch.size = operations,
        tally.write_behind = write_behind,
    )
}

/// `db.system.name` of a store kind (a cluster is still Redis).
pub fn db_system(kind: &'static str) -> &'static str {
    if kind == "memory" { "memory" } else { "redis" }
}

/// Marks a flush span failed.
pub fn failed(span: &Span, error: &dyn std::fmt::Display) {
    if !span.is_none() {
        span.record("otel.status_code", "ERROR");
        span.set_attribute("error.type", error.to_string());
    }
}
