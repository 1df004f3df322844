//! `tally-reference`: the one-process service the chain is measured against
//! (`make bench-compare`). The plainest good way to serve tally's HTTP API:
//! an axum handler that validates the body with the same rules
//! (`tally_proto::json`), sends one `HINCRBY` / `HGET` over a single
//! multiplexed Redis connection (same key layout as tally), and answers in
//! the same JSON shapes. No cache, no coalescing, no middleware, no metrics.
//!
//!   TALLY_REFERENCE_LISTEN=127.0.0.1:8090 TALLY_STORE=redis://127.0.0.1:6379 tally-reference

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tally_proto::CounterKey;

/// Same allocator as the services it is compared with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tally-reference", about = "One-process reference: HTTP JSON → Redis")]
struct Args {
    #[arg(long, env = "TALLY_REFERENCE_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[arg(long, env = "TALLY_STORE", default_value = "redis://127.0.0.1:6379")]
    store: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"status": "error", "error": {"code": "error", "message": message}}))).into_response()
}

async fn increment(State(conn): State<MultiplexedConnection>, body: Bytes) -> Response {
    let inc = match tally_proto::json::increment(&body) {
        Ok(inc) => inc,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let key = format!("tally:{{{}}}", inc.key.resource_id());
    let mut conn = conn;
    let value: redis::RedisResult<i64> =
        redis::cmd("HINCRBY").arg(&key).arg(inc.key.counter_type()).arg(inc.delta).query_async(&mut conn).await;
    match value {
        Ok(value) => axum::Json(json!({"status": "success", "data": {
            "resource_id": inc.key.resource_id(),
            "counter_type": inc.key.counter_type(),
            "delta": inc.delta,
            "current_value": value,
        }}))
        .into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

async fn read(
    State(conn): State<MultiplexedConnection>,
    Path((resource_id, counter_type)): Path<(String, String)>,
) -> Response {
    let key = match CounterKey::new(resource_id, counter_type) {
        Ok(key) => key,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let mut conn = conn;
    let value: redis::RedisResult<Option<i64>> = redis::cmd("HGET")
        .arg(format!("tally:{{{}}}", key.resource_id()))
        .arg(key.counter_type())
        .query_async(&mut conn)
        .await;
    match value {
        Ok(value) => axum::Json(json!({"status": "success", "data": {
            "resource_id": key.resource_id(),
            "counter_type": key.counter_type(),
            "current_value": value.unwrap_or(0),
        }}))
        .into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = redis::Client::open(args.store.as_str()).unwrap_or_else(|e| panic!("TALLY_STORE: {e}"));
    let conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("connect to Redis: {e}"));
    let app = Router::new()
        .route("/api/v1/counter/increment", post(increment))
        .route("/api/v1/counter/{resource_id}/{counter_type}", get(read))
        .with_state(conn);
    let listener = tokio::net::TcpListener::bind(args.listen).await.unwrap_or_else(|e| panic!("listen: {e}"));
    let addr = listener.local_addr().unwrap_or(args.listen);
    println!("tally-reference listening http={addr}");
    // SIGTERM (or Ctrl-C) ends it cleanly: a profiling build
    // (`scripts/release-pgo.sh`) writes its profile only on a normal exit.
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(terminated()).await {
        eprintln!("tally-reference: {err}");
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => panic!("SIGTERM handler: {err}"),
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
