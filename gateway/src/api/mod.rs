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
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tracing::{Instrument, Span};

use crate::spans;

pub use error::ApiError;
pub use handlers::{App, AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    let metrics_state = state.clone();
    Router::new()
        .route(ROUTES[0], post(handlers::increment))
        .route(ROUTES[1], post(handlers::batch_increment))
        .route(ROUTES[2], post(handlers::batch_get))
        .route(ROUTES[3], get(handlers::get_counter))
        .route(ROUTES[4], get(handlers::health))
        .route(ROUTES[5], get(handlers::ready))
        .route(ROUTES[6], get(handlers::backends))
        .route(ROUTES[7], get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(reject_oversized))
        .layer(middleware::from_fn_with_state(metrics_state, record))
        .with_state(state)
}

/// Every route, in the order [`router`] registers them; also the `route`
/// label of the HTTP metrics (static strings: no allocation per request).
const ROUTES: [&str; 8] = [
    "/api/v1/counter/increment",
    "/api/v1/counter/batch-increment",
    "/api/v1/counter/batch",
    "/api/v1/counter/{*path}",
    "/api/v1/health",
    "/api/v1/ready",
    "/api/v1/system/backends",
    "/metrics",
];

/// How much of an oversized body is read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// Answers a body announced larger than [`MAX_BODY_BYTES`] with 413 — after
/// reading and discarding what the client sends (up to [`DRAIN_LIMIT`]): a
/// server that closes the connection on unread data makes the client's
/// kernel reset it, and the client sees a broken connection instead of the
/// 413. Bodies without a length are cut by the body limit as they stream.
async fn reject_oversized(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_none_or(|n| n <= MAX_BODY_BYTES as u64) {
        return next.run(request).await;
    }
    let mut body = request.into_body().into_data_stream();
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match body.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => break,
        }
    }
    ApiError::too_large(format!("request body exceeds {MAX_BODY_BYTES} bytes")).into_response()
}

/// Counts every request by route template (not raw path: bounded labels).
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let route = matched.and_then(|m| ROUTES.iter().find(|r| **r == m)).copied().unwrap_or("unmatched");
    let method = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        _ => "OTHER",
    };
    let started = Instant::now();
    // Probes and scrapes are not traced: they would drown the requests.
    let traced = !matches!(route, "/api/v1/health" | "/api/v1/ready" | "/metrics");
    let span =
        if traced { spans::http_server(request.headers(), method, route, request.uri().path()) } else { Span::none() };
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    spans::http_status(&span, status);
    // The access log (RUST_LOG=tally_gateway::api=debug), in the request's
    // span so the line carries its trace id.
    span.in_scope(|| {
        tracing::debug!(method, route, status, elapsed_us = started.elapsed().as_micros() as u64, "request")
    });
    state.metrics.record_http(route, method, status, started.elapsed());
    response
}
