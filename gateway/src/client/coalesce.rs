//! Coalescing of concurrent single increments into `BatchIncrement` calls
//! (plan item 3), so a busy gateway does not pay one gRPC round trip per
//! HTTP request.
//!
//! Same shape as the counter's group committer: one loop takes every queued
//! increment (up to `max_ops`) as soon as a call slot is free and sends them
//! as one batch; up to `max_inflight` batches are in flight. An idle gateway
//! sends a lone increment at once, so nothing waits for a timer. Each caller
//! gets the result of its own operation; the counter's own group commit
//! keeps the values consistent.

use std::sync::Arc;

use tally_proto::v1::{BatchIncrementRequest, IncrementOperation, OperationResult};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, Span};

use super::{CallError, Counter};
use crate::spans;

struct Job {
    op: IncrementOperation,
    /// The waiting request's span, linked with the batch that carries it.
    span: Span,
    reply: oneshot::Sender<Result<OperationResult, CallError>>,
}

#[derive(Clone)]
pub struct Coalescer {
    tx: mpsc::Sender<Job>,
}

impl Coalescer {
    /// Starts the loop. At most `max_queue` increments wait for a call; a
    /// full queue answers [`CallError::Overloaded`] at once (load shedding
    /// rather than an ever longer wait).
    pub fn start(counter: Counter, max_ops: usize, max_inflight: usize, max_queue: usize) -> Coalescer {
        let (tx, rx) = mpsc::channel(max_queue.max(1));
        tokio::spawn(run(rx, counter, max_ops.max(1), max_inflight.max(1)));
        Coalescer { tx }
    }

    pub async fn increment(&self, op: IncrementOperation) -> Result<OperationResult, CallError> {
        let (reply, rx) = oneshot::channel();
        let span = if tally_runtime::telemetry::enabled() { Span::current() } else { Span::none() };
        self.tx.try_send(Job { op, span, reply }).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => CallError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => CallError::ShuttingDown,
        })?;
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, counter: Counter, max_ops: usize, max_inflight: usize) {
    let slots = Arc::new(Semaphore::new(max_inflight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut jobs = vec![first];
        while jobs.len() < max_ops {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A request that gave up while queued (client gone) is not sent:
        // its wait ended with its deadline, and nothing was applied.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let counter = counter.clone();
        tokio::spawn(async move {
            send(&counter, jobs).await;
            drop(slot);
        });
    }
}

async fn send(counter: &Counter, jobs: Vec<Job>) {
    counter.metrics().coalesced_operations.observe(jobs.len() as f64);
    let mut ops = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut members = Vec::with_capacity(jobs.len());
    for job in jobs {
        ops.push(job.op);
        replies.push(job.reply);
        members.push(job.span);
    }
    let batch = spans::coalesced_batch(&members);
    drop(members);
    let expected = ops.len();
    let request = BatchIncrementRequest { operations: ops, r#async: false };
    match counter.batch_increment(request).instrument(batch).await {
        Ok(response) if response.results.len() == expected => {
            for (reply, result) in replies.into_iter().zip(response.results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(response) => {
            let err = CallError::Protocol(format!("expected {expected} results, got {}", response.results.len()));
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
