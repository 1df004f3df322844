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
use std::time::{Duration, Instant};

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
    /// When it was queued: it waits at most the request deadline.
    queued: Instant,
}

#[derive(Clone)]
pub struct Coalescer {
    tx: mpsc::Sender<Job>,
}

impl Coalescer {
    /// Starts the loop. At most `limits.max_queue` increments wait for a
    /// call; a full queue answers [`CallError::Overloaded`] at once (load
    /// shedding rather than an ever longer wait), and so does an increment
    /// that waited longer than `limits.max_wait` (it is never sent).
    pub fn start(counter: Counter, limits: CoalesceLimits) -> Coalescer {
        let (tx, rx) = mpsc::channel(limits.max_queue.max(1));
        tokio::spawn(run(rx, counter, limits));
        Coalescer { tx }
    }

    pub async fn increment(&self, op: IncrementOperation) -> Result<OperationResult, CallError> {
        let (reply, rx) = oneshot::channel();
        let span = if tally_runtime::telemetry::enabled() { Span::current() } else { Span::none() };
        self.tx.try_send(Job { op, span, reply, queued: Instant::now() }).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => CallError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => CallError::ShuttingDown,
        })?;
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }
}

/// Bounds of the coalescing queue.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceLimits {
    /// Most increments carried by one call.
    pub max_ops: usize,
    /// Calls in flight at once.
    pub max_inflight: usize,
    /// Increments waiting at most.
    pub max_queue: usize,
    /// Longest wait in the queue (the request deadline).
    pub max_wait: Duration,
}

async fn run(mut rx: mpsc::Receiver<Job>, counter: Counter, limits: CoalesceLimits) {
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
            send(&counter, jobs).await;
            drop(slot);
        });
    }
}

/// The jobs still worth sending. A request that gave up while queued
/// (client gone) is dropped, and one that waited longer than `max_wait` is
/// answered [`CallError::Overloaded`]: neither was sent, so nothing of them
/// was applied.
fn sendable(jobs: Vec<Job>, max_wait: Duration) -> Vec<Job> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(waited: Duration) -> (Job, oneshot::Receiver<Result<OperationResult, CallError>>) {
        let (reply, rx) = oneshot::channel();
        let queued = Instant::now().checked_sub(waited).expect("a past instant");
        (Job { op: IncrementOperation::default(), span: Span::none(), reply, queued }, rx)
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
