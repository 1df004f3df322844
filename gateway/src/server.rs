//! Startup and shutdown of the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_runtime::http::{self, HttpLimits};
use tally_runtime::reload::ReloadError;
use tally_runtime::rt;
use tally_runtime::settings_file::{SettingsError, Source};
use tally_runtime::telemetry::Caller;
use tally_runtime::workers::Workers;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, App, AppState};
use crate::auth::Auth;
use crate::cache::ReadCache;
use crate::client::backends::{BackendError, Backends};
use crate::client::endpoint_metrics::EndpointMetrics;
use crate::client::{ClientSettings, Counter, Incrementer, Reader, discovery, kubernetes};
use crate::config::{AuthMode, Config, Discovery};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error("TALLY_DISCOVERY=dns needs TALLY_DNS_NAME (host:port of the counters' headless Service)")]
    DnsNameMissing,
    #[error("TALLY_DISCOVERY=kubernetes: no usable Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Kubernetes(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    UpstreamTls(#[from] crate::config::UpstreamTlsError),
    #[error(transparent)]
    Settings(#[from] ReloadError<SettingsError>),
    #[error(transparent)]
    ListenerTls(#[from] tally_runtime::tls::TlsReloadError),
    #[error("TALLY_CONSUL_ADDR: {0}")]
    Consul(#[from] tally_runtime::consul::ConsulError),
}

/// Runs the gateway: the public port is served thread-per-core by
/// `TALLY_WORKER_THREADS` workers ([`tally_runtime::workers`]), each with its
/// own connections, coalescers and share of the counter connections; the
/// caller's runtime (one control thread) accepts and hands each connection
/// to the least busy worker, and runs the admin port, discovery, health
/// checks and shutdown.
///
/// `settings` is the settings file the gateway started with, if any, whose
/// live settings ([`tally_runtime::live::GATEWAY`]) apply while it runs.
pub async fn run(config: Config, settings_file: Option<Source>) -> Result<(), StartupError> {
    let workers = Workers::start(rt::worker_threads(&config.runtime), "tally-worker").map_err(StartupError::Workers)?;
    let mut settings = config.client();
    settings.workers = workers.handles().to_vec();
    settings.tls = config.upstream_tls()?;
    let endpoint_metrics = EndpointMetrics::default();
    // The in-flight cap is the port's, whichever worker a request lands on.
    let in_flight = Arc::new(api::InFlightGate::new(config.max_in_flight as usize, body_budget(&config)));
    let metrics =
        Arc::new(Metrics::with_collectors(vec![Box::new(endpoint_metrics.clone()), Box::new(in_flight.clone())]));
    let listener_tls = config.tls.load(tally_runtime::tls::ALPN_HTTP)?.map(Arc::new);
    let reload_every = config.tls.reload_interval();
    if let Some(tls) = &listener_tls {
        tokio::spawn(tally_runtime::tls::keep_current(
            tls.clone(),
            reload_every,
            "listener",
            metrics.tls_reloads.clone(),
        ));
    }
    if let Some(tls) = &settings.tls {
        let config = tls.config.clone();
        tokio::spawn(tally_runtime::tls::keep_current(config, reload_every, "upstream", metrics.tls_reloads.clone()));
    }
    let backends = backends(&config, &settings).await?;
    endpoint_metrics.watch(backends.clone());
    let counter = Counter::new(backends.clone(), metrics.clone(), &settings);
    let cache = Arc::new(ReadCache::new(Duration::from_millis(config.cache_ttl_ms), config.cache_max_entries));
    let trace_caller = if config.trace_trust_caller { Caller::Trusted } else { Caller::Untrusted };
    let auth = Arc::new(match config.auth {
        AuthMode::None => Auth::none(),
        AuthMode::ApiKeys => Auth::api_keys(config.auth_keys_file.clone())?,
    });
    tokio::spawn(auth.clone().watch(Duration::from_millis(config.auth_reload_ms), metrics.clone()));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One App per worker, made on it: its coalescers run there.
    let apps: Vec<AppState> = workers
        .handles()
        .iter()
        .map(|worker| {
            let _on_worker = worker.enter();
            Arc::new(App {
                incrementer: Incrementer::new(&counter, &settings),
                reader: Reader::new(&counter, &settings),
                counter: counter.clone(),
                cache: cache.clone(),
                metrics: metrics.clone(),
                trace_caller,
                auth: auth.clone(),
                stopping: stopping.clone(),
            })
        })
        .collect();

    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: config.listen, source })?;
    let admin_addr =
        admin_listener.local_addr().map_err(|source| StartupError::Bind { addr: config.admin_listen, source })?;
    let endpoints: Vec<_> = config.counter_endpoints.iter().map(|e| tally_runtime::redact::userinfo(e)).collect();
    tracing::info!(
        http = %addr,
        https = listener_tls.is_some(),
        counter_tls = settings.tls.is_some(),
        admin = %admin_addr,
        workers = apps.len(),
        ?endpoints,
        "tally-gateway listening"
    );
    // Warm-up starts now; endpoints take traffic once their first check passed.
    let health = tokio::spawn(backends.health_loop(settings.health_interval, settings.connect_timeout));

    let limits = HttpLimits::from(&config.http);
    let body_timeout = Duration::from_millis(config.http_body_timeout_ms);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let apply = {
        let (counter, cache, in_flight) = (counter.clone(), cache.clone(), in_flight.clone());
        move |new: &Config| {
            counter.retune(&new.client());
            cache.retune(Duration::from_millis(new.cache_ttl_ms), new.cache_max_entries);
            in_flight.set_cap(new.max_in_flight as usize);
            in_flight.set_body_cap(body_budget(new));
            tally_runtime::live::apply_runtime(&new.runtime);
        }
    };
    let view =
        tally_runtime::live::start(settings_file, tally_runtime::live::GATEWAY, metrics.settings.clone(), apply)?;
    let public_workers = (workers.handles().iter().zip(&apps))
        .map(|(worker, app)| {
            http::Worker::on(worker.clone(), api::public_api(app.clone(), in_flight.clone(), body_timeout))
        })
        .collect();
    let public_conns = metrics.public_connections.clone();
    let public = tokio::spawn(http::serve_on(
        listener,
        public_workers,
        limits,
        public_conns,
        listener_tls,
        stopped(stop_rx.clone()),
    ));
    let admin_conns = metrics.admin_connections.clone();
    let admin = tokio::spawn(http::serve(
        admin_listener,
        api::admin_router(apps[0].clone()).merge(tally_runtime::live::router(view)),
        limits,
        admin_conns,
        stopped(stop_rx),
    ));

    tally_runtime::signal::shutdown().await;
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        delay_ms = config.shutdown_delay.shutdown_delay_ms,
        "shutting down: /ready failing and still serving for the delay, then finishing in-flight requests"
    );
    // Load balancers see /ready fail at their next probe and stop sending;
    // what they send meanwhile is still served, not reset by a closed listener.
    config.shutdown_delay.wait().await;
    let _ = stop_tx.send(true);
    // Bound the graceful phase: connections that stay busy past the timeout are cut.
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    if tokio::time::timeout(shutdown_timeout, async { tokio::join!(public, admin) }).await.is_err() {
        tracing::warn!("shutdown timeout passed with requests still open");
    }
    health.abort();
    drop(workers);
    tracing::info!("tally-gateway stopped");
    Ok(())
}

/// The counter endpoints, and the task that keeps them current when they
/// are discovered.
async fn backends(config: &Config, settings: &ClientSettings) -> Result<Arc<Backends>, StartupError> {
    Ok(match config.discovery {
        Discovery::Static => Arc::new(Backends::new(&config.counter_endpoints, settings)?),
        Discovery::Dns => {
            let name = config.dns_name.clone().ok_or(StartupError::DnsNameMissing)?;
            let backends = Arc::new(Backends::empty(settings));
            let interval = Duration::from_millis(config.dns_interval_ms);
            tokio::spawn(discovery::dns_loop(backends.clone(), name, interval));
            backends
        }
        Discovery::Consul => {
            let backends = Arc::new(Backends::empty(settings));
            let consul = tally_runtime::consul::Consul::new(&config.consul_addr, &config.consul_access)?;
            let wait = Duration::from_secs(config.consul_wait_s);
            let (service, tag) = (config.consul_service.clone(), config.consul_tag.clone());
            tokio::spawn(discovery::consul_loop(backends.clone(), consul, service, tag, wait));
            backends
        }
        Discovery::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(|e| StartupError::Kubernetes(e.to_string()))?;
            let namespace = config.k8s_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
            let backends = Arc::new(Backends::empty(settings));
            let (service, port) = (config.k8s_service.clone(), config.k8s_port_name.clone());
            tokio::spawn(kubernetes::kubernetes_loop(backends.clone(), client, namespace, service, port));
            backends
        }
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    tally_runtime::net::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })
}

/// The body budget in bytes; on a 32-bit target, a setting above its
/// address space is as good as no bound beyond that space.
fn body_budget(config: &Config) -> usize {
    usize::try_from(config.max_body_bytes_in_flight).unwrap_or(usize::MAX)
}
