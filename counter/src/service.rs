//! The `tally.counter.v1.CounterService` gRPC handlers: validate, hand the
//! operations to the group committer or the write-behind buffer, and map the
//! outcome to a response or status. No store logic lives here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::stream::StreamExt;
use tally_proto::v1::counter_service_server::CounterService;
use tally_proto::v1::{
    BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse, CounterValue, GetRequest,
    GetResourceRequest, GetResourceResponse, GetResponse, IncrementOperation, IncrementRequest, IncrementResponse,
    OperationResult, ResetRequest, ResetResponse,
};
use tally_proto::{CounterKey, validate};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::batch_stream::{self, Answers};
use crate::buffer::{BufferFullPolicy, Offer, WriteBuffer};
use crate::commit::{GroupCommitter, Op};
use crate::metrics::Metrics;
use crate::spans;
use crate::status;
use crate::store::Outcome;
use crate::store::{Change, Listing, Store};

#[derive(Clone)]
pub struct CounterApi {
    pub committer: GroupCommitter,
    pub buffer: Arc<WriteBuffer>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Requests of one stream being applied at once (live: shared by every worker).
    pub stream_window: Arc<AtomicUsize>,
    /// Fires when the service shuts down: open streams stop reading.
    pub shutdown: watch::Receiver<bool>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<IncrementResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CounterService for CounterApi {
    async fn increment(&self, request: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        let started = Instant::now();
        let result = increment_one(&self.committer, request.into_inner()).await;
        self.metrics.rpc.increment.observe(started, code_of(&result));
        result.map(Response::new)
    }

    async fn batch_increment(
        &self,
        request: Request<BatchIncrementRequest>,
    ) -> Result<Response<BatchIncrementResponse>, Status> {
        self.batch_increment_counted(request.into_inner()).await.map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let GetRequest { resource_id, counter_type } = request.into_inner();
        let result = async {
            let key = CounterKey::new(resource_id, counter_type).map_err(status::invalid)?;
            let value = self.read(std::slice::from_ref(&key)).await?[0];
            Ok(GetResponse {
                resource_id: key.resource_id().into(),
                counter_type: key.counter_type().into(),
                current_value: value,
            })
        }
        .await;
        self.metrics.rpc.get.observe(started, code_of(&result));
        result.map(Response::new)
    }

    async fn batch_get(&self, request: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        self.batch_get_counted(request.into_inner()).await.map(Response::new)
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        let started = Instant::now();
        let result = reset_one(&self.committer, request.into_inner()).await;
        self.metrics.rpc.reset.observe(started, code_of(&result));
        result.map(Response::new)
    }

    async fn get_resource(
        &self,
        request: Request<GetResourceRequest>,
    ) -> Result<Response<GetResourceResponse>, Status> {
        let started = Instant::now();
        let GetResourceRequest { resource_id } = request.into_inner();
        let result = async {
            validate::resource_id(&resource_id).map_err(status::invalid)?;
            let listed = Instant::now();
            let listing = self.store.get_resource(&resource_id).await;
            self.metrics.store_list.observe(listed.elapsed().as_secs_f64());
            let listing = listing.map_err(|err| self.read_failed(&err))?;
            match listing {
                Listing::Counters(counters) => {
                    let counters = counters
                        .into_iter()
                        .map(|(counter_type, current_value)| CounterValue { counter_type, current_value })
                        .collect();
                    Ok(GetResourceResponse { resource_id, counters })
                }
                Listing::TooMany(n) => Err(status::too_many_counters(&resource_id, n)),
            }
        }
        .await;
        self.metrics.rpc.get_resource.observe(started, code_of(&result));
        result.map(Response::new)
    }

    type StreamIncrementsStream = ResponseStream;

    async fn stream_increments(
        &self,
        request: Request<Streaming<IncrementRequest>>,
    ) -> Result<Response<Self::StreamIncrementsStream>, Status> {
        // Two runs of answers queued at most (each at most `stream_window`),
        // so a client that stops reading holds a bounded amount.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(crate::stream::pump_stream(
            request.into_inner(),
            tx,
            self.committer.clone(),
            self.stream_window.load(Ordering::Relaxed),
            self.shutdown.clone(),
            self.metrics.rpc.stream_increments.clone(),
        ));
        let answers = ReceiverStream::new(rx).flat_map(futures_util::stream::iter);
        Ok(Response::new(Box::pin(answers)))
    }

    type StreamBatchIncrementsStream = Answers<BatchIncrementResponse>;

    async fn stream_batch_increments(
        &self,
        request: Request<Streaming<BatchIncrementRequest>>,
    ) -> Result<Response<Self::StreamBatchIncrementsStream>, Status> {
        // Counted as BatchIncrement calls: the same work, per batch.
        Ok(self.serve_batches(request, |api, batch| async move { api.batch_increment_counted(batch).await }))
    }

    type StreamBatchGetStream = Answers<BatchGetResponse>;

    async fn stream_batch_get(
        &self,
        request: Request<Streaming<BatchGetRequest>>,
    ) -> Result<Response<Self::StreamBatchGetStream>, Status> {
        Ok(self.serve_batches(request, |api, batch| async move { api.batch_get_counted(batch).await }))
    }
}

impl CounterApi {
    /// Serves a stream of batches ([`batch_stream::serve`]), each handled by
    /// `handle` with its own handle on the API.
    fn serve_batches<Req, Resp, H, Fut>(&self, request: Request<Streaming<Req>>, handle: H) -> Response<Answers<Resp>>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        H: Fn(CounterApi, Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let api = self.clone();
        let apply = move |batch| handle(api.clone(), batch);
        Response::new(batch_stream::serve(request.into_inner(), apply, self.shutdown.clone()))
    }

    /// A batch of reads answered and counted in the `BatchGet` metrics,
    /// whether it came as a unary call or on a stream.
    async fn batch_get_counted(&self, request: BatchGetRequest) -> Result<BatchGetResponse, Status> {
        let started = Instant::now();
        let BatchGetRequest { items, omit_names } = request;
        let result = async {
            validate::batch_len("items", items.len()).map_err(status::invalid)?;
            let keys = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    CounterKey::new(item.resource_id, item.counter_type).map_err(|e| e.in_batch("items", i))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(status::invalid)?;
            let values = self.read(&keys).await?;
            let results = keys
                .into_iter()
                .zip(values)
                .map(|(key, value)| {
                    let (resource_id, counter_type) = names(key, omit_names);
                    GetResponse { resource_id, counter_type, current_value: value }
                })
                .collect();
            Ok(BatchGetResponse { results })
        }
        .await;
        self.metrics.rpc.batch_get.observe(started, code_of(&result));
        result
    }

    /// A batch applied and counted in the `BatchIncrement` metrics, whether
    /// it came as a unary call or on a stream.
    async fn batch_increment_counted(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, Status> {
        let started = Instant::now();
        let result = self.batch_increment_inner(request).await;
        self.metrics.rpc.batch_increment.observe(started, code_of(&result));
        result
    }

    async fn batch_increment_inner(&self, request: BatchIncrementRequest) -> Result<BatchIncrementResponse, Status> {
        let ops = parse_operations(request.operations)?;
        // Operations with idempotency keys need the store's check-and-apply,
        // so an async batch carrying any is applied synchronously.
        let bufferable = ops.iter().all(|op| op.idempotency_key.is_none());
        if request.r#async && bufferable {
            let plain: Vec<(CounterKey, i64)> = ops.iter().map(|op| (op.key.clone(), op.delta())).collect();
            if self.buffer.offer(&plain) == Offer::Accepted {
                self.count_async("buffered", ops.len());
                return Ok(BatchIncrementResponse { results: Vec::new(), accepted: true });
            }
            if self.buffer.full_policy() == BufferFullPolicy::Reject {
                self.count_async("rejected", ops.len());
                return Err(Status::resource_exhausted(
                    "write-behind buffer is full; retry later or send the batch synchronously",
                ));
            }
            self.count_async("applied_sync", ops.len());
        } else if request.r#async {
            self.count_async("applied_sync", ops.len());
        }
        let (ops, results) = self.committer.submit(ops).await.map_err(status::not_submitted)?;
        // A batch whose every operation failed is reported as one status, so
        // clients need not dig into results; its write outcome is the least
        // certain of the operations' (see `status::all_failed`).
        if let Some(status) = status::all_failed(&results) {
            return Err(status);
        }
        let results = ops
            .into_iter()
            .zip(results)
            .map(|(op, result)| {
                let error = status::op_status(&result, &op.key, op.delta()).map(|s| status::to_operation_error(&s));
                let (resource_id, counter_type) = names(op.key, request.omit_names);
                OperationResult {
                    current_value: match result {
                        Outcome::Applied(value) | Outcome::Replayed(value) => value,
                        _ => 0,
                    },
                    replayed: matches!(result, Outcome::Replayed(_)),
                    error,
                    resource_id,
                    counter_type,
                }
            })
            .collect();
        Ok(BatchIncrementResponse { results, accepted: request.r#async })
    }

    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, Status> {
        let started = Instant::now();
        let values = self.store.get(keys).await;
        self.metrics.store_get.observe(started.elapsed().as_secs_f64());
        values.map_err(|err| self.read_failed(&err))
    }

    /// Counts a failed store read and says why.
    fn read_failed(&self, err: &crate::store::StoreError) -> Status {
        self.metrics.store_errors.get_or_create(&[("kind", err.kind())]).inc();
        status::store(err)
    }

    fn count_async(&self, outcome: &'static str, ops: usize) {
        self.metrics.async_ops.get_or_create(&[("outcome", outcome)]).inc_by(ops as u64);
    }
}

/// A result's names: the key's own strings moved out, or none when the
/// caller asked for results without them.
fn names(key: CounterKey, omit: bool) -> (String, String) {
    if omit { (String::new(), String::new()) } else { key.into_parts() }
}

/// The status code of a handler's outcome, also set on the request's span.
fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    spans::rpc_status(code);
    code
}

fn parse_operations(operations: Vec<IncrementOperation>) -> Result<Vec<Op>, Status> {
    validate::batch_len("operations", operations.len()).map_err(status::invalid)?;
    operations
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            parse_op(op.resource_id, op.counter_type, op.delta, &op.idempotency_key)
                .map_err(|e| e.in_batch("operations", i))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(status::invalid)
}

fn parse_op(
    resource_id: String,
    counter_type: String,
    delta: Option<i64>,
    idempotency_key: &str,
) -> Result<Op, tally_proto::InvalidInput> {
    Ok(Op {
        key: CounterKey::new(resource_id, counter_type)?,
        change: Change::Add(validate::delta_or_default(delta)?),
        idempotency_key: validate::idempotency_key(idempotency_key)?.map(str::to_string),
    })
}

/// One unary increment through the group committer.
async fn increment_one(committer: &GroupCommitter, request: IncrementRequest) -> Result<IncrementResponse, Status> {
    let op = parse_op(request.resource_id, request.counter_type, request.delta, &request.idempotency_key)
        .map_err(status::invalid)?;
    let (mut ops, results) = committer.submit(vec![op]).await.map_err(status::not_submitted)?;
    match (ops.pop(), results.into_iter().next()) {
        (Some(op), Some(result)) => answer(op, result),
        _ => Err(Status::unavailable("the committer returned no result")),
    }
}

/// One reset through the group committer, ordered with the increments
/// around it (see [`crate::commit`]).
async fn reset_one(committer: &GroupCommitter, request: ResetRequest) -> Result<ResetResponse, Status> {
    let key = CounterKey::new(request.resource_id, request.counter_type).map_err(status::invalid)?;
    let idempotency_key = validate::idempotency_key(&request.idempotency_key).map_err(status::invalid)?;
    let op = Op { key, change: Change::Reset, idempotency_key: idempotency_key.map(str::to_string) };
    let (mut ops, results) = committer.submit(vec![op]).await.map_err(status::not_submitted)?;
    match (ops.pop(), results.into_iter().next()) {
        (Some(op), Some(result)) => {
            let (previous_value, replayed) = status::outcome(&op, result)?;
            let (resource_id, counter_type) = op.key.into_parts();
            Ok(ResetResponse { resource_id, counter_type, previous_value, replayed })
        }
        _ => Err(Status::unavailable("the committer returned no result")),
    }
}

/// The answer to one increment, from what the committer did with it.
fn answer(op: Op, result: Outcome) -> Result<IncrementResponse, Status> {
    let (current_value, replayed) = status::outcome(&op, result)?;
    let (resource_id, counter_type) = op.key.into_parts();
    Ok(IncrementResponse { resource_id, counter_type, current_value, replayed, error: None })
}
