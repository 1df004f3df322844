//! Counter endpoints: a pool of HTTP/2 channels per endpoint, its health,
//! and the choice of endpoint per call.
//!
//! Each endpoint holds `pool_size` lazily-connected tonic channels (one
//! HTTP/2 connection each, PING keep-alive on) used round-robin, so load
//! spreads over several connections and server worker threads. An endpoint
//! takes traffic only while its last grpc.health.v1 check said SERVING
//! (warm-up: none does before its first successful check).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::ClientSettings;

/// The gRPC service name whose health decides whether an endpoint takes traffic.
pub const HEALTH_SERVICE: &str = "tally.counter.v1.CounterService";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid counter endpoint {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("no counter endpoints configured")]
    Empty,
}

/// One counter endpoint and its connection pool.
pub struct Backend {
    pub uri: String,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl Backend {
    fn new(uri: &str, settings: &ClientSettings) -> Result<Backend, BackendError> {
        let invalid = |reason: String| BackendError::InvalidUri { uri: uri.to_string(), reason };
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(settings.keepalive)
            .keep_alive_timeout(settings.keepalive.min(Duration::from_secs(20)))
            .keep_alive_while_idle(true);
        let channels = (0..settings.pool_size.max(1)).map(|_| endpoint.connect_lazy()).collect();
        Ok(Backend {
            uri: uri.to_string(),
            channels,
            next_channel: AtomicUsize::new(0),
            healthy: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The next channel of the pool, round-robin.
    pub fn channel(&self) -> Channel {
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    pub fn client(&self) -> CounterServiceClient<Channel> {
        CounterServiceClient::new(self.channel())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn pool_size(&self) -> usize {
        self.channels.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call as in flight until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Asks the endpoint's grpc.health.v1 whether the counter service is SERVING.
    async fn check(&self, timeout: Duration) -> bool {
        let mut health = HealthClient::new(self.channel());
        let request = HealthCheckRequest { service: HEALTH_SERVICE.to_string() };
        match tokio::time::timeout(timeout, health.check(request)).await {
            Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}

pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All endpoints and the round-robin cursor over the healthy ones.
pub struct Backends {
    list: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Backends {
    pub fn new(uris: &[String], settings: &ClientSettings) -> Result<Backends, BackendError> {
        let list: Vec<Arc<Backend>> = uris
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| Backend::new(u, settings).map(Arc::new))
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(BackendError::Empty);
        }
        Ok(Backends { list, next: AtomicUsize::new(0) })
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.list
    }

    pub fn healthy_count(&self) -> usize {
        self.list.iter().filter(|b| b.is_healthy()).count()
    }

    /// Round-robin over the healthy endpoints; `None` when none is.
    pub fn pick(&self) -> Option<Arc<Backend>> {
        self.pick_avoiding(None)
    }

    /// Like [`Backends::pick`], but not `avoid` (the endpoint a retry just
    /// failed on) while another healthy endpoint exists.
    pub fn pick_avoiding(&self, avoid: Option<&Arc<Backend>>) -> Option<Arc<Backend>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let healthy = |i: usize| self.list[i].is_healthy();
        let other = |i: usize| healthy(i) && avoid.is_none_or(|a| !Arc::ptr_eq(a, &self.list[i]));
        pick_round_robin(self.list.len(), start, other)
            .or_else(|| pick_round_robin(self.list.len(), start, healthy))
            .map(|i| self.list[i].clone())
    }

    /// Checks every endpoint now, then every `interval`, until the process ends.
    pub async fn health_loop(self: Arc<Self>, interval: Duration, timeout: Duration) {
        loop {
            for backend in &self.list {
                let healthy = backend.check(timeout).await;
                if backend.healthy.swap(healthy, Ordering::Relaxed) != healthy {
                    tracing::info!(endpoint = %backend.uri, healthy, "counter endpoint health changed");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// The first index at or after `start` (cyclically) that `usable` accepts.
fn pick_round_robin(len: usize, start: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    (0..len).map(|offset| (start + offset) % len).find(|&i| usable(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_unusable_endpoints() {
        let healthy = [true, false, true];
        let picks: Vec<Option<usize>> = (0..4).map(|start| pick_round_robin(3, start, |i| healthy[i])).collect();
        assert_eq!(picks, vec![Some(0), Some(2), Some(2), Some(0)]);
        assert_eq!(pick_round_robin(3, 0, |_| false), None);
    }

    #[tokio::test]
    async fn rejects_bad_uris_and_empty_lists() {
        let settings = ClientSettings::default();
        assert!(matches!(Backends::new(&[" ".into()], &settings), Err(BackendError::Empty)));
        assert!(matches!(Backends::new(&["not a uri".into()], &settings), Err(BackendError::InvalidUri { .. })));
        let ok = Backends::new(&["http://127.0.0.1:1".into()], &settings).expect("valid");
        assert_eq!(ok.all()[0].pool_size(), settings.pool_size);
        assert!(ok.pick().is_none(), "not warmed up yet");
    }
}
