//! Startup and shutdown: builds the parts, serves gRPC and the admin port,
//! and on SIGTERM/SIGINT stops in the order that loses nothing:
//! not-ready → stop accepting, finish in-flight calls → drain the
//! write-behind buffer → exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tally_proto::health;

use tally_proto::v1::counter_service_server::CounterServiceServer;
use tally_runtime::http::HttpLimits;
use tally_runtime::reload::ReloadError;
use tally_runtime::settings_file::{SettingsError, Source};
use tally_runtime::workers::Workers;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Readiness};
use crate::buffer::WriteBuffer;
use crate::commit::{CommitLimits, GroupCommitter};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::CounterApi;
use crate::store::{Store, StoreError};
use crate::{grpc_serve, incoming};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Consul(#[from] crate::registration::RegistrationError),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tally_runtime::tls::TlsReloadError),
    #[error(transparent)]
    Settings(#[from] ReloadError<SettingsError>),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    tally_runtime::net::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })
}

/// Runs the counter; `settings` is the settings file it started with, if
/// any, whose live settings ([`tally_runtime::live::COUNTER`]) apply while it runs.
pub async fn run(config: Config, settings: Option<Source>) -> Result<(), StartupError> {
    let metrics = Arc::new(Metrics::new());
    let store_options = config.store_options()?;
    let store = Arc::new(Store::from_url(&config.store, &store_options)?);
    let grpc_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| StartupError::Bind { addr: config.listen, source })?;
    let admin_addr =
        admin_listener.local_addr().map_err(|source| StartupError::Bind { addr: config.admin_listen, source })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Set first on SIGTERM: health turns NOT_SERVING while calls are still
    // served (`TALLY_SHUTDOWN_DELAY_MS`); `shutdown` then stops the servers.
    let (draining_tx, draining_rx) = watch::channel(false);
    let buffer = Arc::new(WriteBuffer::new(config.buffer(), store.clone(), metrics.clone()));
    let drain_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let flusher = tokio::spawn(buffer.clone().run(shutdown_rx.clone(), drain_timeout));

    let readiness = Arc::new(Readiness::default());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Known but NOT_SERVING until the first store probe, so an early
    // health check or watch gets an answer rather than NOT_FOUND.
    for service in ["", health::COUNTER_SERVICE] {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    reporter.set_service_status(health::ASYNC_WRITES, ServingStatus::Serving).await;

    let stream_window = Arc::new(AtomicUsize::new(config.stream_window as usize));
    let apply = {
        let (buffer, stream_window) = (buffer.clone(), stream_window.clone());
        move |new: &Config| {
            buffer.retune(&new.buffer());
            stream_window.store(new.stream_window as usize, Ordering::Relaxed);
            tally_runtime::live::apply_runtime(&new.runtime);
        }
    };
    let settings = tally_runtime::live::start(settings, tally_runtime::live::COUNTER, metrics.settings.clone(), apply)?;
    let admin_app = admin::router(readiness.clone(), metrics.clone()).merge(tally_runtime::live::router(settings));
    let mut admin_stop = shutdown_rx.clone();
    let admin = tokio::spawn(tally_runtime::http::serve(
        admin_listener,
        admin_app,
        HttpLimits::from(&config.http),
        metrics.admin_connections.clone(),
        async move {
            let _ = admin_stop.wait_for(|stop| *stop).await;
        },
    ));

    let workers = Workers::start(tally_runtime::rt::worker_threads(&config.runtime), "tally-worker")
        .map_err(StartupError::Workers)?;
    let tls = config.tls.load(tally_runtime::tls::ALPN_H2)?.map(Arc::new);
    if let Some(tls) = &tls {
        let reloads = metrics.tls_reloads.clone();
        tokio::spawn(tally_runtime::tls::keep_current(tls.clone(), config.tls.reload_interval(), "listener", reloads));
    }
    let incoming = incoming::bounded(
        grpc_listener,
        config.connection_limits(),
        metrics.grpc_connections.clone(),
        workers.handles(),
        tls.clone(),
    );
    tracing::info!(grpc = %grpc_addr, tls = tls.is_some(), mutual_tls = config.tls.tls_client_ca_file.is_some(), admin = %admin_addr, store = store.kind(), workers = workers.handles().len(), "tally-counter listening");
    let registration = crate::registration::start(&config, grpc_addr)?;
    let max_message = config.grpc_max_message_bytes as usize;
    // Thread-per-core: each worker serves its own connections with its own
    // server, group committer and store connections; the write-behind
    // flusher, probes and shutdown stay on this (control) thread.
    let commit_limits = CommitLimits::new(&config.commit());
    let mut servers = Vec::new();
    let mut probed = vec![StoreOn { worker: tokio::runtime::Handle::current(), store: store.clone() }];
    for (worker, conns) in workers.handles().iter().zip(incoming) {
        let store = store.for_worker(&config.store, &store_options)?;
        probed.push(StoreOn { worker: worker.clone(), store: store.clone() });
        let committer = {
            let _on_worker = worker.enter();
            GroupCommitter::start(store.clone(), config.commit(), &commit_limits, metrics.clone())
        };
        let api = CounterApi {
            committer,
            buffer: buffer.clone(),
            store,
            metrics: metrics.clone(),
            stream_window: stream_window.clone(),
            shutdown: shutdown_rx.clone(),
        };
        // Both reflection versions: grpcio's reflection client, older
        // grpcurl/grpcui and Postman speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tally_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
        let routes = Routes::new(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                CounterServiceServer::new(api)
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            )
            .prepare();
        let idle_closed = metrics.grpc_connections.idle_closed.clone();
        let grpc = grpc_serve::serve(conns, routes, config.grpc_serving(), idle_closed, shutdown_rx.clone());
        servers.push(worker.spawn(grpc));
    }
    tokio::spawn(health_loop(
        probed,
        readiness.clone(),
        reporter,
        metrics.clone(),
        Duration::from_millis(config.health_interval_ms),
        draining_rx,
    ));
    let grpc = async {
        for server in servers {
            if let Err(err) = server.await {
                tracing::warn!(%err, "gRPC worker failed");
            }
        }
    };

    tally_runtime::signal::shutdown().await;
    tracing::info!(
        delay_ms = config.shutdown_delay.shutdown_delay_ms,
        "shutting down: NOT_SERVING and still serving for the delay, then finishing in-flight requests and draining the write-behind buffer"
    );
    readiness.set_shutting_down();
    let _ = draining_tx.send(true);
    if let Some(registration) = registration {
        registration.deregister().await;
    }
    // Gateways see NOT_SERVING (or Consul the deregistration) at their next
    // check and stop sending; what they send meanwhile is still served,
    // where a closed listener would reset connections mid-handshake and
    // leave their calls' outcome unknown.
    config.shutdown_delay.wait().await;
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let _ = shutdown_tx.send(true);
    // Streams stop reading at once; connections that are still open at the
    // deadline (a client that never reads its responses) are cut.
    if tokio::time::timeout_at(deadline, grpc).await.is_err() {
        tracing::warn!("shutdown timeout passed with gRPC connections still open; closing them");
    }
    // The flusher drains within the same deadline (it measures it itself).
    if let Err(err) = flusher.await {
        tracing::error!(%err, "write-behind flusher failed");
    }
    if tokio::time::timeout_at(deadline, admin).await.is_err() {
        tracing::warn!("admin connections still open at the shutdown deadline");
    }
    drop(workers);
    tracing::info!("tally-counter stopped");
    Ok(())
}

/// A store and the thread that uses it.
struct StoreOn {
    worker: tokio::runtime::Handle,
    store: Arc<Store>,
}

/// `Ok` when every store answers, else the first failure's reason (its
/// text is redacted: no password). Each is probed on its own thread, so a
/// probe that (re)connects a worker's store leaves the connection's task
/// on that worker, not here.
async fn all_up(stores: &[StoreOn]) -> Result<(), String> {
    let probes = stores.iter().map(|StoreOn { worker, store }| {
        let store = store.clone();
        worker.spawn(async move { store.ping().await.map_err(|err| err.to_string()) })
    });
    for probe in futures_util::future::join_all(probes).await {
        probe.map_err(|err| format!("probe failed: {err}"))??;
    }
    Ok(())
}

/// Probes the stores (the control thread's and each worker's) and publishes
/// the result to grpc.health.v1 ([`health::COUNTER_SERVICE`]), /ready's body and the
/// `store_up` gauge: up only when every one answers, so no worker takes
/// requests it would fail. Reports NOT_SERVING (also for
/// [`health::ASYNC_WRITES`]) once shutdown begins.
async fn health_loop(
    stores: Vec<StoreOn>,
    readiness: Arc<Readiness>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    loop {
        let probed = if *shutdown.borrow() { Err("shutting down".to_string()) } else { all_up(&stores).await };
        let up = probed.is_ok();
        readiness.set_store_up(up);
        metrics.store_up.set(i64::from(up));
        if last != Some(up) {
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(health::COUNTER_SERVICE, status).await;
            match &probed {
                Ok(()) => tracing::info!(
                    store = stores[0].store.kind(),
                    up,
                    "{}",
                    tally_runtime::log_events::STORE_READINESS_CHANGED
                ),
                Err(reason) if *shutdown.borrow() => {
                    tracing::info!(store = stores[0].store.kind(), up, %reason, "{}", tally_runtime::log_events::STORE_READINESS_CHANGED)
                }
                // Why, e.g. a refused connection or an untrusted certificate (redacted: no password).
                Err(reason) => {
                    tracing::warn!(store = stores[0].store.kind(), up, %reason, "{}", tally_runtime::log_events::STORE_READINESS_CHANGED)
                }
            }
            last = Some(up);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() && last == Some(false) {
            reporter.set_service_status(health::ASYNC_WRITES, ServingStatus::NotServing).await;
            return;
        }
    }
}
