//! The original project's `/api/v1/system/*` routes on the public port, so
//! its dashboards and scripts keep working. They report counts and states,
//! never internal addresses (those are on the admin port's
//! `/api/v1/system/backends`), and no figure without a real source.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::handlers::AppState;
use super::json::{success_response, unix_now};

/// The counters, under the name the original listed its service by.
#[derive(Serialize, ToSchema)]
pub struct ByService<T> {
    #[serde(rename = "counter-service")]
    pub counter_service: T,
}

/// One service's instances and pooled connections.
#[derive(Serialize, ToSchema)]
pub struct PoolView {
    pub instances: usize,
    pub healthy_instances: usize,
    /// gRPC connections pooled to the instances.
    pub connections: usize,
    #[schema(value_type = String, example = "round_robin")]
    pub load_balancing: &'static str,
    /// When the set of instances last changed, Unix seconds.
    pub last_update: u64,
}

/// How many instances of a service are healthy.
#[derive(Serialize, ToSchema)]
pub struct InstanceHealth {
    pub healthy_instances: usize,
    pub instances: usize,
}

/// `GET /api/v1/system/services/health` while the counters can serve.
#[derive(Serialize, ToSchema)]
pub struct ServicesHealth {
    /// Always `success`.
    #[schema(value_type = String, example = "success")]
    pub status: &'static str,
    #[schema(value_type = String)]
    pub message: &'static str,
    pub data: ByService<InstanceHealth>,
    /// Now, Unix seconds.
    pub timestamp: u64,
}

/// Where the metrics are.
#[derive(Serialize, ToSchema)]
pub struct MetricsStats {
    pub metrics_enabled: bool,
    #[schema(value_type = String, example = "tally_gateway")]
    pub namespace: &'static str,
    #[schema(value_type = String)]
    pub endpoint: &'static str,
}

/// `GET /api/v1/system/grpc-pools`: per service, its instances, how many
/// are healthy, the gRPC connections pooled to them, and when the set of
/// instances last changed.
pub async fn grpc_pools(State(state): State<AppState>) -> impl IntoResponse {
    let backends = state.counter.backends();
    let all = backends.all();
    let view = PoolView {
        instances: all.len(),
        healthy_instances: all.iter().filter(|b| b.is_healthy()).count(),
        connections: all.iter().map(|b| b.pool_size()).sum(),
        load_balancing: backends.policy().name(),
        last_update: backends.changed_at(),
    };
    success_response(ByService { counter_service: view })
}

/// `GET /api/v1/system/services/health`: 200 while the counters can serve
/// (at least one healthy instance), else 503 in the error envelope.
pub async fn services_health(State(state): State<AppState>) -> Response {
    let backends = state.counter.backends();
    let (healthy, instances) = (backends.healthy_count(), backends.endpoint_count());
    if healthy == 0 {
        let message = format!("counter-service: no healthy instance of {instances}");
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response();
    }
    let body = ServicesHealth {
        status: "success",
        message: "All services are healthy",
        data: ByService { counter_service: InstanceHealth { healthy_instances: healthy, instances } },
        timestamp: unix_now(),
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// `GET /api/v1/system/metrics/stats`: where the metrics are.
pub async fn metrics_stats() -> impl IntoResponse {
    success_response(MetricsStats {
        metrics_enabled: true,
        namespace: "tally_gateway",
        endpoint: "/metrics on the admin port (TALLY_ADMIN_LISTEN)",
    })
}

/// `GET /api/v1/system/object-pools`: the original reported its Go
/// `sync.Pool` statistics; there is nothing real to report here.
pub async fn object_pools() -> ApiError {
    ApiError::not_found(OBJECT_POOLS)
}

/// Why `/api/v1/system/object-pools` is a 404.
const OBJECT_POOLS: &str = "no object pools to report: the original project's Go sync.Pool statistics have no \
     equivalent in tally (request memory is bounded by the request limits instead); see /api/v1/system/metrics/stats";
