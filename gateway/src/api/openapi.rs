//! The OpenAPI 3.1 description of the public HTTP API, served at
//! `GET /api/v1/openapi.json` and committed as `docs/openapi.json`.
//!
//! Response schemas are derived (utoipa) from the very types the handlers
//! serialise, so they cannot drift from what is sent; a test checks the
//! committed copy against this one and validates real responses of every
//! route against it. Request bodies are read by field-by-field decoders
//! (`tally_proto::json`), so their wire shapes are described here by the
//! `*Body` types, and the same test sends their examples.

use axum::Json;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::error::{Envelope, ErrorBody};
use super::json::{
    Accepted, BatchFailure, BatchResults, CounterValue, Health, Incremented, Reset, ResourceCounters, Success, Values,
};
use super::system::{ByService, MetricsStats, PoolView, ServicesHealth};

/// `POST /api/v1/counter/increment`. Keys match case-insensitively, as the
/// original's Go decoder matched them; a key that names no field is refused.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"resource_id": "post:1", "counter_type": "likes", "delta": 1}))]
pub struct IncrementBody {
    /// 1–128 bytes of `[A-Za-z0-9_.:@/-]`.
    #[schema(pattern = "^[A-Za-z0-9_.:@/-]{1,128}$")]
    resource_id: String,
    /// 1–64 bytes of `[a-z0-9_]`.
    #[schema(pattern = "^[a-z0-9_]{1,64}$")]
    counter_type: String,
    /// Non-zero; omitted or null means 1.
    delta: Option<i64>,
    /// Applied once per counter within the retention window; 1–128 bytes of `[A-Za-z0-9_.:@/+=-]`.
    idempotency_key: Option<String>,
}

/// `POST /api/v1/counter/batch-increment`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"operations": [{"resource_id": "post:1", "counter_type": "views", "delta": 10},
                                          {"resource_id": "user:7", "counter_type": "follows"}], "async": false}))]
pub struct BatchIncrementBody {
    /// 1–1000 operations.
    operations: Vec<IncrementBody>,
    /// Acknowledge once buffered (202) instead of once applied.
    #[serde(rename = "async")]
    is_async: Option<bool>,
}

/// `POST /api/v1/counter/batch`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"items": [{"resource_id": "post:1", "counter_type": "likes"}]}))]
pub struct BatchGetBody {
    /// 1–1000 counters.
    items: Vec<CounterRefBody>,
}

#[derive(Serialize, ToSchema)]
pub struct CounterRefBody {
    resource_id: String,
    counter_type: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally HTTP API",
        description = "Counters (likes, views, follows) per resource. Errors are always \
                       {\"status\":\"error\",\"error\":{\"code\",\"message\"}}, with nothing written.",
        license(name = "Apache-2.0")
    ),
    paths(
        increment,
        batch_increment,
        batch_get,
        get_counter,
        get_resource,
        reset,
        health,
        grpc_pools,
        services_health,
        metrics_stats,
        object_pools,
        openapi_json
    ),
    components(schemas(Envelope, ErrorBody, IncrementBody, BatchIncrementBody, BatchGetBody, CounterRefBody))
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[utoipa::path(post, path = "/api/v1/counter/increment", tag = "counters",
    request_body = IncrementBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as the body's idempotency_key")),
    responses(
        (status = 200, description = "Applied: the value right after this increment", body = Success<Incremented>,
         example = json!({"status": "success", "data": {"resource_id": "post:1", "counter_type": "likes", "delta": 1,
                          "current_value": 1, "success": true, "timestamp": 1796000000}})),
        (status = 400, description = "Invalid body; nothing written", body = Envelope),
        (status = 413, description = "Body over 1 MiB", body = Envelope),
        (status = 422, description = "Would overflow a 64-bit counter; nothing written", body = Envelope),
        (status = 503, description = "Counter or store unavailable, or load shed. With Retry-After: nothing was \
written, resend after that many seconds; without it the write may have been applied (resend only under an \
idempotency key)", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when nothing was written"))),
    ))]
#[allow(dead_code)]
fn increment() {}

#[utoipa::path(post, path = "/api/v1/counter/batch-increment", tag = "counters",
    request_body = BatchIncrementBody,
    responses(
        (status = 200, description = "Sync: every operation applied, one result each, in order",
         body = Success<BatchResults>),
        (status = 202, description = "Async: buffered", body = Success<Accepted>,
         example = json!({"status": "success", "data": {"accepted": 2, "async": true}})),
        (status = 400, description = "Invalid body; nothing written", body = Envelope),
        (status = 413, description = "More than 1000 operations, or body over 1 MiB", body = Envelope),
        (status = 422, description = "An operation would overflow; per-operation outcomes in data", body = BatchFailure),
        (status = 429, description = "Async batch refused: the counter's buffer is full; nothing written", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds to wait before resending"))),
        (status = 503, description = "Unavailable; per-operation outcomes in data when some were tried. With \
Retry-After: nothing was written, resend after that many seconds", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when nothing was written"))),
    ))]
#[allow(dead_code)]
fn batch_increment() {}

#[utoipa::path(post, path = "/api/v1/counter/batch", tag = "counters",
    request_body = BatchGetBody,
    responses(
        (status = 200, description = "One value per item, in order", body = Success<Values>),
        (status = 400, description = "Invalid body", body = Envelope),
        (status = 413, description = "More than 1000 items", body = Envelope),
        (status = 503, description = "Unavailable. With Retry-After: shed, or no counter to send it to; resend \
after that many seconds", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when the request was not sent"))),
    ))]
#[allow(dead_code)]
fn batch_get() {}

#[utoipa::path(get, path = "/api/v1/counter/{resource_id}/{counter_type}", tag = "counters",
    params(("resource_id" = String, Path, description = "May contain '/'"), ("counter_type" = String, Path)),
    responses(
        (status = 200, description = "The value; never written reads 0", body = Success<CounterValue>,
         example = json!({"status": "success", "data": {"resource_id": "post:1", "counter_type": "likes",
                          "current_value": 1, "updated_at": 1796000000}})),
        (status = 400, description = "Invalid resource id or counter type", body = Envelope),
        (status = 503, description = "Unavailable. With Retry-After: shed, or no counter to send it to; resend \
after that many seconds", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when the request was not sent"))),
    ))]
#[allow(dead_code)]
fn get_counter() {}

#[utoipa::path(get, path = "/api/v1/counter/{resource_id}", tag = "counters",
    params(("resource_id" = String, Path, description = "With no literal '/': send '/' in it as %2F")),
    responses(
        (status = 200, description = "Every counter of the resource, sorted by type", body = Success<ResourceCounters>,
         example = json!({"status": "success", "data": {"resource_id": "post:1", "total": 1, "updated_at": 1796000000,
                          "counters": [{"counter_type": "likes", "current_value": 1}]}})),
        (status = 400, description = "Invalid resource id", body = Envelope),
        (status = 409, description = "More than 1000 counters: read them by name", body = Envelope),
        (status = 503, description = "Unavailable. With Retry-After: shed, or no counter to send it to; resend \
after that many seconds", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when the request was not sent"))),
    ))]
#[allow(dead_code)]
fn get_resource() {}

#[utoipa::path(delete, path = "/api/v1/counter/{resource_id}/{counter_type}", tag = "counters",
    params(("resource_id" = String, Path), ("counter_type" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "A resend answers the first reset")),
    responses(
        (status = 200, description = "Reset to 0: the value it had", body = Success<Reset>,
         example = json!({"status": "success", "data": {"resource_id": "post:1", "counter_type": "likes",
                          "previous_value": 7, "current_value": 0, "success": true, "timestamp": 1796000000}})),
        (status = 400, description = "Invalid path or key; nothing reset", body = Envelope),
        (status = 404, description = "No counter type in the path", body = Envelope),
        (status = 503, description = "Unavailable. With Retry-After: nothing was reset, resend after that many \
seconds; without it the reset may have been applied", body = Envelope,
         headers(("Retry-After" = u32, description = "Seconds; present when nothing was reset"))),
    ))]
#[allow(dead_code)]
fn reset() {}

#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "The gateway is up", body = Health)))]
#[allow(dead_code)]
fn health() {}

#[utoipa::path(get, path = "/api/v1/system/grpc-pools", tag = "system",
    responses((status = 200, description = "Counter instances and pooled connections", body = Success<ByService<PoolView>>)))]
#[allow(dead_code)]
fn grpc_pools() {}

#[utoipa::path(get, path = "/api/v1/system/services/health", tag = "system",
    responses(
        (status = 200, description = "A counter instance is healthy", body = ServicesHealth),
        (status = 503, description = "No healthy counter instance", body = Envelope),
    ))]
#[allow(dead_code)]
fn services_health() {}

#[utoipa::path(get, path = "/api/v1/system/metrics/stats", tag = "system",
    responses((status = 200, description = "Where the metrics are", body = Success<MetricsStats>)))]
#[allow(dead_code)]
fn metrics_stats() {}

#[utoipa::path(get, path = "/api/v1/system/object-pools", tag = "system",
    responses((status = 404, description = "Nothing real to report (the original's Go sync.Pool statistics)",
               body = Envelope)))]
#[allow(dead_code)]
fn object_pools() {}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "This document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json`, the committed copy.
    fn committed() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    #[test]
    fn the_committed_document_is_this_one() {
        let current = ApiDoc::openapi().to_pretty_json().expect("serialise") + "\n";
        if std::env::var_os("TALLY_UPDATE_OPENAPI").is_some() {
            std::fs::write(committed(), &current).expect("write docs/openapi.json");
        }
        let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(on_disk == current, "docs/openapi.json is out of date: run `make openapi`");
    }
}
