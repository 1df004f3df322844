//! Coalescing of concurrent single calls into batch calls,
//! so a busy gateway does not pay one gRPC round trip per HTTP request:
//! single increments become `BatchIncrement` calls, single reads `BatchGet`
//! calls, each counter read once per batch ([`Batched`] says how for each).
//!
//! The same loop as the counter's group committer
//! (`tally_runtime::batch_loop`): one per worker thread takes every item
//! queued there (up to `max_ops`) as soon as a call slot is free and sends
//! them as one batch. The slots ([`CallSlots`]) are the
//! gateway's, shared by the workers: `max_inflight` per known endpoint
//! ([`call_slots`]). An idle gateway sends a lone item at once, so nothing
//! waits for a timer. Each caller gets the result of its own item; the
//! counter's own group commit keeps the values consistent.
//!
//! Few slots make large batches, and a batch costs the counter about the
//! same whatever its size: measured on the increment path, one slot per
//! endpoint halved the counter's CPU per increment against four. Slots grow
//! with the endpoints so that a call hung on one (until its timeout) holds
//! up only its own share; they are counted healthy or not, because such a
//! call keeps its slot after its endpoint is marked down. A worker waiting for a slot is woken across
//! threads once per batch; its callers are answered on their own thread.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tally_runtime::batch_loop::next_batch;

use tally_proto::v1::{
    BatchGetRequest, BatchIncrementRequest, CounterRef, GetResponse, IncrementOperation, OperationResult,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{Instrument, Span};

use super::{CallError, Counter, collapse};
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

    /// The name of a batch's span.
    const SPAN_NAME: &'static str;

    /// Records the size of one batch.
    fn observe(counter: &Counter, items: usize);

    /// The gateway's call slots for this kind of call.
    fn slots(counter: &Counter) -> &Arc<CallSlots>;
}

/// Single increments → `BatchIncrement`.
pub struct Increments;

impl Batched for Increments {
    type Item = IncrementOperation;
    type Output = OperationResult;
    const SPAN_NAME: &'static str = "coalesce BatchIncrement";

    async fn call(counter: &Counter, operations: Vec<IncrementOperation>) -> Result<Vec<OperationResult>, CallError> {
        let request = BatchIncrementRequest { operations, r#async: false, omit_names: true };
        Ok(counter.coalesced_batch(request).await?.results)
    }

    fn observe(counter: &Counter, items: usize) {
        counter.metrics().coalesced_operations.observe(items as f64);
    }

    fn slots(counter: &Counter) -> &Arc<CallSlots> {
        &counter.batch_slots().increments
    }
}

/// Single reads → `BatchGet`.
pub struct Reads;

impl Batched for Reads {
    type Item = CounterRef;
    type Output = GetResponse;
    const SPAN_NAME: &'static str = "coalesce BatchGet";

    /// Each counter once, however many callers read it (`collapse`).
    async fn call(counter: &Counter, items: Vec<CounterRef>) -> Result<Vec<GetResponse>, CallError> {
        let (items, positions) = collapse::distinct(items);
        let asked = items.len();
        let answers = counter.coalesced_batch_get(BatchGetRequest { items, omit_names: true }).await?.results;
        let got = answers.len();
        collapse::spread(answers, &positions, asked)
            .ok_or_else(|| CallError::Protocol(format!("asked for {asked} counters, got {got} results")))
    }

    fn observe(counter: &Counter, items: usize) {
        counter.metrics().coalesced_reads.observe(items as f64);
    }

    fn slots(counter: &Counter) -> &Arc<CallSlots> {
        &counter.batch_slots().reads
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
    tx: mpsc::UnboundedSender<Job<B>>,
    /// Items in the queue: bounded by the live `coalesce_max_queue`.
    queued: Arc<AtomicUsize>,
    counter: Counter,
}

impl<B: Batched> Clone for Coalescer<B> {
    fn clone(&self) -> Self {
        Coalescer { tx: self.tx.clone(), queued: self.queued.clone(), counter: self.counter.clone() }
    }
}

impl<B: Batched> Coalescer<B> {
    /// Starts the loop. At most `coalesce_max_queue` items wait for a call
    /// (a live setting, [`Counter::tuning`]); a full queue answers
    /// [`CallError::Overloaded`] at once (load shedding rather than an ever
    /// longer wait), and so does an item that waited longer than `max_wait`,
    /// the request deadline (it is never sent).
    pub fn start(counter: Counter, max_wait: Duration) -> Coalescer<B> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run::<B>(rx, counter.clone(), queued.clone(), max_wait));
        Coalescer { tx, queued, counter }
    }

    /// Queues `item` and waits for its own result.
    pub async fn call(&self, item: B::Item) -> Result<B::Output, CallError> {
        let (reply, rx) = oneshot::channel();
        let span = if tally_runtime::telemetry::enabled() { Span::current() } else { Span::none() };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.counter.tuning().coalesce_max_queue() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Overloaded);
        }
        if self.tx.send(Job { item, span, reply, queued: Instant::now() }).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::ShuttingDown);
        }
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }
}

/// Calls that may be in flight: `per_endpoint` for each known endpoint, and
/// `per_endpoint` while none is known (the call then fails fast).
pub fn call_slots(per_endpoint: usize, endpoints: usize) -> usize {
    per_endpoint.max(1) * endpoints.max(1)
}

/// The coalesced calls of one kind in flight, counted across every worker.
pub struct CallSlots {
    /// A live setting (`coalesce_max_inflight`).
    per_endpoint: AtomicUsize,
    in_flight: AtomicUsize,
    freed: Notify,
}

impl CallSlots {
    pub fn new(per_endpoint: usize) -> CallSlots {
        CallSlots { per_endpoint: AtomicUsize::new(per_endpoint), in_flight: AtomicUsize::new(0), freed: Notify::new() }
    }

    /// Changes the slots per endpoint; more slots wake the waiting loops.
    pub fn set_per_endpoint(&self, per_endpoint: usize) {
        self.per_endpoint.store(per_endpoint, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// Waits for a free slot, given the endpoints now.
    async fn take(self: &Arc<Self>, endpoints: impl Fn() -> usize) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed meanwhile still wakes us.
            freed.as_mut().enable();
            let taken = self.in_flight.load(Ordering::Acquire);
            if taken < call_slots(self.per_endpoint.load(Ordering::Acquire), endpoints()) {
                if self.in_flight.compare_exchange(taken, taken + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Slot(self.clone());
                }
                continue; // another worker took it first
            }
            freed.await;
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A call in flight; frees its slot when dropped (also if the call's task
/// is cancelled).
struct Slot(Arc<CallSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

async fn run<B: Batched>(
    mut rx: mpsc::UnboundedReceiver<Job<B>>,
    counter: Counter,
    queued: Arc<AtomicUsize>,
    max_wait: Duration,
) {
    let slots = B::slots(&counter).clone();
    loop {
        let slot = || async { Some(slots.take(|| counter.backends().endpoint_count()).await) };
        let max_ops = || counter.tuning().coalesce_max_ops();
        let Some((jobs, slot)) = next_batch(&mut rx, slot, max_ops, |_| 1).await else { return };
        queued.fetch_sub(jobs.len(), Ordering::AcqRel);
        let jobs = sendable(jobs, max_wait);
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
    // One clock read per batch, not per job.
    let now = Instant::now();
    jobs.into_iter()
        .filter(|job| !job.reply.is_closed())
        .filter_map(|job| {
            if now.saturating_duration_since(job.queued) <= max_wait {
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
    let batch = spans::coalesced_batch(B::SPAN_NAME, &members);
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
    fn call_slots_grow_with_the_endpoints() {
        assert_eq!(call_slots(1, 0), 1, "one call may still go out (and fail fast) with none known");
        assert_eq!(call_slots(1, 3), 3);
        assert_eq!(call_slots(2, 3), 6);
        assert_eq!(call_slots(0, 2), 2, "at least one per endpoint");
    }

    #[tokio::test]
    async fn a_call_slot_freed_on_another_thread_wakes_the_waiting_worker() {
        let slots = Arc::new(CallSlots::new(1));
        let first = slots.take(|| 1).await;
        assert_eq!(slots.in_flight(), 1);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(|| 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one endpoint, one slot: the second call waits");
        std::thread::spawn(move || drop(first)).join().expect("freed");
        let second = waiting.await.expect("the waiter got the freed slot");
        assert_eq!(slots.in_flight(), 1);
        drop(second);
        assert_eq!(slots.in_flight(), 0);
        let (a, b) = (slots.take(|| 2).await, slots.take(|| 2).await);
        assert_eq!(slots.in_flight(), 2, "two endpoints: two calls at once");
        drop((a, b));
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
