//! The gateway's client of the counter service.
//!
//! Layers, each in its own file: [`backends`] (endpoint pools, health,
//! choice of endpoint) and [`batching`] (single increments → batches). The
//! [`Counter`] facade is the only thing handlers see; resilience layers
//! (breaker, retries) and dynamic discovery slot in behind it.

pub mod backends;
pub mod balance;
pub mod batching;
pub mod breaker;
pub mod discovery;
pub mod endpoint_metrics;
pub mod kubernetes;
pub mod pool;
pub mod retry;
mod single;
pub mod tuning;

pub use single::{Incrementer, Reader};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{
    BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse, GetRequest, GetResourceRequest,
    GetResourceResponse, GetResponse, IncrementRequest, OperationResult, ResetRequest, ResetResponse,
};
use tonic::Code;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::spans;
use backends::{Backends, Need};
use balance::Policy;
use batching::CallSlots;
use breaker::BreakerSettings;
use retry::CallKind;
pub use tally_runtime::tls::UpstreamTls;
use tuning::Tuning;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub pool_size: usize,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub health_interval: Duration,
    pub coalesce: bool,
    pub coalesce_max_ops: usize,
    pub coalesce_max_inflight: usize,
    /// Increments waiting for a coalesced call at most.
    pub coalesce_max_queue: usize,
    /// Attempts per call, the first included (1 = no retries).
    pub retry_attempts: u32,
    /// Retries allowed as a percentage of recent calls.
    pub retry_budget_percent: f32,
    /// Retries always allowed per second, whatever the traffic.
    pub retry_min_per_second: u32,
    pub policy: Policy,
    pub breaker: BreakerSettings,
    /// Most endpoints (percent) the breakers may eject at once.
    pub max_ejection_percent: u32,
    /// The runtimes of the workers that call the counters: each gets its own
    /// share of every endpoint's pool. Empty: one pool, on the runtime that
    /// creates it.
    pub workers: Vec<tokio::runtime::Handle>,
    /// TLS to the counters; `None`: plain text.
    pub tls: Option<UpstreamTls>,
}

/// Why a call to the counter service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no healthy counter endpoint")]
    NoBackend,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A bounded queue is full: shed at once instead of queueing.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    #[error("counter answered {code:?}: {message}")]
    Status { code: Code, message: String },
    #[error("unexpected answer from the counter: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        CallError::Status { code: status.code(), message: status.message().to_string() }
    }
}

/// The call slots of the coalesced calls, per kind, shared by every worker.
pub struct BatchSlots {
    pub increments: Arc<CallSlots>,
    pub reads: Arc<CallSlots>,
}

/// The counter service as the handlers see it. Cheap to clone.
#[derive(Clone)]
pub struct Counter {
    backends: Arc<Backends>,
    batch_slots: Arc<BatchSlots>,
    metrics: Arc<Metrics>,
    tuning: Arc<Tuning>,
}

impl Counter {
    pub fn new(backends: Arc<Backends>, metrics: Arc<Metrics>, settings: &ClientSettings) -> Counter {
        let per_endpoint = settings.coalesce_max_inflight;
        let batch_slots = Arc::new(BatchSlots {
            increments: Arc::new(CallSlots::new(per_endpoint)),
            reads: Arc::new(CallSlots::new(per_endpoint)),
        });
        Counter { backends, batch_slots, metrics, tuning: Arc::new(Tuning::new(settings)) }
    }

    /// Applies the live client settings: retries, coalescing, call slots,
    /// and those of the endpoints ([`Backends::retune`]).
    pub fn retune(&self, settings: &ClientSettings) {
        self.tuning.retune(settings);
        self.batch_slots.increments.set_per_endpoint(settings.coalesce_max_inflight);
        self.batch_slots.reads.set_per_endpoint(settings.coalesce_max_inflight);
        self.backends.retune(settings);
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    pub fn batch_slots(&self) -> &BatchSlots {
        &self.batch_slots
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs one call on a healthy endpoint, counting it in flight and in
    /// metrics, and sends it again (to another endpoint where there is one)
    /// when [`retry::may_retry`] allows and the retry budget has room.
    async fn call<R, T, F, Fut>(
        &self,
        method: &'static str,
        kind: CallKind,
        need: Need,
        request: &R,
        f: F,
    ) -> Result<T, CallError>
    where
        R: Clone,
        F: Fn(CounterServiceClient<Channel>, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.tuning.budget().deposit();
        let mut previous = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let backend = self.backends.pick_avoiding(previous.as_ref(), need).ok_or(CallError::NoBackend)?;
            let span = spans::rpc_client(method, backend.name.as_str(), attempt);
            let mut request = tonic::Request::new(request.clone());
            spans::inject(&span, &mut request);
            let in_flight = backend.start_call();
            let started = Instant::now();
            let result = f(backend.client(), request).instrument(span.clone()).await;
            drop(in_flight);
            let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            spans::rpc_status(&span, code);
            self.metrics.observe_upstream(method, code, started.elapsed());
            let status = match result {
                Ok(response) => {
                    self.backends.report(&backend, false, 0.0);
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let failure = retry::classify(&status);
            // Refusals say nothing about the endpoint's health.
            let jitter = (started.elapsed().subsec_nanos() % 1000) as f64 / 1000.0;
            self.backends.report(&backend, failure != retry::Failure::Refused, jitter);
            if !retry::may_retry(kind, failure, attempt, self.tuning.max_attempts()) {
                return Err(status.into());
            }
            if !self.tuning.budget().withdraw() {
                self.metrics.retries_refused.inc();
                return Err(status.into());
            }
            self.metrics.retry(method, failure.label());
            previous = Some(backend);
        }
    }

    pub async fn increment(&self, request: IncrementRequest) -> Result<Applied, CallError> {
        let kind = CallKind::Write { idempotent: !request.idempotency_key.is_empty() };
        let response =
            self.call("Increment", kind, Need::Store, &request, |mut c, r| async move { c.increment(r).await }).await?;
        Ok(Applied { value: response.current_value, replayed: response.replayed })
    }

    pub async fn batch_increment(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, CallError> {
        let idempotent = request.operations.iter().all(|op| !op.idempotency_key.is_empty());
        // An async batch only needs the counter's buffer, which takes it
        // while the counter's store is down.
        let need = if request.r#async { Need::AsyncWrites } else { Need::Store };
        self.call("BatchIncrement", CallKind::Write { idempotent }, need, &request, |mut c, r| async move {
            c.batch_increment(r).await
        })
        .await
    }

    /// A reset is a write like an increment: resent after an ambiguous
    /// failure only when it carries an idempotency key.
    pub async fn reset(&self, request: ResetRequest) -> Result<ResetResponse, CallError> {
        let kind = CallKind::Write { idempotent: !request.idempotency_key.is_empty() };
        self.call("Reset", kind, Need::Store, &request, |mut c, r| async move { c.reset(r).await }).await
    }

    pub async fn get_resource(&self, request: GetResourceRequest) -> Result<GetResourceResponse, CallError> {
        self.call(
            "GetResource",
            CallKind::Read,
            Need::Store,
            &request,
            |mut c, r| async move { c.get_resource(r).await },
        )
        .await
    }

    pub async fn get(&self, request: GetRequest) -> Result<GetResponse, CallError> {
        self.call("Get", CallKind::Read, Need::Store, &request, |mut c, r| async move { c.get(r).await }).await
    }

    pub async fn batch_get(&self, request: BatchGetRequest) -> Result<BatchGetResponse, CallError> {
        self.call("BatchGet", CallKind::Read, Need::Store, &request, |mut c, r| async move { c.batch_get(r).await })
            .await
    }
}

/// An increment the counter accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The counter's value right after the increment.
    pub value: i64,
    /// The idempotency key was seen before: `value` is the first result and
    /// nothing was applied now.
    pub replayed: bool,
}

/// The per-operation view of a batch result, for handlers.
pub fn operation_error(result: &OperationResult) -> Option<CallError> {
    result.error.as_ref().map(|e| CallError::Status { code: Code::from(e.code), message: e.message.clone() })
}
