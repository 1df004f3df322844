//! The public port's routes: which handler serves a request, decided by a
//! `match` on its path and method rather than by an axum `Router`.
//!
//! Why not the router: it boxes and moves each request's future through
//! several layers (route, method router, middleware, handler service),
//! which measured as a tenth of the gateway's CPU per increment. Here a
//! request costs one lookup; increments and counter `GET`s are called
//! directly, the other handlers are axum handlers (one boxed future each),
//! their extractors unchanged ([`serve`]). The
//! answers the router gave are kept: 404 for no route, 405 with `Allow`
//! for a method the route does not serve, `GET` routes answering `HEAD`
//! without a body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::header::{ALLOW, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use super::body::BodyError;
use super::error::ApiError;
use super::gate::Pass;
use super::handlers::{self, AppState};
use super::{body, caller, openapi, resource, system};

/// Where the paths of the counter routes start.
const COUNTER_PREFIX: &str = "/api/v1/counter/";

/// A public route. Its [`Route::template`] is the `route` label of the HTTP
/// metrics and spans (static strings: no allocation per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Increment,
    BatchIncrement,
    BatchGet,
    /// `/api/v1/counter/{*path}`: one counter or a whole resource.
    Counter,
    Health,
    GrpcPools,
    ServicesHealth,
    MetricsStats,
    ObjectPools,
    OpenApi,
}

/// Every route; a path is matched against the static ones in this order.
pub const ALL: [Route; 10] = [
    Route::Increment,
    Route::BatchIncrement,
    Route::BatchGet,
    Route::Counter,
    Route::Health,
    Route::GrpcPools,
    Route::ServicesHealth,
    Route::MetricsStats,
    Route::ObjectPools,
    Route::OpenApi,
];

impl Route {
    /// The route as a path template (`{*path}` for the rest of a path).
    pub fn template(self) -> &'static str {
        match self {
            Route::Increment => "/api/v1/counter/increment",
            Route::BatchIncrement => "/api/v1/counter/batch-increment",
            Route::BatchGet => "/api/v1/counter/batch",
            Route::Counter => "/api/v1/counter/{*path}",
            Route::Health => "/api/v1/health",
            Route::GrpcPools => "/api/v1/system/grpc-pools",
            Route::ServicesHealth => "/api/v1/system/services/health",
            Route::MetricsStats => "/api/v1/system/metrics/stats",
            Route::ObjectPools => "/api/v1/system/object-pools",
            Route::OpenApi => "/api/v1/openapi.json",
        }
    }

    /// True for the counter API's routes, which serve only an
    /// authenticated caller when API keys are on (the others need no key).
    pub fn needs_key(self) -> bool {
        matches!(self, Route::Increment | Route::BatchIncrement | Route::BatchGet | Route::Counter)
    }

    /// The methods it serves, as its 405 answers' `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Increment | Route::BatchIncrement | Route::BatchGet => "POST",
            Route::Counter => "GET,HEAD,DELETE",
            _ => "GET,HEAD",
        }
    }
}

/// The route of `path` (as sent, still percent-encoded); `None` when no
/// route has it. A static path wins over the counter routes' `{*path}`,
/// which needs at least one byte after its prefix.
pub fn route(path: &str) -> Option<Route> {
    let exact = ALL.iter().copied().find(|route| route.template() == path);
    exact.or_else(|| path.strip_prefix(COUNTER_PREFIX).filter(|rest| !rest.is_empty()).map(|_| Route::Counter))
}

/// What serves a request: a route's handler, or one of the refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The route serves this method (`HEAD` as a `GET` without body).
    Serve(Route),
    /// The path has a route that does not serve this method.
    MethodNotAllowed(Route),
    NotFound,
}

/// Which handler serves `method` on `path`.
pub fn target(method: &Method, path: &str) -> Target {
    let Some(route) = route(path) else { return Target::NotFound };
    let serves = match route {
        Route::Increment | Route::BatchIncrement | Route::BatchGet => method == Method::POST,
        Route::Counter => matches!(*method, Method::GET | Method::HEAD | Method::DELETE),
        _ => matches!(*method, Method::GET | Method::HEAD),
    };
    if serves { Target::Serve(route) } else { Target::MethodNotAllowed(route) }
}

/// Serves `request` on `target`: its body read within its limits, then
/// its handler, with the request's parts and the body's bytes. Single
/// increments and `GET`s of a counter, the hot paths, are called directly;
/// the other handlers through axum's `Handler` (a boxed future, the request
/// rebuilt around its body). Going through axum for every route copied the
/// request and its futures 12.4 KB per increment, against 8.7 KB this way
/// (counted with a uprobe on `memmove`).
pub async fn serve(
    target: Target,
    request: Request,
    state: &AppState,
    body_timeout: Duration,
    pass: &mut Pass<'_>,
) -> Response {
    let (mut parts, body) = request.into_parts();
    // With API keys on, the caller is known before its body is read: a
    // client without a key cannot make the gateway hold a body for it.
    if let Target::Serve(route) = target
        && route.needs_key()
        && let Err(refused) = caller::authenticate_early(&mut parts, state)
    {
        return refused.into_response();
    }
    let bytes = match body::bytes(&parts, body, body_timeout, pass).await {
        Ok(bytes) => bytes,
        Err(refused) => {
            if refused == BodyError::OverBudget {
                state.metrics.shed("body_bytes");
            }
            return ApiError::from(refused).into_response();
        }
    };
    let route = match target {
        Target::Serve(route) => route,
        Target::MethodNotAllowed(route) => {
            let mut response = handlers::method_not_allowed().await.into_response();
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(route.allow()));
            return response;
        }
        Target::NotFound => return handlers::not_found().await.into_response(),
    };
    let head = parts.method == Method::HEAD;
    let response = match route {
        Route::Increment => handlers::increment(state, &mut parts, bytes).await.into_response(),
        Route::Counter if parts.method == Method::DELETE => via_axum(resource::reset, parts, bytes, state).await,
        Route::Counter => resource::get(state, &mut parts).await.into_response(),
        Route::BatchIncrement => via_axum(handlers::batch_increment, parts, bytes, state).await,
        Route::BatchGet => via_axum(handlers::batch_get, parts, bytes, state).await,
        Route::Health => via_axum(handlers::health, parts, bytes, state).await,
        Route::GrpcPools => via_axum(system::grpc_pools, parts, bytes, state).await,
        Route::ServicesHealth => via_axum(system::services_health, parts, bytes, state).await,
        Route::MetricsStats => via_axum(system::metrics_stats, parts, bytes, state).await,
        Route::ObjectPools => via_axum(system::object_pools, parts, bytes, state).await,
        Route::OpenApi => via_axum(openapi::serve, parts, bytes, state).await,
    };
    if head { without_body(response) } else { response }
}

/// An axum handler called on the request rebuilt from its parts and body.
fn via_axum<H, T>(handler: H, parts: Parts, bytes: Bytes, state: &AppState) -> H::Future
where
    H: Handler<T, AppState>,
{
    handler.call(Request::from_parts(parts, Body::from(bytes)), state.clone())
}

/// The answer to a `HEAD`: the `GET` answer's head, its length kept.
fn without_body(mut response: Response) -> Response {
    if !response.headers().contains_key(CONTENT_LENGTH)
        && let Some(length) = response.body().size_hint().exact()
    {
        response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    *response.body_mut() = axum::body::Body::empty();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_static_path_is_its_own_route() {
        for route in ALL.into_iter().filter(|r| *r != Route::Counter) {
            assert_eq!(super::route(route.template()), Some(route));
        }
    }

    #[test]
    fn the_counter_routes_take_the_rest_of_the_path() {
        for path in [
            "/api/v1/counter/post:1/likes",
            "/api/v1/counter/post:1",
            "/api/v1/counter/increment/",
            "/api/v1/counter//x",
        ] {
            assert_eq!(route(path), Some(Route::Counter), "{path}");
        }
    }

    #[test]
    fn other_paths_have_no_route() {
        for path in
            ["/", "/api/v1/counter/", "/api/v1/counter", "/api/v1/health/", "/API/v1/health", "/api/v2/health", ""]
        {
            assert_eq!(route(path), None, "{path}");
        }
    }

    #[test]
    fn methods_are_matched_per_route() {
        let increment = "/api/v1/counter/increment";
        assert_eq!(target(&Method::POST, increment), Target::Serve(Route::Increment));
        assert_eq!(target(&Method::GET, increment), Target::MethodNotAllowed(Route::Increment));
        let counter = "/api/v1/counter/post:1/likes";
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            assert_eq!(target(&method, counter), Target::Serve(Route::Counter), "{method}");
        }
        assert_eq!(target(&Method::PUT, counter), Target::MethodNotAllowed(Route::Counter));
        assert_eq!(target(&Method::HEAD, "/api/v1/health"), Target::Serve(Route::Health));
        assert_eq!(target(&Method::POST, "/api/v1/health"), Target::MethodNotAllowed(Route::Health));
        assert_eq!(target(&Method::GET, "/nope"), Target::NotFound);
    }

    #[test]
    fn allow_lists_what_each_route_serves() {
        for route in ALL {
            let allowed: Vec<&str> = route.allow().split(',').collect();
            for method in [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                let path = if route == Route::Counter { "/api/v1/counter/a/b" } else { route.template() };
                let serves = target(&method, path) == Target::Serve(route);
                assert_eq!(serves, allowed.contains(&method.as_str()), "{method} {path}");
            }
        }
    }

    #[tokio::test]
    async fn a_head_answer_keeps_the_length_and_drops_the_body() {
        let response = without_body(axum::Json(serde_json::json!({"a": 1})).into_response());
        assert_eq!(response.headers()[CONTENT_LENGTH], "7");
        let body = axum::body::to_bytes(response.into_body(), 1024).await.expect("body");
        assert!(body.is_empty());
    }
}
