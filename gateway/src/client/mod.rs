//! The gateway's client of the counter service.
//!
//! Each behaviour in its own file, testable alone: [`backends`] (endpoints,
//! health, choice of endpoint) with [`pool`] (connections), [`balance`]
//! (policies) and [`breaker`]; [`attempt`] (every call as a tower stack:
//! retry with [`retry::RetryPolicy`], pick an endpoint, one attempt);
//! [`batching`] (single increments → batches); [`tuning`] (what changes
//! live); discovery in [`discovery`] and [`kubernetes`]. The [`Counter`]
//! facade is the only thing handlers see.

pub mod attempt;
pub mod backends;
pub mod balance;
pub mod batch_stream;
pub mod batching;
pub mod breaker;
mod collapse;
pub mod discovery;
pub mod endpoint_metrics;
mod endpoint_spec;
pub mod kubernetes;
pub mod pool;
pub mod retry;
mod single;
pub mod tuning;
pub mod whole_body;

pub use single::{Incrementer, Reader};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tally_proto::v1::{
    BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse, GetRequest, GetResourceRequest,
    GetResourceResponse, GetResponse, IncrementRequest, OperationResult, ResetRequest, ResetResponse,
};
use tonic::Code;

use crate::metrics::Metrics;
use attempt::{Attempt, Call, Pick};
use backends::{Backend, Backends, Need};
use balance::Policy;
use batching::CallSlots;
use breaker::BreakerSettings;
use retry::{CallKind, RetryPolicy};
pub use tally_runtime::tls::UpstreamTls;
use tower::Service;
use tower::retry::Retry;
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
    /// No endpoint could take the call. `not_applied` unless an earlier
    /// attempt (of a keyed write) may have applied it.
    #[error("no healthy counter endpoint")]
    NoBackend { not_applied: bool },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A bounded queue is full: shed at once instead of queueing.
    #[error("the gateway is overloaded; retry later")]
    Overloaded,
    /// The last attempt's failure. `not_applied`: no attempt wrote anything
    /// (the last was refused unrun — the counter's `tally-write-outcome:
    /// not-applied`, or a refused connection — and none before it may have
    /// been applied), so the caller may resend; otherwise a failed write
    /// may have been applied.
    #[error("counter answered {code:?}: {message}")]
    Status { code: Code, message: String, not_applied: bool },
    #[error("unexpected answer from the counter: {0}")]
    Protocol(String),
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
    retry_policy: RetryPolicy,
}

impl Counter {
    pub fn new(backends: Arc<Backends>, metrics: Arc<Metrics>, settings: &ClientSettings) -> Counter {
        let per_endpoint = settings.coalesce_max_inflight;
        let batch_slots = Arc::new(BatchSlots {
            increments: Arc::new(CallSlots::new(per_endpoint)),
            reads: Arc::new(CallSlots::new(per_endpoint)),
        });
        let tuning = Arc::new(Tuning::new(settings));
        let retry_policy = RetryPolicy::new(tuning.clone(), metrics.clone());
        Counter { backends, batch_slots, metrics, tuning, retry_policy }
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

    /// Runs one call through the call stack ([`attempt`]): on an endpoint
    /// that serves what it needs, counted in flight and in metrics, and sent
    /// again (to another endpoint where there is one) when
    /// [`retry::may_retry`] allows and the retry budget has room.
    async fn call<R, T, F, Fut>(
        &self,
        method: &'static str,
        kind: CallKind,
        need: Need,
        request: R,
        rpc: F,
    ) -> Result<T, CallError>
    where
        R: Clone,
        F: Fn(&Arc<Backend>, tonic::Request<R>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let attempt = Attempt::new(rpc, self.backends.clone(), self.metrics.clone());
        let mut stack = Retry::new(self.retry_policy.clone(), Pick::new(self.backends.clone(), attempt));
        // Every layer is always ready: nothing here waits.
        std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
        Ok(stack.call(Call::new(method, kind, need, request)).await?)
    }

    pub async fn increment(&self, request: IncrementRequest) -> Result<Applied, CallError> {
        let kind = CallKind::Write { idempotent: !request.idempotency_key.is_empty() };
        let response = self
            .call("Increment", kind, Need::Store, request, |b, r| {
                let mut c = b.client();
                async move { c.increment(r).await }
            })
            .await?;
        Ok(Applied { value: response.current_value, replayed: response.replayed })
    }

    pub async fn batch_increment(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, CallError> {
        let idempotent = every_operation_keyed(&request);
        // An async batch only needs the counter's buffer, which takes it
        // while the counter's store is down.
        let need = if request.r#async { Need::AsyncWrites } else { Need::Store };
        self.call("BatchIncrement", CallKind::Write { idempotent }, need, request, |b, r| {
            let mut c = b.client();
            async move { c.batch_increment(r).await }
        })
        .await
    }

    /// A batch of coalesced increments: as [`Counter::batch_increment`],
    /// sent on a long-lived stream ([`batch_stream`]) unless its trace is
    /// sampled (a stream message carries no trace context; the unary call
    /// does).
    pub async fn coalesced_batch(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, CallError> {
        if !tracing::Span::current().is_disabled() {
            return self.batch_increment(request).await;
        }
        let kind = CallKind::Write { idempotent: every_operation_keyed(&request) };
        self.call("BatchIncrement", kind, Need::Store, request, |b, r| {
            let b = b.clone();
            async move { b.stream_batch(r.into_inner()).await }
        })
        .await
    }

    /// A reset is a write like an increment: resent after an ambiguous
    /// failure only when it carries an idempotency key.
    pub async fn reset(&self, request: ResetRequest) -> Result<ResetResponse, CallError> {
        let kind = CallKind::Write { idempotent: !request.idempotency_key.is_empty() };
        self.call("Reset", kind, Need::Store, request, |b, r| {
            let mut c = b.client();
            async move { c.reset(r).await }
        })
        .await
    }

    pub async fn get_resource(&self, request: GetResourceRequest) -> Result<GetResourceResponse, CallError> {
        self.call("GetResource", CallKind::Read, Need::Store, request, |b, r| {
            let mut c = b.client();
            async move { c.get_resource(r).await }
        })
        .await
    }

    pub async fn get(&self, request: GetRequest) -> Result<GetResponse, CallError> {
        self.call("Get", CallKind::Read, Need::Store, request, |b, r| {
            let mut c = b.client();
            async move { c.get(r).await }
        })
        .await
    }

    pub async fn batch_get(&self, request: BatchGetRequest) -> Result<BatchGetResponse, CallError> {
        self.call("BatchGet", CallKind::Read, Need::Store, request, |b, r| {
            let mut c = b.client();
            async move { c.batch_get(r).await }
        })
        .await
    }

    /// A batch of coalesced reads: as [`Counter::batch_get`], on a stream
    /// unless its trace is sampled (as [`Counter::coalesced_batch`]).
    pub async fn coalesced_batch_get(&self, request: BatchGetRequest) -> Result<BatchGetResponse, CallError> {
        if !tracing::Span::current().is_disabled() {
            return self.batch_get(request).await;
        }
        self.call("BatchGet", CallKind::Read, Need::Store, request, |b, r| {
            let b = b.clone();
            async move { b.stream_batch_get(r.into_inner()).await }
        })
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

/// Whether a batch may be resent after an ambiguous failure: every
/// operation carries an idempotency key, so the store applies each once.
fn every_operation_keyed(request: &BatchIncrementRequest) -> bool {
    request.operations.iter().all(|op| !op.idempotency_key.is_empty())
}

/// The per-operation view of a batch result, for handlers. An operation's
/// error carries no write outcome (only the whole call's status does), so
/// it is never taken as provably not applied.
pub fn operation_error(result: &OperationResult) -> Option<CallError> {
    result.error.as_ref().map(|e| CallError::Status {
        code: Code::from(e.code),
        message: e.message.clone(),
        not_applied: false,
    })
}
