//! The gateway's trace spans, named and attributed per the OpenTelemetry
//! semantic conventions (HTTP server, RPC client). The sampling decision is
//! made once, when a request arrives ([`telemetry::sample`]); an unsampled
//! request (or any request with export off) gets disabled spans at no cost,
//! and its calls to the counters say "not sampled" so no trace starts there.

use tally_runtime::telemetry;
use tracing::Span;
use tracing::field::Empty;

/// The gRPC service the counters implement.
const RPC_SERVICE: &str = tally_proto::contract::SERVICE_NAME;

/// The server span of one HTTP request, continuing the caller's trace when
/// the request carries `traceparent`; whether the caller's sampled flag
/// counts is up to `caller` (`TALLY_TRACE_TRUST_CALLER`).
pub fn http_server(
    headers: &http::HeaderMap,
    caller: telemetry::Caller,
    method: &'static str,
    route: &'static str,
    path: &str,
) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    let parent = telemetry::extract(headers);
    if !telemetry::sample(&parent, caller) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "http.server",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        url.scheme = "http",
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    telemetry::adopt(&span, parent);
    span
}

/// Records the response status on an HTTP server span (5xx is an error).
pub fn http_status(span: &Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The client span of one attempt of a call to a counter, within the
/// current (traced) request; none for an unsampled one.
pub fn rpc_client(method: &'static str, endpoint: &str, attempt: u32) -> Span {
    if !telemetry::enabled() || Span::current().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        "rpc.client",
        otel.name = format!("{RPC_SERVICE}/{method}"),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = RPC_SERVICE,
        rpc.method = method,
        server.address = endpoint,
        rpc.grpc.status_code = Empty,
        tally.attempt = attempt,
    )
}

/// Records a call's gRPC status on its client span.
pub fn rpc_status(span: &Span, code: tonic::Code) {
    telemetry::record_grpc_status(span, code as i32);
}

/// The span of one coalesced batch (`name`: "coalesce BatchIncrement" or
/// "coalesce BatchGet"): a child of the first request it carries, linked
/// both ways with every request in it, so each request's trace leads to the
/// call (and the counter's spans) that served it.
pub fn coalesced_batch(name: &'static str, members: &[Span]) -> Span {
    let Some(first) = members.iter().find(|m| !m.is_none()).filter(|_| telemetry::enabled()) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        parent: first,
        "coalesce",
        otel.name = name,
        otel.kind = "internal",
        tally.batch.size = members.len(),
    );
    telemetry::link_batch(&span, members);
    span
}

/// `traceparent`/`tracestate` of `span` into a gRPC request's metadata
/// (an unsampled one when the request is not traced).
pub fn inject<T>(span: &Span, request: &mut tonic::Request<T>) {
    if !telemetry::enabled() {
        return;
    }
    let mut headers = http::HeaderMap::new();
    if span.is_none() {
        headers.insert("traceparent", telemetry::unsampled_traceparent());
    } else {
        telemetry::inject(span, &mut headers);
    }
    for (name, value) in &headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
}
