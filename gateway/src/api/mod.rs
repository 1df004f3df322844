//! The HTTP API: routes of the public and admin ports, and what every public
//! request passes through (outermost first): request metrics, load
//! shedding, reading the body within its size and time limits, then the
//! handler. Every rejection is the JSON error envelope.

mod body;
mod caller;
mod error;
mod handlers;
mod json;
pub mod openapi;
mod path;
mod resource;
mod system;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tracing::{Instrument, Span};

use crate::metrics::Metrics;
use crate::spans;

pub use error::ApiError;
pub use handlers::{App, AppState, MAX_BODY_BYTES};

/// Per-request bounds of the public port.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests served at once; more are shed with 503.
    pub max_in_flight: usize,
    /// Time for a body to arrive complete.
    pub body_timeout: Duration,
}

/// The public port: the API and the original project's `/api/v1/health`.
/// `in_flight` holds `limits.max_in_flight` permits, shared by every worker
/// serving the port.
pub fn public_router(state: AppState, limits: RequestLimits, in_flight: Arc<Semaphore>) -> Router {
    Router::new()
        .route(ROUTES[0], post(handlers::increment))
        .route(ROUTES[1], post(handlers::batch_increment))
        .route(ROUTES[2], post(handlers::batch_get))
        .route(ROUTES[3], get(resource::get).delete(resource::reset))
        .route(ROUTES[4], get(handlers::health))
        .route(ROUTES[5], get(system::grpc_pools))
        .route(ROUTES[6], get(system::services_health))
        .route(ROUTES[7], get(system::metrics_stats))
        .route(ROUTES[8], get(system::object_pools))
        .route(ROUTES[9], get(openapi::serve))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(Edge { state: state.clone(), slots: in_flight, limits }, edge))
        .with_state(state)
}

/// The admin port: probes, metrics and the detailed backend view (pod
/// addresses), none of which belong on the public network.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/api/v1/system/backends", get(handlers::backends))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// Every public route, in the order [`public_router`] registers them; also
/// the `route` label of the HTTP metrics (static strings: no allocation per
/// request).
const ROUTES: [&str; 10] = [
    "/api/v1/counter/increment",
    "/api/v1/counter/batch-increment",
    "/api/v1/counter/batch",
    "/api/v1/counter/{*path}",
    "/api/v1/health",
    "/api/v1/system/grpc-pools",
    "/api/v1/system/services/health",
    "/api/v1/system/metrics/stats",
    "/api/v1/system/object-pools",
    "/api/v1/openapi.json",
];

/// What every public request passes through, in one layer (one boxed
/// service instead of three: measured cheaper per request).
#[derive(Clone)]
struct Edge {
    state: AppState,
    slots: Arc<Semaphore>,
    limits: RequestLimits,
}

/// Per public request, outermost first: request metrics and the server span
/// (also for a cancelled request); load shedding — beyond `max_in_flight`
/// requests, 503 with `Retry-After` at once rather than queueing without
/// limit (what Envoy's overload manager and `max_requests` circuit breaker
/// do); the body read within its size and time limits; then the handler.
async fn edge(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    // Route template, not raw path: bounded labels, static strings.
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
    // The liveness route is not traced: probes would drown the requests.
    let span = if route == "/api/v1/health" {
        Span::none()
    } else {
        spans::http_server(request.headers(), edge.state.trace_caller, method, route, request.uri().path())
    };
    let metrics = &edge.state.metrics;
    let mut outcome = Outcome { metrics, route, method, span: span.clone(), started: Instant::now(), status: None };
    let response = async {
        let Ok(_slot) = edge.slots.try_acquire() else {
            edge.state.metrics.shed("in_flight");
            return ApiError::overloaded("too many requests in flight; retry later").into_response();
        };
        match body::read(request, edge.limits.body_timeout).await {
            Ok(request) => next.run(request).await,
            Err(refused) => refused,
        }
    }
    .instrument(span)
    .await;
    outcome.status = Some(response.status().as_u16());
    response
}

/// Records one request when it ends — also when it is cancelled (the client
/// went away before the answer), which is recorded as status 499, the code
/// nginx logs for "client closed request".
struct Outcome<'a> {
    metrics: &'a Metrics,
    route: &'static str,
    method: &'static str,
    span: Span,
    started: Instant,
    status: Option<u16>,
}

/// The status recorded for a request whose client went away first.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(CLIENT_CLOSED_REQUEST);
        let (method, route, elapsed) = (self.method, self.route, self.started.elapsed());
        spans::http_status(&self.span, status);
        // The access log (RUST_LOG=tally_gateway::api=debug), in the request's
        // span so the line carries its trace id.
        self.span
            .in_scope(|| tracing::debug!(method, route, status, elapsed_us = elapsed.as_micros() as u64, "request"));
        self.metrics.record_http(route, method, status, elapsed);
    }
}
