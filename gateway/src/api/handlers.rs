//! HTTP handlers: parse and validate (shared rules from `tally-proto`), call
//! the counter service through the client, keep the read cache in step, and
//! answer in the original project's JSON shapes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_proto::json::{self as request, Increment};
use tally_proto::v1::{BatchGetRequest, BatchIncrementRequest, CounterRef, IncrementOperation};
use tally_proto::{CounterKey, validate};

use super::caller::{self, Authenticated};
use super::error::{ApiError, ErrorBody};
use super::json::*;
use crate::auth::{Caller, Scope};
use crate::cache::ReadCache;
use crate::client::{CallError, Counter, Incrementer, Reader, operation_error};
use crate::metrics::Metrics;

/// Largest accepted request body: 1 MiB (docs/api.md, "Limits").
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Everything a handler needs; shared behind one `Arc` so the per-request
/// clone axum makes is a single reference-count increment.
pub struct App {
    pub counter: Counter,
    pub incrementer: Incrementer,
    pub reader: Reader,
    /// Shared by every worker: a write through any of them invalidates it.
    pub cache: Arc<ReadCache>,
    pub metrics: Arc<Metrics>,
    /// Whether callers' `traceparent` sampled flags are followed.
    pub trace_caller: tally_runtime::telemetry::Caller,
    /// Who may call the API (shared by every worker).
    pub auth: Arc<crate::auth::Auth>,
    /// Set on SIGTERM: `/ready` fails while requests are still served.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

pub type AppState = Arc<App>;

/// The body bytes, or the JSON error for a body that could not be read.
fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body exceeds {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })
}

fn operation(key: &CounterKey, delta: i64, idempotency_key: Option<&str>) -> IncrementOperation {
    IncrementOperation {
        resource_id: key.resource_id().to_string(),
        counter_type: key.counter_type().to_string(),
        delta: Some(delta),
        idempotency_key: idempotency_key.unwrap_or_default().to_string(),
    }
}

/// The `Idempotency-Key` request header, taken alone (axum's `HeaderMap`
/// extractor would copy every header of every request).
pub struct IdempotencyHeader(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(IdempotencyHeader::of(parts))
    }
}

impl IdempotencyHeader {
    /// The header of the request with these parts, if it has one.
    pub(super) fn of(parts: &Parts) -> IdempotencyHeader {
        IdempotencyHeader(parts.headers.get("idempotency-key").cloned())
    }

    /// The header's key, validated like every other input.
    pub(super) fn validated(&self) -> Result<Option<&str>, ApiError> {
        let Some(value) = &self.0 else { return Ok(None) };
        let text = value.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
        Ok(validate::idempotency_key(text)?)
    }
}

/// The key of a single increment: the `Idempotency-Key` header or the
/// body's `idempotency_key`; both may be sent only when they agree.
fn idempotency_key<'a>(header: &'a IdempotencyHeader, body: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match (header.validated()?, body) {
        (Some(header), Some(body)) if header != body => {
            Err(ApiError::bad_request("the Idempotency-Key header and the body's idempotency_key differ"))
        }
        (header, body) => Ok(header.or(body)),
    }
}

/// `POST /api/v1/counter/increment`, called directly by the routes (the
/// hot path: no extractors, no boxed future of its own).
pub async fn increment(state: &AppState, parts: &mut Parts, body: Bytes) -> Result<Response, ApiError> {
    let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
    let header = IdempotencyHeader::of(parts);
    let Increment { key, delta, idempotency_key: body_key } = request::increment(&body)?;
    let idempotency_key = idempotency_key(&header, body_key.as_deref())?;
    caller::permit(state, &caller, Scope::Write, [key.resource_id()], 1)?;
    let idempotency_key = caller.scoped_idempotency_key(idempotency_key);
    let write = state.cache.write_started([&key]);
    let result = state.incrementer.increment(operation(&key, delta, idempotency_key.as_deref())).await;
    if matches!(result, Err(CallError::Overloaded)) {
        state.metrics.shed("queue");
    }
    // A replay answers with the first (older) value: not a fresh value to cache.
    write.finish([result.as_ref().ok().filter(|a| !a.replayed).map(|a| a.value)]);
    let applied = result?;
    let mut response = success_response(Incremented {
        resource_id: key.resource_id(),
        counter_type: key.counter_type(),
        delta,
        current_value: applied.value,
        success: true,
        timestamp: unix_now(),
        replayed: applied.replayed,
    });
    if applied.replayed {
        response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn batch_increment(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let batch = request::batch_increment(&bytes(body)?)?;
    let keys = batch.operations.iter().map(|op| op.key.resource_id());
    caller::permit(&state, &caller, Scope::Write, keys, batch.operations.len())?;
    let ops: Vec<(CounterKey, i64, Option<String>)> = batch
        .operations
        .into_iter()
        .map(|op| {
            let idempotency_key = caller.scoped_idempotency_key(op.idempotency_key.as_deref());
            (op.key, op.delta, idempotency_key)
        })
        .collect();
    let request = BatchIncrementRequest {
        operations: ops.iter().map(|(key, delta, idem)| operation(key, *delta, idem.as_deref())).collect(),
        r#async: batch.is_async,
        // Outcomes are built from `ops`, by position.
        omit_names: true,
    };

    let write = state.cache.write_started(ops.iter().map(|(key, _, _)| key));
    let response = state.counter.batch_increment(request).await;
    let results = match (&response, batch.is_async) {
        (Ok(response), false) => response.results.as_slice(),
        _ => &[],
    };
    write.finish(results.iter().map(|r| (r.error.is_none() && !r.replayed).then_some(r.current_value)));
    let response = response?;

    if batch.is_async {
        let data = Accepted { accepted: ops.len(), is_async: true };
        let mut response = success_response(data);
        *response.status_mut() = StatusCode::ACCEPTED;
        return Ok(response);
    }
    if response.results.len() != ops.len() {
        let message = format!("counter returned {} results for {} operations", response.results.len(), ops.len());
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message));
    }
    let errors: Vec<Option<ApiError>> =
        response.results.iter().map(|r| operation_error(r).map(ApiError::from)).collect();
    let outcomes: Vec<OperationOutcome> = ops
        .iter()
        .zip(&response.results)
        .zip(&errors)
        .map(|(((key, delta, _), result), error)| OperationOutcome {
            resource_id: key.resource_id().to_string(),
            counter_type: key.counter_type().to_string(),
            delta: *delta,
            status: if error.is_none() { "success" } else { "error" },
            current_value: error.is_none().then_some(result.current_value),
            replayed: result.replayed,
            error: error.as_ref().map(|e| ErrorBody { code: e.code, message: &e.message }),
        })
        .collect();
    let failed = errors.iter().flatten().count();
    let data = BatchResults { processed: ops.len() - failed, results: outcomes, is_async: false };
    match errors.iter().flatten().next() {
        None => Ok(success_response(data)),
        // Never a partial write reported as success: the status of the first
        // failure, with every operation's outcome so the client knows exactly
        // which were applied.
        Some(first) => {
            let message = format!("{failed} of {} operations failed; see data.results", ops.len());
            let body = BatchFailure { status: "error", error: ErrorBody { code: first.code, message: &message }, data };
            Ok((first.status, Json(body)).into_response())
        }
    }
}

/// `GET /api/v1/counter/{resource_id}/{counter_type}` (the path is split
/// by [`super::path`]).
pub(super) async fn get_counter(state: &App, caller: &Caller, key: CounterKey) -> Result<Response, ApiError> {
    caller::permit(state, caller, Scope::Read, [key.resource_id()], 1)?;
    let current_value = read_one(state, &key).await?;
    let body = CounterValue {
        resource_id: key.resource_id(),
        counter_type: key.counter_type(),
        current_value,
        updated_at: unix_now(),
    };
    Ok(success_response(body))
}

async fn read_one(state: &App, key: &CounterKey) -> Result<i64, ApiError> {
    if let Some(value) = state.cache.get(key) {
        state.metrics.cache_lookup(true);
        return Ok(value);
    }
    state.metrics.cache_lookup(false);
    let stamp = state.cache.read_stamp();
    let result = state.reader.get(key).await;
    if matches!(result, Err(CallError::Overloaded)) {
        state.metrics.shed("queue");
    }
    let value = result?;
    state.cache.fill(key, value, &stamp);
    Ok(value)
}

pub async fn batch_get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let keys = request::batch_get(&bytes(body)?)?;
    caller::permit(&state, &caller, Scope::Read, keys.iter().map(CounterKey::resource_id), keys.len())?;
    let mut values: Vec<Option<i64>> = keys.iter().map(|k| state.cache.get(k)).collect();
    let missing: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
    for hit in [true, false] {
        let n = if hit { keys.len() - missing.len() } else { missing.len() };
        for _ in 0..n {
            state.metrics.cache_lookup(hit);
        }
    }
    if !missing.is_empty() {
        let stamp = state.cache.read_stamp();
        let items = missing
            .iter()
            .map(|&i| CounterRef {
                resource_id: keys[i].resource_id().to_string(),
                counter_type: keys[i].counter_type().to_string(),
            })
            .collect();
        let fetched = state.counter.batch_get(BatchGetRequest { items, omit_names: true }).await?.results;
        if fetched.len() != missing.len() {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "counter returned the wrong number of results",
            ));
        }
        for (&i, result) in missing.iter().zip(fetched) {
            state.cache.fill(&keys[i], result.current_value, &stamp);
            values[i] = Some(result.current_value);
        }
    }
    let updated_at = unix_now();
    let results: Vec<CounterValue> = keys
        .iter()
        .zip(values)
        .map(|(key, value)| CounterValue {
            resource_id: key.resource_id(),
            counter_type: key.counter_type(),
            current_value: value.unwrap_or(0),
            updated_at,
        })
        .collect();
    let total = results.len();
    Ok(success_response(Values { results, total }))
}

pub async fn health() -> impl IntoResponse {
    Json(Health {
        status: "healthy",
        service: "tally-gateway",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: unix_now(),
    })
}

/// Ready while at least one counter endpoint is warm and takes calls of
/// some kind: healthy, or taking async writes while its store is down (so
/// async writes still reach the gateway during a store outage); never once
/// the gateway is stopping.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let backends = state.counter.backends();
    let (usable, healthy) = (backends.usable_count(), backends.healthy_count());
    let stopping = state.stopping.load(std::sync::atomic::Ordering::Relaxed);
    let ready = usable > 0 && !stopping;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if stopping { "stopping" } else if ready { "ready" } else { "not_ready" },
        "healthy_endpoints": healthy,
        "async_only_endpoints": usable.saturating_sub(healthy),
        "endpoints": backends.all().len(),
    });
    (status, Json(body))
}

pub async fn backends(State(state): State<AppState>) -> impl IntoResponse {
    let endpoints: Vec<_> = state
        .counter
        .backends()
        .all()
        .iter()
        .map(|b| {
            json!({
                "address": b.name,
                "healthy": b.is_healthy(),
                "takes_async_writes": b.takes_async(),
                "pool_size": b.pool_size(),
                "in_flight": b.in_flight(),
                "weight": b.weight,
                "breaker": b.breaker.state().name(),
            })
        })
        .collect();
    let policy = state.counter.backends().policy().name();
    success_response(json!({ "load_balancing": policy, "endpoints": endpoints }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render();
    ([(axum::http::header::CONTENT_TYPE, tally_runtime::metrics::CONTENT_TYPE)], text)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the routes are listed at /api/v1/openapi.json and in docs/api.md")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("method not allowed on this route")
}
