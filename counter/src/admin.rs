//! The admin side port (`TALLY_ADMIN_LISTEN`): `/health` (liveness),
//! `/ready` (readiness) and `/metrics`. Kept off the gRPC port so probes
//! and scrapes never queue behind traffic.
//!
//! The readiness rule: a counter is ready while it takes writes of some
//! kind, that is from start until shutdown, store up or not. With the store
//! down it still takes async writes into its write-behind buffer, so
//! Kubernetes (and Consul, whose check asks the same) must keep routing to
//! it; whether it can serve reads and sync writes is the gRPC health of
//! `tally.counter.v1.CounterService`, which gateways check per endpoint,
//! and `/ready`'s body says it as `store_up`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness as last observed by the health loop.
#[derive(Default)]
pub struct Readiness {
    store_up: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(up, Ordering::Relaxed);
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

pub fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"healthy"}"#)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let store_up = state.readiness.store_up();
    let (status, body) = match (state.readiness.is_ready(), store_up) {
        (true, true) => (StatusCode::OK, r#"{"status":"ready","store_up":true}"#),
        (true, false) => (StatusCode::OK, r#"{"status":"ready","store_up":false}"#),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, tally_runtime::metrics::CONTENT_TYPE)], state.metrics.encode())
}
