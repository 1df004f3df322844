//! The operator's HTTP endpoint: `/metrics` for Prometheus, `/health` for
//! the liveness probe and `/ready` for the readiness probe. Both replicas
//! answer, leader or standby: a standby is healthy, just waiting.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use tally_runtime::http::HttpLimits;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, tally_runtime::metrics::CONTENT_TYPE)], metrics.render())
}

/// Serves until `shutdown` resolves, with the connection limits every tally
/// listener has (`TALLY_HTTP_*`).
pub async fn serve(
    listen: SocketAddr,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tally_runtime::net::bind(listen).await?;
    tracing::info!(%listen, "metrics and probes listening");
    let connections = metrics.connections.clone();
    tally_runtime::http::serve(listener, router(metrics), limits, connections, shutdown).await;
    Ok(())
}
