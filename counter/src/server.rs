//! Startup and shutdown: builds the parts, serves gRPC and the admin port,
//! and on SIGTERM/SIGINT stops in the order that loses nothing:
//! not-ready → stop accepting, finish in-flight calls → drain the
//! write-behind buffer → exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_proto::v1::counter_service_server::CounterServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Readiness};
use crate::buffer::WriteBuffer;
use crate::commit::GroupCommitter;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::CounterApi;
use crate::store::{Store, StoreError};

/// The grpc.health.v1 service name that reports whether counters can be served.
pub const HEALTH_SERVICE: &str = "tally.counter.v1.CounterService";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Consul(#[from] crate::registration::AddressUnknown),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })
}

pub async fn run(config: Config) -> Result<(), StartupError> {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(Store::from_url(&config.store, config.store_timeouts())?);
    let grpc_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| StartupError::Bind { addr: config.listen, source })?;
    let admin_addr =
        admin_listener.local_addr().map_err(|source| StartupError::Bind { addr: config.admin_listen, source })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let committer = GroupCommitter::start(store.clone(), config.commit(), metrics.clone());
    let buffer = Arc::new(WriteBuffer::new(config.buffer(), store.clone(), metrics.clone()));
    let drain_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let flusher = tokio::spawn(buffer.clone().run(shutdown_rx.clone(), drain_timeout));

    let readiness = Arc::new(Readiness::default());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Known but NOT_SERVING until the first store probe, so an early
    // health check or watch gets an answer rather than NOT_FOUND.
    for service in ["", HEALTH_SERVICE] {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    tokio::spawn(health_loop(
        store.clone(),
        readiness.clone(),
        reporter,
        metrics.clone(),
        Duration::from_millis(config.health_interval_ms),
        shutdown_rx.clone(),
    ));

    let admin_app = admin::router(readiness.clone(), metrics.clone());
    let mut admin_stop = shutdown_rx.clone();
    let admin = tokio::spawn(async move {
        let stopped = async move {
            let _ = admin_stop.wait_for(|stop| *stop).await;
        };
        axum::serve(admin_listener, admin_app).with_graceful_shutdown(stopped).await
    });

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = CounterApi {
        committer,
        buffer,
        store: store.clone(),
        metrics,
        buffer_full: config.buffer_full_policy,
        stream_window: config.stream_window as usize,
        shutdown: shutdown_rx,
    };

    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, store = store.kind(), "tally-counter listening");
    let registration = crate::registration::start(&config, grpc_addr)?;
    let stop_signal = async move {
        tally_runtime::signal::shutdown().await;
        tracing::info!("shutting down: finishing in-flight requests, then draining the write-behind buffer");
        readiness.set_shutting_down();
        if let Some(registration) = registration {
            registration.deregister().await;
        }
        let _ = shutdown_tx.send(true);
    };
    Server::builder()
        .trace_fn(crate::spans::rpc_server)
        .tcp_nodelay(true)
        .http2_keepalive_interval(config.http2_keepalive())
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CounterServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener).with_nodelay(Some(true)), stop_signal)
        .await?;

    if let Err(err) = flusher.await {
        tracing::error!(%err, "write-behind flusher failed");
    }
    if let Ok(Err(err)) = admin.await {
        tracing::warn!(%err, "admin server ended with an error");
    }
    tracing::info!("tally-counter stopped");
    Ok(())
}

/// Probes the store and publishes the result to /ready, grpc.health.v1 and
/// the `store_up` gauge; reports NOT_SERVING once shutdown begins.
async fn health_loop(
    store: Arc<Store>,
    readiness: Arc<Readiness>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    loop {
        let up = !*shutdown.borrow() && store.ping().await.is_ok();
        readiness.set_store_up(up);
        metrics.store_up.set(i64::from(up));
        if last != Some(up) {
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(HEALTH_SERVICE, status).await;
            tracing::info!(store = store.kind(), up, "store readiness changed");
            last = Some(up);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() && last == Some(false) {
            return;
        }
    }
}
