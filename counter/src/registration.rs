//! Self-registration in Consul: once the gRPC port listens,
//! the counter registers `TALLY_CONSUL_SERVICE` with a grpc.health.v1 check
//! and `DeregisterCriticalServiceAfter`, retrying in the background while
//! Consul is unreachable; on shutdown it deregisters before draining, so
//! gateways stop sending to it first.

use std::net::SocketAddr;
use std::time::Duration;

use tally_runtime::consul::{Check, Consul, ConsulError, Registration};
use tokio::task::JoinHandle;

use crate::config::Config;
use tally_proto::health;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("TALLY_CONSUL_SERVICE_ADDRESS is required when listening on {0} (which address should others use?)")]
    AddressUnknown(SocketAddr),
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

pub struct Registered {
    consul: Consul,
    id: String,
    task: JoinHandle<()>,
}

/// Starts registering (retrying every 2 s until Consul accepts). `None`
/// when Consul is not configured.
pub fn start(config: &Config, grpc: SocketAddr) -> Result<Option<Registered>, RegistrationError> {
    let Some(addr) = &config.consul_addr else { return Ok(None) };
    let address = match &config.consul_service_address {
        Some(address) => address.clone(),
        None if grpc.ip().is_unspecified() => return Err(RegistrationError::AddressUnknown(grpc)),
        None => grpc.ip().to_string(),
    };
    let id = format!("{}-{}-{}", config.consul_service, address, grpc.port());
    let registration = Registration {
        id: id.clone(),
        name: config.consul_service.clone(),
        address: address.clone(),
        port: grpc.port(),
        tags: config.consul_tags.clone(),
        check: Check {
            grpc_use_tls: config.tls.tls_cert_file.is_some(),
            // The readiness rule (see `admin`): passing while it takes
            // writes of some kind, so async writes reach it during a store
            // outage; gateways check the store-dependent service themselves.
            grpc: format!("{address}:{}/{}", grpc.port(), health::ASYNC_WRITES),
            interval: format!("{}s", config.consul_check_interval_s),
            timeout: "2s".into(),
            deregister_critical_service_after: format!("{}s", config.consul_deregister_after_s),
        },
    };
    let consul = Consul::new(addr, &config.consul_access)?;
    let task = tokio::spawn({
        let consul = consul.clone();
        async move {
            loop {
                match consul.register(&registration).await {
                    Ok(()) => {
                        tracing::info!(id = %registration.id, "registered in consul");
                        return;
                    }
                    Err(err) => tracing::warn!(%err, "consul registration failed; retrying in 2 s"),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
    Ok(Some(Registered { consul, id, task }))
}

impl Registered {
    /// Deregisters (best effort, bounded): called first on shutdown.
    pub async fn deregister(self) {
        self.task.abort();
        match tokio::time::timeout(Duration::from_secs(2), self.consul.deregister(&self.id)).await {
            Ok(Ok(())) => tracing::info!(id = %self.id, "deregistered from consul"),
            Ok(Err(err)) => tracing::warn!(%err, "consul deregistration failed"),
            Err(_) => tracing::warn!("consul deregistration timed out"),
        }
    }
}
