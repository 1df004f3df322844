//! Coalescing of concurrent single calls into batch calls (plan item 3),
//! so a busy gateway does not pay one gRPC round trip per HTTP request:
//! single increments become `BatchIncrement` calls, single reads `BatchGet`
//! calls ([`Batched`] says how for each).
//!
//! Same shape as the counter's group committer: one loop takes every queued
//! item (up to `max_ops`) as soon as a call slot is free and sends them as
//! one batch; up to `max_inflight` batches are in flight. An idle gateway
//! sends a lone item at once, so nothing waits for a timer. Each caller gets
//! the result of its own item; the counter's own group commit keeps the
//! values consistent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_proto::v1::{
    BatchGetRequest, BatchIncrementRequest, CounterRef, GetResponse, IncrementOperation, OperationResult,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, Span};

use super::{CallError, Counter};
use crate::spans;

/// A kind of call that can be batched: one item per caller in, one output
/// per item back, in order.
pub trait Batched: Send + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    /// Sends `items` as one call.
    fn call(
        counter: &Counter,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<Vec<Self::Output>, CallError>> + Send;

    /// Records the size of one batch.
    fn observe(counter: &Counter, items: usize);
}

/// Single increments → `BatchIncrement`.
pub struct Increments;

impl Batched for Increments {
    type Item = IncrementOperation;
    type Output = OperationResult;

    async fn call(counter: &Counter, operations: Vec<IncrementOperation>) -> Result<Vec<OperationResult>, CallError> {
        let request = BatchIncrementRequest { operations, r#async: false };
        Ok(counter.batch_increment(request).await?.results)
    }

    fn observe(counter: &Counter, items: usize) {
        counter.metrics().coalesced_operations.observe(items as f64);
    }
}

/// Single reads → `BatchGet`.
pub struct Reads;

impl Batched for Reads {
    type Item = CounterRef;
    type Output = GetResponse;

    async fn call(counter: &Counter, items: Vec<CounterRef>) -> Result<Vec<GetResponse>, CallError> {
        Ok(counter.batch_get(BatchGetRequest { items }).await?.results)
    }

    fn observe(counter: &Counter, items: usize) {
        counter.metrics().coalesced_reads.observe(items as f64);
    }
}

struct Job<B: Batched> {
    item: B::Item,
    /// The waiting request's span, linked with the batch that carries it.
    span: Span,
    reply: oneshot::Sender<Result<B::Output, CallError>>,
    /// When it was queued: it waits at most the request deadline.
    queued: Instant,
}

pub struct Coalescer<B: Batched> {
    tx: mpsc::Sender<Job<B>>,
}

impl<B: Batched> Clone for Coalescer<B> {
    fn clone(&self) -> Self {
        Coalescer { tx: self.tx.clone() }
    }
}

/// Bounds of the coalescing queue.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceLimits {
    /// Most items carried by one call.
    pub max_ops: usize,
    /// Calls in flight at once.
    pub max_inflight: usize,
    /// Items waiting at most.
    pub max_queue: usize,
    /// Longest wait in the queue (the request deadline).
    pub max_wait: Duration,
}

impl<B: Batched> Coalescer<B> {
    /// Starts the loop. At most `limits.max_queue` items wait for a call; a
    /// full queue answers [`CallError::Overloaded`] at once (load shedding
    /// rather than an ever longer wait), and so does an item that waited
    /// longer than `limits.max_wait` (it is never sent).
    pub fn start(counter: Counter, limits: CoalesceLimits) -> Coalescer<B> {
        let (tx, rx) = mpsc::channel(limits.max_queue.max(1));
        tokio::spawn(run::<B>(rx, counter, limits));
        Coalescer { tx }
    }

    /// Queues `item` and waits for its own result.
    pub async fn call(&self, item: B::Item) -> Result<B::Output, CallError> {
        let (reply, rx) = oneshot::channel();
        let span = if tally_runtime::telemetry::enabled() { Span::current() } else { Span::none() };
        self.tx.try_send(Job { item, span, reply, queued: Instant::now() }).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => CallError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => CallError::ShuttingDown,
        })?;
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }
}

async fn run<B: Batched>(mut rx: mpsc::Receiver<Job<B>>, counter: Counter, limits: CoalesceLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut jobs = vec![first];
        while jobs.len() < limits.max_ops.max(1) {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let jobs = sendable(jobs, limits.max_wait);
        if jobs.is_empty() {
            continue;
        }
        let counter = counter.clone();
        tokio::spawn(async move {
            send::<B>(&counter, jobs).await;
            drop(slot);
        });
    }
}

/// The jobs still worth sending. A request that gave up while queued
/// (client gone) is dropped, and one that waited longer than `max_wait` is
/// answered [`CallError::Overloaded`]: neither was sent, so nothing of them
/// was applied.
fn sendable<B: Batched>(jobs: Vec<Job<B>>, max_wait: Duration) -> Vec<Job<B>> {
    jobs.into_iter()
        .filter(|job| !job.reply.is_closed())
        .filter_map(|job| {
            if job.queued.elapsed() <= max_wait {
                return Some(job);
            }
            let _ = job.reply.send(Err(CallError::Overloaded));
            None
        })
        .collect()
}

async fn send<B: Batched>(counter: &Counter, jobs: Vec<Job<B>>) {
    B::observe(counter, jobs.len());
    let mut items = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut members = Vec::with_capacity(jobs.len());
    for job in jobs {
        items.push(job.item);
        replies.push(job.reply);
        members.push(job.span);
    }
    let batch = spans::coalesced_batch(&members);
    drop(members);
    let expected = items.len();
    match B::call(counter, items).instrument(batch).await {
        Ok(results) if results.len() == expected => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let err = CallError::Protocol(format!("expected {expected} results, got {}", results.len()));
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(waited: Duration) -> (Job<Increments>, oneshot::Receiver<Result<OperationResult, CallError>>) {
        let (reply, rx) = oneshot::channel();
        let queued = Instant::now().checked_sub(waited).expect("a past instant");
        (Job { item: IncrementOperation::default(), span: Span::none(), reply, queued }, rx)
    }

    #[test]
    fn queued_increments_past_their_deadline_or_abandoned_are_not_sent() {
        let max_wait = Duration::from_secs(3);
        let (fresh, _fresh_rx) = job(Duration::ZERO);
        let (stale, mut stale_rx) = job(Duration::from_secs(4));
        let (abandoned, abandoned_rx) = job(Duration::ZERO);
        drop(abandoned_rx); // its client went away
        let kept = sendable(vec![fresh, stale, abandoned], max_wait);
        assert_eq!(kept.len(), 1, "only the fresh one is sent");
        assert!(matches!(stale_rx.try_recv(), Ok(Err(CallError::Overloaded))), "the stale one is answered 503");
    }
}
