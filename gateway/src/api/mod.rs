//! The HTTP API (BRIEF §3): routes, body limit, JSON errors for every
//! rejection (unknown route, wrong method, oversized body), and request
//! metrics.

mod error;
mod handlers;
mod json;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;
pub use handlers::{AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    let metrics_state = state.clone();
    Router::new()
        .route("/api/v1/counter/increment", post(handlers::increment))
        .route("/api/v1/counter/batch-increment", post(handlers::batch_increment))
        .route("/api/v1/counter/batch", post(handlers::batch_get))
        .route("/api/v1/counter/{*path}", get(handlers::get_counter))
        .route("/api/v1/health", get(handlers::health))
        .route("/api/v1/ready", get(handlers::ready))
        .route("/api/v1/system/backends", get(handlers::backends))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(metrics_state, record))
        .with_state(state)
}

/// Counts every request by route template (not raw path: bounded labels).
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .http_requests
        .get_or_create(&[("route", route.clone()), ("method", method), ("status", status)])
        .inc();
    state.metrics.http_duration.get_or_create(&[("route", route)]).observe(started.elapsed().as_secs_f64());
    response
}
