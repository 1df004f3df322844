//! The HTTP API: the public port's service and the admin port's routes,
//! and what every public request passes through (outermost first): request
//! metrics, load shedding, reading the body within its size and time
//! limits, then the handler its route names ([`routes`]). Every rejection
//! is the JSON error envelope.

mod body;
mod caller;
mod error;
mod gate;
mod handlers;
mod json;
pub mod openapi;
mod path;
mod resource;
pub mod routes;
mod system;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use tower::Service;
use tracing::{Instrument, Span};

use crate::metrics::Metrics;
use crate::spans;

pub use error::ApiError;
pub use gate::InFlightGate;
pub use handlers::{App, AppState, MAX_BODY_BYTES};

/// The public port: the API and the original project's `/api/v1/health`,
/// routed by [`routes`]. `in_flight` is the bound on requests served at
/// once and on the bytes their bodies hold, shared by every worker serving
/// the port; `body_timeout` the time a body has to arrive complete.
pub fn public_api(state: AppState, in_flight: Arc<InFlightGate>, body_timeout: Duration) -> PublicApi {
    PublicApi(Arc::new(Edge { state, in_flight, body_timeout }))
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

/// The public port's service: every request through the edge (`Edge::serve`), then
/// to its handler ([`routes::serve`]). A clone is one reference count,
/// on the worker's own state.
#[derive(Clone)]
pub struct PublicApi(Arc<Edge>);

impl Service<Request> for PublicApi {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let edge = self.0.clone();
        Box::pin(async move { Ok(edge.serve(request).await) })
    }
}

/// What every public request passes through.
struct Edge {
    state: AppState,
    in_flight: Arc<InFlightGate>,
    body_timeout: Duration,
}

impl Edge {
    /// Per public request, outermost first: request metrics and the server
    /// span (also for a cancelled request); load shedding — beyond
    /// `max_in_flight` requests, 503 with `Retry-After` at once rather than
    /// queueing without limit (what Envoy's overload manager and
    /// `max_requests` circuit breaker do); the body read within its size and
    /// time limits and the body budget (shed the same way); then the handler.
    async fn serve(&self, request: Request) -> Response {
        let target = routes::target(request.method(), request.uri().path());
        let route = match target {
            routes::Target::Serve(route) | routes::Target::MethodNotAllowed(route) => route.template(),
            routes::Target::NotFound => "unmatched",
        };
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
        let span = if target == routes::Target::Serve(routes::Route::Health) {
            Span::none()
        } else {
            spans::http_server(request.headers(), self.state.trace_caller, method, route, request.uri().path())
        };
        let metrics = &self.state.metrics;
        let mut outcome = Outcome { metrics, route, method, span: span.clone(), started: Instant::now(), status: None };
        let response = async {
            let Some(mut pass) = self.in_flight.try_enter() else {
                metrics.shed("in_flight");
                return ApiError::overloaded("too many requests in flight; retry later").into_response();
            };
            routes::serve(target, request, &self.state, self.body_timeout, &mut pass).await
        }
        .instrument(span)
        .await;
        outcome.status = Some(response.status().as_u16());
        response
    }
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
