//! Counter endpoints: each one's connection pool ([`super::pool`]), its
//! health, and the choice of endpoint per call. An endpoint takes traffic
//! only while its last grpc.health.v1 check said SERVING (warm-up: none
//! does before its first successful check).
//!
//! The balancing policy, the breaker thresholds, the ejection cap and the
//! pool size change live ([`Backends::retune`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tally_proto::health;
use tally_runtime::redact;

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use arc_swap::ArcSwap;

use super::ClientSettings;
use super::balance::{self, Candidate, Policy};
use super::batch_stream::{BatchStreams, IncrementBatches, ReadBatches};
use super::breaker::{Breaker, BreakerSettings};
use super::endpoint_spec::{dial_uri, parse_weight, plan_update};
use super::pool::ChannelPool;
use super::whole_body::WholeBody;

/// A client of one counter endpoint: its channel, each unary request sent
/// as one DATA frame ([`WholeBody`]).
pub type CounterClient = CounterServiceClient<WholeBody<Channel>>;

/// What a call needs of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Its store: reads and sync writes (`grpc.health.v1` service
    /// [`health::COUNTER_SERVICE`] SERVING).
    Store,
    /// Only its write-behind buffer: async batches, which a counter takes
    /// while its store is down ([`health::ASYNC_WRITES`] SERVING).
    AsyncWrites,
}

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
    /// The endpoint as logs, metric labels, spans and the backend view show
    /// it: `uri` with any user-info masked.
    pub name: String,
    /// Share of traffic under the `weighted` policy.
    pub weight: u32,
    pool: ChannelPool,
    /// The coalescers' batches, on streams per worker.
    increment_streams: BatchStreams<IncrementBatches>,
    read_streams: BatchStreams<ReadBatches>,
    healthy: AtomicBool,
    takes_async: AtomicBool,
    in_flight: AtomicUsize,
    /// Calls the balancer sent here (every attempt counts).
    picks: AtomicU64,
    /// Breaker transitions seen after calls: to open, to closed.
    opened: AtomicU64,
    closed: AtomicU64,
    pub breaker: Breaker,
}

impl Backend {
    fn new(
        uri: &str,
        weight: u32,
        settings: &ClientSettings,
        breaker: &Arc<ArcSwap<BreakerSettings>>,
    ) -> Result<Backend, BackendError> {
        let invalid = |reason: String| BackendError::InvalidUri { uri: redact::userinfo(uri).into_owned(), reason };
        let dial = dial_uri(uri, settings.tls.is_some()).map_err(|reason| invalid(reason.to_string()))?;
        let pool = ChannelPool::new(dial.clone(), settings).map_err(|e| invalid(e.to_string()))?;
        Ok(Backend {
            uri: uri.to_string(),
            name: redact::userinfo(&dial).into_owned(),
            weight,
            breaker: Breaker::new(breaker.clone()),
            pool,
            increment_streams: BatchStreams::new(settings.workers.len(), settings.request_timeout),
            read_streams: BatchStreams::new(settings.workers.len(), settings.request_timeout),
            healthy: AtomicBool::new(false),
            takes_async: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        })
    }

    /// The next channel of the calling worker's pool, round-robin.
    pub fn channel(&self) -> Channel {
        self.pool.channel()
    }

    pub fn client(&self) -> CounterClient {
        CounterServiceClient::new(WholeBody(self.channel()))
    }

    /// Sends a batch of increments on one of the calling worker's
    /// `StreamBatchIncrements` streams to this endpoint
    /// ([`super::batch_stream`]), or as a unary `BatchIncrement` to an
    /// endpoint that does not serve them.
    pub async fn stream_batch(
        &self,
        request: BatchIncrementRequest,
    ) -> Result<tonic::Response<BatchIncrementResponse>, tonic::Status> {
        self.increment_streams.send(|| self.channel(), || self.client(), request).await
    }

    /// Sends a batch of reads as [`Backend::stream_batch`] does increments,
    /// on `StreamBatchGet` streams.
    pub async fn stream_batch_get(
        &self,
        request: BatchGetRequest,
    ) -> Result<tonic::Response<BatchGetResponse>, tonic::Status> {
        self.read_streams.send(|| self.channel(), || self.client(), request).await
    }

    /// Whether its store-backed service is SERVING (reads, sync writes).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks it as having passed its health check (tests of the layers
    /// above, which need endpoints to choose from).
    #[cfg(test)]
    pub(crate) fn mark_healthy(&self) {
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// Whether it takes async writes (possibly with its store down).
    pub fn takes_async(&self) -> bool {
        self.takes_async.load(Ordering::Relaxed)
    }

    /// Whether its last health check says it can serve a call that needs `need`.
    pub fn serves(&self, need: Need) -> bool {
        match need {
            Need::Store => self.is_healthy(),
            Need::AsyncWrites => self.is_healthy() || self.takes_async(),
        }
    }

    /// Connections to this endpoint, every worker's pool counted.
    pub fn pool_size(&self) -> usize {
        self.pool.size()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls sent to this endpoint so far.
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Breaker transitions after calls so far: (to open, to closed).
    pub fn transitions(&self) -> (u64, u64) {
        (self.opened.load(Ordering::Relaxed), self.closed.load(Ordering::Relaxed))
    }

    /// Counts a call as in flight until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Asks the endpoint's grpc.health.v1 whether `service` is SERVING.
    async fn check(&self, service: &str, timeout: Duration) -> bool {
        let mut health = HealthClient::new(self.channel());
        let request = HealthCheckRequest { service: service.to_string() };
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

/// All endpoints, the balancing policy and the ejection cap.
pub struct Backends {
    /// Swapped whole when discovery changes the set; calls in flight keep
    /// their `Arc<Backend>`, so a removed endpoint drains (its calls finish)
    /// and its connections close when the last call drops it.
    list: ArcSwap<Vec<Arc<Backend>>>,
    /// The settings new endpoints are made with; live ones swapped by [`Backends::retune`].
    settings: ArcSwap<ClientSettings>,
    /// Every endpoint's breaker reads its thresholds here.
    breaker: Arc<ArcSwap<BreakerSettings>>,
    next: AtomicU64,
    /// When the endpoint set last changed, Unix seconds (0: never).
    changed_at: AtomicU64,
}

impl Backends {
    /// A fixed set: `uris` are `http://host:port`, optionally with
    /// `;weight=N` (default 1). At least one is required.
    pub fn new(uris: &[String], settings: &ClientSettings) -> Result<Backends, BackendError> {
        let backends = Backends::empty(settings);
        // A configured list must be right as a whole: the first bad entry fails startup.
        if let Some(err) = backends.update(uris).into_iter().next() {
            return Err(err);
        }
        if backends.all().is_empty() {
            return Err(BackendError::Empty);
        }
        Ok(backends)
    }

    /// No endpoints yet: discovery fills them in with [`Backends::update`].
    pub fn empty(settings: &ClientSettings) -> Backends {
        Backends {
            list: ArcSwap::from_pointee(Vec::new()),
            settings: ArcSwap::from_pointee(settings.clone()),
            breaker: Arc::new(ArcSwap::from_pointee(settings.breaker)),
            next: AtomicU64::new(0),
            changed_at: AtomicU64::new(0),
        }
    }

    /// Applies the live client settings: balancing policy, breaker
    /// thresholds, ejection cap and pool size (every endpoint's pool is
    /// resized in place). The rest of `new` is ignored: it needs a restart.
    pub fn retune(&self, new: &ClientSettings) {
        let mut settings = ClientSettings::clone(&self.settings.load());
        settings.policy = new.policy;
        settings.breaker = new.breaker;
        settings.max_ejection_percent = new.max_ejection_percent;
        let resize = settings.pool_size != new.pool_size;
        settings.pool_size = new.pool_size;
        self.settings.store(Arc::new(settings));
        self.breaker.store(Arc::new(new.breaker));
        if resize {
            self.all().iter().for_each(|backend| backend.pool.resize(new.pool_size));
        }
    }

    /// The balancing policy in force.
    pub fn policy(&self) -> Policy {
        self.settings.load().policy
    }

    /// When the set of endpoints last changed (discovery or startup), Unix seconds; 0 before any.
    pub fn changed_at(&self) -> u64 {
        self.changed_at.load(Ordering::Relaxed)
    }

    /// The current endpoints.
    pub fn all(&self) -> Arc<Vec<Arc<Backend>>> {
        self.list.load_full()
    }

    /// Endpoints known, healthy or not.
    pub fn endpoint_count(&self) -> usize {
        self.list.load().len()
    }

    pub fn healthy_count(&self) -> usize {
        self.list.load().iter().filter(|b| b.is_healthy()).count()
    }

    /// Endpoints that take some kind of call: healthy, or taking async
    /// writes with their store down.
    pub fn usable_count(&self) -> usize {
        self.list.load().iter().filter(|b| b.serves(Need::AsyncWrites)).count()
    }

    /// Replaces the set of endpoints. Endpoints already known keep their
    /// pool, health and breaker; new ones start unwarmed (they take traffic
    /// after their first health check); removed ones drain. A malformed
    /// entry (a bad Consul address, say) is skipped alone and returned; the
    /// others are applied.
    pub fn update(&self, specs: &[String]) -> Vec<BackendError> {
        let mut skipped = Vec::new();
        let mut wanted: Vec<(&str, u32)> = Vec::with_capacity(specs.len());
        for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match parse_weight(spec) {
                Ok(entry) => wanted.push(entry),
                Err(err) => skipped.push(err),
            }
        }
        let current = self.list.load_full();
        let known: Vec<(&str, u32)> = current.iter().map(|b| (b.uri.as_str(), b.weight)).collect();
        let plan = plan_update(&known, &wanted);
        let mut next: Vec<Arc<Backend>> = plan.keep.iter().map(|&i| current[i].clone()).collect();
        for &(uri, weight) in &plan.add {
            match Backend::new(uri, weight, &self.settings.load(), &self.breaker) {
                Ok(backend) => next.push(Arc::new(backend)),
                Err(err) => {
                    skipped.push(err);
                    continue;
                }
            }
            tracing::info!(endpoint = %redact::userinfo(uri), weight, "{}", tally_runtime::log_events::ENDPOINT_DISCOVERED);
        }
        for &i in &plan.remove {
            tracing::info!(endpoint = %current[i].name, in_flight = current[i].in_flight(), "{}", tally_runtime::log_events::ENDPOINT_REMOVED);
        }
        if next.len() != current.len() || !plan.remove.is_empty() {
            let added = next.len() - plan.keep.len();
            self.list.store(Arc::new(next));
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            self.changed_at.store(now, Ordering::Relaxed);
            // A pool size retuned while these were made applies to them too
            // (retune resizes only the endpoints already listed).
            let size = self.settings.load().pool_size;
            self.all().iter().rev().take(added).for_each(|backend| backend.pool.resize(size));
        }
        skipped
    }

    /// An endpoint chosen by the balancing policy among the usable ones
    /// (`None` when none is), not `avoid` (the endpoint a retry just failed
    /// on) while another usable endpoint exists. Usable: it serves what the
    /// call needs (see [`Need`]), and its breaker lets the call through (a
    /// half-open breaker hands out its probe slots here).
    pub fn pick_avoiding(&self, avoid: Option<&Arc<Backend>>, need: Need) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let list = self.list.load();
        let candidates: Vec<Candidate> = list
            .iter()
            .enumerate()
            .filter(|(_, b)| b.serves(need) && b.breaker.admits(now))
            .map(|(index, b)| Candidate { index, in_flight: b.in_flight(), weight: b.weight })
            .collect();
        let order = balance::order(self.policy(), &candidates, ticket);
        let is_avoided = |i: usize| avoid.is_some_and(|a| Arc::ptr_eq(a, &list[i]));
        let preferred = order.iter().copied().filter(|&i| !is_avoided(i));
        let fallback = order.iter().copied().filter(|&i| is_avoided(i));
        preferred.chain(fallback).find(|&i| list[i].breaker.try_acquire(now)).map(|i| list[i].clone())
    }

    /// Feeds a call's outcome to the endpoint's breaker; `failed` for
    /// transport-level failures only (not for refusals of bad requests).
    pub fn report(&self, backend: &Backend, failed: bool, jitter: f64) {
        let change = if failed {
            let list = self.list.load();
            let open = list.iter().filter(|b| b.breaker.is_open()).count() as u32;
            let max_percent = self.settings.load().max_ejection_percent;
            let may_eject = (open + 1) * 100 <= max_percent * list.len() as u32;
            backend.breaker.on_failure(Instant::now(), may_eject, jitter)
        } else {
            backend.breaker.on_success()
        };
        Self::breaker_changed(backend, change);
    }

    /// Records a health check's verdict on `backend`. An endpoint that
    /// comes back after failing its checks is a new process (a restart, a
    /// rolling update at the same address): the failures that opened its
    /// breaker were the old one's, so the breaker closes, as Envoy's outlier
    /// detection un-ejects a host on a passing active health check. Left
    /// open, it would keep a restarted counter out for a whole recovery time
    /// while the next one is being restarted.
    pub fn record_health(&self, backend: &Backend, healthy: bool) {
        if backend.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return;
        }
        tracing::info!(endpoint = %backend.name, healthy, "{}", tally_runtime::log_events::ENDPOINT_HEALTH_CHANGED);
        if healthy {
            Self::breaker_changed(backend, backend.breaker.on_success());
        }
    }

    fn breaker_changed(backend: &Backend, change: Option<super::breaker::State>) {
        if let Some(state) = change {
            let counter = if state.name() == "closed" { &backend.closed } else { &backend.opened };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %backend.name, state = state.name(), "{}", tally_runtime::log_events::BREAKER_CHANGED);
        }
    }

    /// Checks every endpoint now, then every `interval`, until the process ends.
    pub async fn health_loop(self: Arc<Self>, interval: Duration, timeout: Duration) {
        loop {
            for backend in self.all().iter() {
                let healthy = backend.check(health::COUNTER_SERVICE, timeout).await;
                // A healthy counter takes async writes too: one call, not two.
                let takes_async = healthy || backend.check(health::ASYNC_WRITES, timeout).await;
                self.record_health(backend, healthy);
                if backend.takes_async.swap(takes_async, Ordering::Relaxed) != takes_async {
                    tracing::info!(endpoint = %backend.name, takes_async, "{}", tally_runtime::log_events::ENDPOINT_ASYNC_CHANGED);
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_update_keeps_the_state_of_known_endpoints() {
        let backends =
            Backends::new(&["http://127.0.0.1:1".into()], &crate::config::Config::defaults().client()).unwrap();
        let before = backends.all()[0].clone();
        assert!(backends.update(&["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()]).is_empty());
        let after = backends.all();
        assert_eq!(after.len(), 2);
        assert!(Arc::ptr_eq(&before, &after[0]), "the known endpoint is the same object");
        assert!(backends.update(&[]).is_empty());
        assert!(backends.all().is_empty());
    }

    #[tokio::test]
    async fn an_endpoint_back_from_failed_checks_has_its_breaker_closed() {
        let mut settings = crate::config::Config::defaults().client();
        settings.max_ejection_percent = 100;
        let backends = Backends::new(&["http://127.0.0.1:1".into()], &settings).unwrap();
        let backend = backends.all()[0].clone();
        backends.record_health(&backend, true);
        (0..settings.breaker.failure_threshold).for_each(|_| backends.report(&backend, true, 0.0));
        assert!(backend.breaker.is_open(), "its calls failed");
        backends.record_health(&backend, true);
        assert!(backend.breaker.is_open(), "still passing its checks: the calls' verdict stands");
        backends.record_health(&backend, false);
        backends.record_health(&backend, true);
        assert!(!backend.breaker.is_open(), "down, then back: a new process");
        assert_eq!(backends.pick_avoiding(None, Need::Store).map(|b| b.uri.clone()), Some(backend.uri.clone()));
    }

    #[tokio::test]
    async fn a_malformed_entry_is_skipped_alone() {
        let backends = Backends::empty(&crate::config::Config::defaults().client());
        let specs = ["http://127.0.0.1:1".into(), "http://bad host:1".into(), "http://127.0.0.1:2;weight=0".into()];
        let skipped = backends.update(&specs);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let uris: Vec<String> = backends.all().iter().map(|b| b.uri.clone()).collect();
        assert_eq!(uris, vec!["http://127.0.0.1:1"], "the good entry is applied");
    }

    #[tokio::test]
    async fn rejects_bad_uris_and_empty_lists() {
        let settings = crate::config::Config::defaults().client();
        assert!(matches!(Backends::new(&[" ".into()], &settings), Err(BackendError::Empty)));
        assert!(matches!(Backends::new(&["not a uri".into()], &settings), Err(BackendError::InvalidUri { .. })));
        let ok = Backends::new(&["http://127.0.0.1:1".into()], &settings).expect("valid");
        assert_eq!(ok.all()[0].pool_size(), settings.pool_size);
        assert!(ok.pick_avoiding(None, Need::Store).is_none(), "not warmed up yet");
    }
}
