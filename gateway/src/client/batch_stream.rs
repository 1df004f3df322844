//! The coalescer's batches over long-lived `StreamBatchIncrements` and
//! `StreamBatchGet` calls, instead of one unary `BatchIncrement` or
//! `BatchGet` each ([`Streamed`] names the two).
//!
//! Why: a unary call costs both ends an HTTP/2 stream, request headers,
//! response headers and trailers, and the call stack's setup per batch;
//! measured, that was most of what a coalesced batch cost beyond its
//! operations. On a stream a batch is one message each way. Each batch is
//! still one attempt of the call stack ([`super::attempt`]): picked, broken,
//! retried and counted like a unary call.
//!
//! Each worker keeps its own streams to an endpoint and sends a batch on
//! one that has none in flight, opening another when all are busy: batches
//! never wait behind each other (the counter applies a stream's batches one
//! at a time), and there are at most as many streams as the worker ever had
//! batches in flight to the endpoint (bounded by the call slots).
//!
//! What a batch's failure says (the counter answers every batch it read
//! before it ends a stream, in order): a stream that ends OK (the counter
//! shutting down) leaves its unanswered batch not applied, safe to send
//! again. Any other end fails it with the stream's status (a batch refused
//! as a whole carries the counter's own verdict). A batch that times out
//! ends its stream: nothing more is sent on it. A counter that does not
//! serve the stream (an older version) gets unary calls, and a stream is
//! tried again a minute later (a counter upgraded at the same address).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tally_proto::contract::WriteOutcome;
use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{BatchGetRequest, BatchGetResponse, BatchIncrementRequest, BatchIncrementResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::backends::CounterClient;
use super::retry;

/// A kind of batch sent on a stream: its messages, the stream's method, and
/// the unary call that carries it to a counter without the stream.
pub trait Streamed: Send + Sync + 'static {
    type Request: Clone + Send + 'static;
    type Response: Send + 'static;
    /// The stream's gRPC method, named when a counter does not serve it.
    const METHOD: &'static str;

    /// Opens the stream with `requests` as its request side.
    fn open<S: Stream<Item = Self::Request> + Send + 'static>(
        client: CounterServiceClient<Channel>,
        requests: tonic::Request<S>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<Self::Response>>, Status>> + Send;

    /// The same batch as one unary call.
    fn unary(
        client: CounterClient,
        request: Self::Request,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, Status>> + Send;
}

/// Coalesced increments: `StreamBatchIncrements`, else `BatchIncrement`.
pub struct IncrementBatches;

impl Streamed for IncrementBatches {
    type Request = BatchIncrementRequest;
    type Response = BatchIncrementResponse;
    const METHOD: &'static str = "StreamBatchIncrements";

    async fn open<S: Stream<Item = BatchIncrementRequest> + Send + 'static>(
        mut client: CounterServiceClient<Channel>,
        requests: tonic::Request<S>,
    ) -> Result<tonic::Response<Streaming<BatchIncrementResponse>>, Status> {
        client.stream_batch_increments(requests).await
    }

    async fn unary(
        mut client: CounterClient,
        request: BatchIncrementRequest,
    ) -> Result<tonic::Response<BatchIncrementResponse>, Status> {
        client.batch_increment(request).await
    }
}

/// Coalesced reads: `StreamBatchGet`, else `BatchGet`.
pub struct ReadBatches;

impl Streamed for ReadBatches {
    type Request = BatchGetRequest;
    type Response = BatchGetResponse;
    const METHOD: &'static str = "StreamBatchGet";

    async fn open<S: Stream<Item = BatchGetRequest> + Send + 'static>(
        mut client: CounterServiceClient<Channel>,
        requests: tonic::Request<S>,
    ) -> Result<tonic::Response<Streaming<BatchGetResponse>>, Status> {
        client.stream_batch_get(requests).await
    }

    async fn unary(
        mut client: CounterClient,
        request: BatchGetRequest,
    ) -> Result<tonic::Response<BatchGetResponse>, Status> {
        client.batch_get(request).await
    }
}

type Reply<K> = oneshot::Sender<Result<<K as Streamed>::Response, Status>>;

/// One endpoint's streams of one kind, per worker.
pub struct BatchStreams<K: Streamed> {
    per_worker: Vec<Mutex<Vec<Arc<Open<K>>>>>,
    timeout: Duration,
    /// Whether the endpoint serves the stream: [`UNKNOWN`] until a stream
    /// answered a batch ([`SERVED`]) or was answered `UNIMPLEMENTED` (the
    /// counter predates it: [`NOT_SERVED`]).
    support: AtomicU8,
    /// While [`NOT_SERVED`]: when (ms after `created`) a stream is tried
    /// again, `recheck_after` after the last refusal.
    recheck_at_ms: AtomicU64,
    recheck_after: Duration,
    created: Instant,
}

const UNKNOWN: u8 = 0;
const SERVED: u8 = 1;
const NOT_SERVED: u8 = 2;

/// How long an endpoint that refused the stream gets unary calls before a
/// stream is tried again: a counter upgraded in place (the same address,
/// e.g. behind a Service name) gets streams back without a gateway restart,
/// and one still without them costs one refused stream per minute, its
/// batch resent as a unary call at once.
const RECHECK_AFTER: Duration = Duration::from_secs(60);

impl<K: Streamed> BatchStreams<K> {
    /// Streams for `workers` workers (at least one); each batch waits at
    /// most `timeout` for its answer.
    pub fn new(workers: usize, timeout: Duration) -> BatchStreams<K> {
        BatchStreams {
            per_worker: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            timeout,
            support: AtomicU8::new(UNKNOWN),
            recheck_at_ms: AtomicU64::new(0),
            recheck_after: RECHECK_AFTER,
            created: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// What is known of the endpoint's support for the stream now: a
    /// refusal older than `recheck_after` is forgotten (once: the caller
    /// that forgets it sends the next stream).
    fn support_now(&self) -> u8 {
        let support = self.support.load(Ordering::Relaxed);
        if support == NOT_SERVED
            && self.now_ms() >= self.recheck_at_ms.load(Ordering::Relaxed)
            && self.support.compare_exchange(NOT_SERVED, UNKNOWN, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return UNKNOWN;
        }
        support
    }

    /// Whether the endpoint serves the stream (as far as known).
    pub fn supported(&self) -> bool {
        self.support.load(Ordering::Relaxed) != NOT_SERVED
    }

    /// Sends `request` on one of the calling worker's streams with no batch
    /// in flight (a new one, opened on `channel`, when there is none) and
    /// waits for its answer; to an endpoint that does not serve the stream,
    /// as a unary call on `client`.
    ///
    /// Until the endpoint is known to serve the stream, a copy of the batch
    /// is kept: a counter that predates it answers `UNIMPLEMENTED` having
    /// read nothing, and the batch then goes as a unary call at once, not
    /// failed back to the call stack (where it would cost a retry and count
    /// against the endpoint's breaker, once per worker and endpoint during a
    /// rollout).
    pub async fn send(
        &self,
        channel: impl FnOnce() -> Channel,
        client: impl FnOnce() -> CounterClient,
        request: K::Request,
    ) -> Result<tonic::Response<K::Response>, Status> {
        let support = self.support_now();
        if support == NOT_SERVED {
            return K::unary(client(), request).await;
        }
        let copy = (support == UNKNOWN).then(|| request.clone());
        let result = self.call(channel, request).await;
        match (&result, copy) {
            (Err(status), copy) if status.code() == Code::Unimplemented => {
                let recheck_at = self.now_ms().saturating_add(self.recheck_after.as_millis() as u64);
                self.recheck_at_ms.store(recheck_at, Ordering::Relaxed);
                self.support.store(NOT_SERVED, Ordering::Relaxed);
                if let Some(copy) = copy {
                    return K::unary(client(), copy).await;
                }
            }
            (Ok(_), Some(_)) => {
                // Unless another batch found it not served meanwhile.
                let _ = self.support.compare_exchange(UNKNOWN, SERVED, Ordering::Relaxed, Ordering::Relaxed);
            }
            _ => {}
        }
        result.map(tonic::Response::new)
    }

    /// Sends `request` on a stream (as [`BatchStreams::send`]).
    async fn call(&self, channel: impl FnOnce() -> Channel, request: K::Request) -> Result<K::Response, Status> {
        let open = self.idle_stream(channel);
        let answer = open.send(request)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Status::unavailable("the stream to the counter ended without an answer")),
            Err(_) => {
                open.close(End::Failed(Status::deadline_exceeded("an earlier batch on this stream timed out")));
                Err(Status::deadline_exceeded(format!("no answer from the counter within {:?}", self.timeout)))
            }
        }
    }

    /// A stream of the calling worker with no batch in flight, or a new one.
    fn idle_stream(&self, channel: impl FnOnce() -> Channel) -> Arc<Open<K>> {
        let worker = tally_runtime::workers::current().unwrap_or(0) % self.per_worker.len();
        let mut streams = self.per_worker[worker].lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|open| !open.is_closed());
        if let Some(idle) = streams.iter().find(|open| open.is_idle()) {
            return idle.clone();
        }
        let open = Open::start(CounterServiceClient::new(channel()));
        streams.push(open.clone());
        open
    }
}

impl<K: Streamed> Drop for BatchStreams<K> {
    fn drop(&mut self) {
        for streams in &self.per_worker {
            for open in streams.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
                open.close(End::Failed(Status::unavailable("the endpoint was removed")));
            }
        }
    }
}

/// One open stream: batches sent and not yet answered, in order.
struct Open<K: Streamed> {
    /// Taken when the stream is closed, which ends the request side.
    outbound: Mutex<Option<mpsc::UnboundedSender<K::Request>>>,
    /// Bounded by the coalescer's call slots: one entry per batch in flight.
    waiting: Mutex<VecDeque<Reply<K>>>,
    /// Set (under `waiting`) once nothing more is answered on it.
    closed: AtomicBool,
    driver: Mutex<Option<AbortHandle>>,
}

impl<K: Streamed> Open<K> {
    fn start(client: CounterServiceClient<Channel>) -> Arc<Open<K>> {
        let (outbound, mut rx) = mpsc::unbounded_channel();
        let open = Arc::new(Open {
            outbound: Mutex::new(Some(outbound)),
            waiting: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            driver: Mutex::new(None),
        });
        let driven = open.clone();
        let task = tokio::spawn(async move {
            let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let mut request = tonic::Request::new(requests);
            // Not traced: without this the counter could start a trace of
            // its own that lasts as long as the stream.
            crate::spans::inject(&tracing::Span::none(), &mut request);
            let end = match K::open(client, request).await {
                Ok(response) => driven.answer_all(response.into_inner()).await,
                Err(status) if status.code() == Code::Unimplemented => {
                    // Nothing was read: a counter that predates the stream.
                    let mut status = Status::unimplemented(format!("the counter does not serve {}", K::METHOD));
                    WriteOutcome::NotApplied.mark(&mut status);
                    End::Failed(status)
                }
                Err(status) => End::Failed(status),
            };
            driven.close(end);
        });
        *open.driver.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        open
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn is_idle(&self) -> bool {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Queues `request`; its answer arrives on the receiver.
    fn send(&self, request: K::Request) -> Result<oneshot::Receiver<Result<K::Response, Status>>, Status> {
        let (reply, answer) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = outbound.as_ref().is_some_and(|outbound| outbound.send(request).is_ok());
        if self.is_closed() || !sent {
            return Err(not_applied("the stream to the counter had closed; the batch was not sent"));
        }
        waiting.push_back(reply);
        Ok(answer)
    }

    /// Hands each answer to the batch it answers, until the stream ends.
    async fn answer_all(&self, mut inbound: Streaming<K::Response>) -> End {
        loop {
            match inbound.message().await {
                Ok(Some(answer)) => {
                    let reply = self.waiting.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                    match reply {
                        Some(reply) => drop(reply.send(Ok(answer))),
                        None => return End::Failed(Status::internal("the counter answered a batch never sent")),
                    }
                }
                // tonic reports an end without a grpc-status trailer (a
                // reset, say) as an error: this is the counter's own OK.
                Ok(None) => return End::Clean,
                Err(status) => return End::Failed(status),
            }
        }
    }

    /// Ends the stream: nothing more is sent on it (its request side ends),
    /// every batch still waiting is failed as [`unanswered`] says, and the
    /// driver stops reading answers.
    fn close(&self, first: End) {
        let waiting = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            self.closed.store(true, Ordering::Release);
            self.outbound.lock().unwrap_or_else(PoisonError::into_inner).take();
            std::mem::take(&mut *waiting)
        };
        for (reply, status) in waiting.into_iter().zip(unanswered(first)) {
            let _ = reply.send(Err(status));
        }
        if let Some(driver) = self.driver.lock().unwrap_or_else(PoisonError::into_inner).take() {
            driver.abort();
        }
    }
}

/// How a stream ended.
#[derive(Debug)]
enum End {
    /// OK: the counter answered every batch it read.
    Clean,
    Failed(Status),
}

/// The failures of the batches left unanswered when a stream ended, in
/// order. The first gets the stream's status (after a clean end: not
/// applied, it was never read). The others were not read either when the
/// counter ended the stream itself — cleanly, or with a status saying the
/// batch it failed was not applied, after which it reads nothing more — or
/// when the stream never reached it (refused by its GOAWAY, say); they are
/// of unknown outcome otherwise (the transport failed).
fn unanswered(end: End) -> impl Iterator<Item = Status> {
    let first = match end {
        End::Clean => not_applied("the counter closed the stream before reading the batch"),
        End::Failed(status) => status,
    };
    let unread = WriteOutcome::of(&first) == Some(WriteOutcome::NotApplied) || retry::never_reached_the_counter(&first);
    let rest = move || {
        if unread {
            not_applied("the counter read nothing of this stream")
        } else {
            Status::unavailable("the stream to the counter failed before this batch was answered")
        }
    };
    std::iter::once(first).chain(std::iter::repeat_with(rest))
}

fn not_applied(message: &str) -> Status {
    let mut status = Status::unavailable(message.to_string());
    WriteOutcome::NotApplied.mark(&mut status);
    status
}

#[cfg(test)]
mod tests;
