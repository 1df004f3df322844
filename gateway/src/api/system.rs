//! The original project's `/api/v1/system/*` routes on the public port, so
//! its dashboards and scripts keep working. They report counts and states,
//! never internal addresses (those are on the admin port's
//! `/api/v1/system/backends`), and no figure without a real source.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::handlers::AppState;
use super::json::unix_now;

/// The name the counters are reported under (the original listed its
/// services by name).
const COUNTER_SERVICE: &str = "counter-service";

/// `GET /api/v1/system/grpc-pools`: per service, its instances, how many
/// are healthy, the gRPC connections pooled to them, and when the set of
/// instances last changed.
pub async fn grpc_pools(State(state): State<AppState>) -> impl IntoResponse {
    let backends = state.counter.backends();
    let all = backends.all();
    let connections: usize = all.iter().map(|b| b.pool_size()).sum();
    Json(json!({
        "status": "success",
        "data": {
            COUNTER_SERVICE: {
                "instances": all.len(),
                "healthy_instances": all.iter().filter(|b| b.is_healthy()).count(),
                "connections": connections,
                "load_balancing": backends.policy.name(),
                "last_update": backends.changed_at(),
            }
        },
    }))
}

/// `GET /api/v1/system/services/health`: 200 while the counters can serve
/// (at least one healthy instance), else 503 in the error envelope.
pub async fn services_health(State(state): State<AppState>) -> Response {
    let backends = state.counter.backends();
    let (healthy, instances) = (backends.healthy_count(), backends.endpoint_count());
    if healthy == 0 {
        let message = format!("{COUNTER_SERVICE}: no healthy instance of {instances}");
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response();
    }
    let body = json!({
        "status": "success",
        "message": "All services are healthy",
        "data": {COUNTER_SERVICE: {"healthy_instances": healthy, "instances": instances}},
        "timestamp": unix_now(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// `GET /api/v1/system/metrics/stats`: where the metrics are.
pub async fn metrics_stats() -> impl IntoResponse {
    Json(json!({
        "status": "success",
        "data": {
            "metrics_enabled": true,
            "namespace": "tally_gateway",
            "endpoint": "/metrics on the admin port (TALLY_ADMIN_LISTEN)",
        },
    }))
}

/// `GET /api/v1/system/object-pools`: the original reported its Go
/// `sync.Pool` statistics; there is nothing real to report here.
pub async fn object_pools() -> ApiError {
    ApiError::not_found(
        "no object pools to report: the original project's Go sync.Pool statistics have no equivalent in tally \
         (request memory is bounded by the request limits instead); see /api/v1/system/metrics/stats",
    )
}
