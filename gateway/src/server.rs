//! Startup and shutdown of the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, App};
use crate::cache::ReadCache;
use crate::client::backends::{BackendError, Backends};
use crate::client::{Counter, Incrementer, discovery, kubernetes};
use crate::config::{Config, Discovery};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error(
        "TALLY_DISCOVERY={0:?} is not implemented yet; use `static` (TALLY_COUNTER_ENDPOINTS) or `dns` (TALLY_DNS_NAME)"
    )]
    DiscoveryNotImplemented(Discovery),
    #[error("TALLY_DISCOVERY=dns needs TALLY_DNS_NAME (host:port of the counters' headless Service)")]
    DnsNameMissing,
    #[error("TALLY_DISCOVERY=kubernetes: no usable Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Kubernetes(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

pub async fn run(config: Config) -> Result<(), StartupError> {
    let settings = config.client();
    let metrics = Arc::new(Metrics::new());
    let backends = match config.discovery {
        Discovery::Static => Arc::new(Backends::new(&config.counter_endpoints, &settings)?),
        Discovery::Dns => {
            let name = config.dns_name.clone().ok_or(StartupError::DnsNameMissing)?;
            let backends = Arc::new(Backends::empty(&settings));
            let interval = Duration::from_millis(config.dns_interval_ms);
            tokio::spawn(discovery::dns_loop(backends.clone(), name, interval));
            backends
        }
        Discovery::Consul => {
            let backends = Arc::new(Backends::empty(&settings));
            let consul = tally_runtime::consul::Consul::new(&config.consul_addr);
            let wait = Duration::from_secs(config.consul_wait_s);
            let (service, tag) = (config.consul_service.clone(), config.consul_tag.clone());
            tokio::spawn(discovery::consul_loop(backends.clone(), consul, service, tag, wait));
            backends
        }
        Discovery::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(|e| StartupError::Kubernetes(e.to_string()))?;
            let namespace = config.k8s_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
            let backends = Arc::new(Backends::empty(&settings));
            let (service, port) = (config.k8s_service.clone(), config.k8s_port_name.clone());
            tokio::spawn(kubernetes::kubernetes_loop(backends.clone(), client, namespace, service, port));
            backends
        }
    };
    let counter = Counter::new(backends.clone(), metrics.clone(), &settings);
    let state = Arc::new(App {
        incrementer: Incrementer::new(&counter, &settings),
        counter,
        cache: ReadCache::new(Duration::from_millis(config.cache_ttl_ms), config.cache_max_entries),
        metrics,
    });

    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartupError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: config.listen, source })?;
    tracing::info!(http = %addr, endpoints = ?config.counter_endpoints, "tally-gateway listening");
    // Warm-up starts now; endpoints take traffic once their first check passed.
    let health = tokio::spawn(backends.health_loop(settings.health_interval, settings.connect_timeout));

    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        tally_runtime::signal::shutdown().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stopping_tx.send(true);
    });
    let server = tokio::spawn(async move { server.await });
    // Bound the graceful phase: connections that stay busy past the timeout are cut.
    let result = tokio::select! {
        result = server => result,
        _ = async {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(shutdown_timeout).await;
        } => {
            tracing::warn!("shutdown timeout passed with requests still open");
            Ok(Ok(()))
        }
    };
    health.abort();
    match result {
        Ok(Ok(())) => {
            tracing::info!("tally-gateway stopped");
            Ok(())
        }
        Ok(Err(err)) => Err(StartupError::Serve(err)),
        Err(join) => Err(StartupError::Serve(std::io::Error::other(join))),
    }
}
