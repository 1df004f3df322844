//! The gateway's client of the counter service.
//!
//! Layers, each in its own file: [`backends`] (endpoint pools, health,
//! choice of endpoint) and [`coalesce`] (single increments → batches). The
//! [`Counter`] facade is the only thing handlers see; resilience layers
//! (breaker, retries) and dynamic discovery slot in behind it.

pub mod backends;
pub mod coalesce;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{
    BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse, GetRequest, GetResponse,
    IncrementOperation, IncrementRequest, OperationResult,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::metrics::Metrics;
use backends::Backends;
use coalesce::Coalescer;

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
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            pool_size: 20,
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            health_interval: Duration::from_secs(1),
            coalesce: true,
            coalesce_max_ops: 1000,
            coalesce_max_inflight: 4,
        }
    }
}

/// Why a call to the counter service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no healthy counter endpoint")]
    NoBackend,
    #[error("the gateway is shutting down")]
    ShuttingDown,
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

/// The counter service as the handlers see it. Cheap to clone.
#[derive(Clone)]
pub struct Counter {
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
}

impl Counter {
    pub fn new(backends: Arc<Backends>, metrics: Arc<Metrics>) -> Counter {
        Counter { backends, metrics }
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs one call on a healthy endpoint, counting it in flight and in metrics.
    async fn call<T, F, Fut>(&self, method: &'static str, f: F) -> Result<T, CallError>
    where
        F: FnOnce(CounterServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let backend = self.backends.pick().ok_or(CallError::NoBackend)?;
        let _in_flight = backend.start_call();
        let started = Instant::now();
        let result = f(backend.client()).await;
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        self.metrics.observe_upstream(method, code, started.elapsed());
        result.map(tonic::Response::into_inner).map_err(CallError::from)
    }

    pub async fn increment(&self, request: IncrementRequest) -> Result<Applied, CallError> {
        let response = self.call("Increment", |mut c| async move { c.increment(request).await }).await?;
        Ok(Applied { value: response.current_value, replayed: response.replayed })
    }

    pub async fn batch_increment(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, CallError> {
        self.call("BatchIncrement", |mut c| async move { c.batch_increment(request).await }).await
    }

    pub async fn get(&self, request: GetRequest) -> Result<GetResponse, CallError> {
        self.call("Get", |mut c| async move { c.get(request).await }).await
    }

    pub async fn batch_get(&self, request: BatchGetRequest) -> Result<BatchGetResponse, CallError> {
        self.call("BatchGet", |mut c| async move { c.batch_get(request).await }).await
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

/// Single increments: coalesced into batches, or one call each.
#[derive(Clone)]
pub enum Incrementer {
    Coalesced(Coalescer),
    Direct(Counter),
}

impl Incrementer {
    pub fn new(counter: &Counter, settings: &ClientSettings) -> Incrementer {
        if settings.coalesce {
            Incrementer::Coalesced(Coalescer::start(
                counter.clone(),
                settings.coalesce_max_ops,
                settings.coalesce_max_inflight,
            ))
        } else {
            Incrementer::Direct(counter.clone())
        }
    }

    /// Applies one validated increment; the value right after it.
    pub async fn increment(&self, op: IncrementOperation) -> Result<Applied, CallError> {
        match self {
            Incrementer::Coalesced(coalescer) => {
                let result = coalescer.increment(op).await?;
                match result.error {
                    None => Ok(Applied { value: result.current_value, replayed: result.replayed }),
                    Some(err) => Err(CallError::Status { code: Code::from(err.code), message: err.message }),
                }
            }
            Incrementer::Direct(counter) => {
                let IncrementOperation { resource_id, counter_type, delta, idempotency_key } = op;
                counter.increment(IncrementRequest { resource_id, counter_type, delta, idempotency_key }).await
            }
        }
    }
}

/// The per-operation view of a batch result, for handlers.
pub fn operation_error(result: &OperationResult) -> Option<CallError> {
    result.error.as_ref().map(|e| CallError::Status { code: Code::from(e.code), message: e.message.clone() })
}
