//! The group committer: the path by which increments reach the store (the
//! write-behind buffer's flusher, `buffer.rs`, is the other).
//!
//! Callers submit operations and wait. A loop takes whatever is queued (up
//! to `max_ops`), and flushes it as one store round trip while the next
//! callers queue up behind it; up to `max_inflight` flushes overlap. When the
//! service is idle a lone request is flushed at once, so latency at low load
//! is one store round trip; under load, batches grow by themselves.
//!
//! Each worker thread runs its own committer over its own store connection,
//! so a request never leaves the thread that read it; the queue room and
//! the flush slots ([`CommitLimits`]) are shared, so both bounds hold per
//! process.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_runtime::batch_loop::next_batch;

use tally_proto::CounterKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tracing::{Instrument, Span};

use crate::group_sums::{plan, values_after};
use crate::metrics::Metrics;
use crate::spans;
use crate::store::{Change, KeyedCmd, Outcome, Store, StoreError};

/// One validated write: an increment, or a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: CounterKey,
    pub change: Change,
    /// Applied at most once per counter within the retention window.
    pub idempotency_key: Option<String>,
}

impl Op {
    pub fn new(key: CounterKey, delta: i64) -> Op {
        Op { key, change: Change::Add(delta), idempotency_key: None }
    }

    /// The amount it adds; 0 for a reset (which never joins a summed group).
    pub fn delta(&self) -> i64 {
        match self.change {
            Change::Add(delta) => delta,
            Change::Reset => 0,
        }
    }

    /// Whether it must go through the store's ordered path, one command of
    /// its own: it carries an idempotency key, or it is a reset (which a sum
    /// cannot express).
    fn is_ordered(&self) -> bool {
        self.idempotency_key.is_some() || self.change == Change::Reset
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    /// Operations collected into one flush at most.
    pub max_ops: usize,
    /// Flushes allowed in flight at once.
    pub max_inflight: usize,
    /// Operations waiting for or in a flush at most; a request that does
    /// not fit is refused at once.
    pub max_queue: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_retention: Duration,
}

/// Why an operation was not even queued for the store: nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the committer has shut down")]
    Closed,
    /// The queue is full: shed at once rather than queue without limit.
    #[error("the counter is overloaded (commit queue full); nothing was applied")]
    Overloaded,
}

struct Job {
    ops: Vec<Op>,
    /// Its operations' room in the queue, given back once it is answered.
    _room: OwnedSemaphorePermit,
    /// The submitting request's span, linked with the flush that applies it.
    span: Span,
    /// The operations handed back with their results (no copy is kept).
    reply: oneshot::Sender<(Vec<Op>, Vec<Outcome>)>,
}

/// The bounds all committers of a process share.
#[derive(Clone)]
pub struct CommitLimits {
    /// Room for `max_queue` operations; each job holds its share. Bounded
    /// in operations, not requests: a request carries 1 to 1,000.
    room: Arc<Semaphore>,
    /// `max_inflight` flushes at once.
    slots: Arc<Semaphore>,
}

impl CommitLimits {
    pub fn new(settings: &CommitSettings) -> CommitLimits {
        CommitLimits {
            room: Arc::new(Semaphore::new(settings.max_queue.clamp(1, Semaphore::MAX_PERMITS))),
            slots: Arc::new(Semaphore::new(settings.max_inflight.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

/// Handle to a committer loop; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    shed: prometheus_client::metrics::counter::Counter,
}

impl GroupCommitter {
    /// Starts a committer loop on the current runtime, within `limits`. It
    /// ends when every handle is dropped, after its in-flight flushes
    /// finished.
    pub fn start(store: Arc<Store>, settings: CommitSettings, limits: &CommitLimits, metrics: Arc<Metrics>) -> Self {
        let (committer, rx) = GroupCommitter::unstarted(limits, &metrics);
        tokio::spawn(run(rx, store, settings, limits.slots.clone(), metrics));
        committer
    }

    /// A handle and the queue it feeds, no loop yet.
    fn unstarted(limits: &CommitLimits, metrics: &Metrics) -> (GroupCommitter, mpsc::UnboundedReceiver<Job>) {
        // Unbounded channel, bounded room: the permits bound the queue.
        let (tx, rx) = mpsc::unbounded_channel();
        (GroupCommitter { tx, room: limits.room.clone(), shed: metrics.commit_shed.clone() }, rx)
    }

    /// Applies `ops`; hands them back with one result per operation, in
    /// order.
    pub async fn submit(&self, ops: Vec<Op>) -> Result<(Vec<Op>, Vec<Outcome>), SubmitError> {
        // A request that does not fit is refused at once (UNAVAILABLE,
        // provably not applied) instead of waiting behind an ever longer queue.
        let wanted = u32::try_from(ops.len()).unwrap_or(u32::MAX);
        let room = self.room.clone().try_acquire_many_owned(wanted).map_err(|err| match err {
            TryAcquireError::NoPermits => {
                self.shed.inc();
                SubmitError::Overloaded
            }
            TryAcquireError::Closed => SubmitError::Closed,
        })?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { ops, _room: room, span: spans::current(), reply }).map_err(|_| SubmitError::Closed)?;
        rx.await.map_err(|_| SubmitError::Closed)
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Job>,
    store: Arc<Store>,
    settings: CommitSettings,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
) {
    loop {
        // The shared loop (tally_runtime::batch_loop): a flush slot is taken
        // only once there is work, since an idle committer holding a shared
        // slot would starve the others.
        let slot = || async { slots.clone().acquire_owned().await.ok() };
        let Some((mut jobs, slot)) = next_batch(&mut rx, slot, || settings.max_ops, |job: &Job| job.ops.len()).await
        else {
            return;
        };
        // A caller that gave up while queued (its deadline passed, or the
        // client cancelled) is not flushed: nothing of it was applied, and
        // its wait ended with its deadline.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (store, metrics) = (store.clone(), metrics.clone());
        let retention = settings.idempotency_retention;
        tokio::spawn(async move {
            flush(&store, jobs, retention, &metrics).await;
            drop(slot);
        });
    }
}

/// One group commit: sum per counter, one store round trip (plus one more
/// only if a summed command overflowed), then answer every caller.
/// Requests carrying idempotency keys or resets go, concurrently, through
/// the store's ordered path instead (each operation its own command, keyed
/// ones checked and applied atomically), whole, so a batch's operations on
/// one counter still apply in the batch's order. Every command is atomic in
/// the store, so the values handed out (prefix sums of a summed group, a
/// reset's value before) all fit one serial order of the operations.
async fn flush(store: &Store, jobs: Vec<Job>, retention: Duration, metrics: &Metrics) {
    // A job with any ordered operation goes the ordered way whole.
    let ordered: Vec<bool> = jobs.iter().map(|job| job.ops.iter().any(Op::is_ordered)).collect();
    // Sized for every operation: the summed way is the common one.
    let mut plain: Vec<(&CounterKey, i64)> = Vec::with_capacity(jobs.iter().map(|job| job.ops.len()).sum());
    let mut keyed: Vec<KeyedCmd<'_>> = Vec::new();
    for (job, &ordered) in jobs.iter().zip(&ordered) {
        if ordered {
            keyed.extend(job.ops.iter().map(|op| (&op.key, op.change, op.idempotency_key.as_deref())));
        } else {
            plain.extend(job.ops.iter().map(|op| (&op.key, op.delta())));
        }
    }
    let span = if tally_runtime::telemetry::enabled() {
        let members: Vec<Span> = jobs.iter().map(|job| job.span.clone()).collect();
        spans::group_commit(spans::db_system(store.kind()), &members, plain.len() + keyed.len())
    } else {
        Span::none()
    };
    let (plain_results, keyed_results) =
        async { tokio::join!(apply(store, &plain, metrics), apply_keyed(store, &keyed, retention, metrics)) }
            .instrument(span.clone())
            .await;
    drop((plain, keyed));
    let replays = keyed_results.iter().filter(|r| matches!(r, Outcome::Replayed(_))).count();
    metrics.idempotency_replays.inc_by(replays as u64);
    if let Some(Outcome::Failed(err)) =
        plain_results.iter().chain(&keyed_results).find(|r| matches!(r, Outcome::Failed(_)))
    {
        spans::failed(&span, err);
    }
    // Each way answers its jobs' operations in the jobs' order.
    let (mut plain_results, mut keyed_results) = (plain_results.into_iter(), keyed_results.into_iter());
    for (job, ordered) in jobs.into_iter().zip(ordered) {
        let results = if ordered { &mut keyed_results } else { &mut plain_results };
        let mine: Vec<Outcome> = (0..job.ops.len()).map(|_| results.next().unwrap_or_else(lost)).collect();
        // A caller that gave up (cancelled request) no longer listens; its
        // operations were applied all the same, as for any cancelled write.
        let _ = job.reply.send((job.ops, mine));
    }
}

async fn apply_keyed(store: &Store, cmds: &[KeyedCmd<'_>], retention: Duration, metrics: &Metrics) -> Vec<Outcome> {
    if cmds.is_empty() {
        return Vec::new();
    }
    let started = Instant::now();
    let outcomes = store.apply_ordered(cmds, retention).await;
    metrics.store_ordered.observe(started.elapsed().as_secs_f64());
    outcomes
}

/// Applies `ops` with per-counter summing; one result per op, in order.
pub async fn apply(store: &Store, ops: &[(&CounterKey, i64)], metrics: &Metrics) -> Vec<Outcome> {
    if ops.is_empty() {
        return Vec::new();
    }
    let plan = plan(ops);
    let cmds: Vec<(&CounterKey, i64)> = plan.groups.iter().map(|g| (g.key, g.total)).collect();
    metrics.commit_ops.observe(ops.len() as f64);
    metrics.commit_commands.observe(cmds.len() as f64);
    let outcomes = timed_incr(store, &cmds, metrics).await;

    let mut results: Vec<Option<Outcome>> = vec![None; ops.len()];
    // Members of a summed command that overflowed: retried one by one, so only
    // the operations that really overflow are refused.
    let mut one_by_one: Vec<usize> = Vec::new();
    for (group, outcome) in plan.groups.iter().zip(outcomes) {
        let members = plan.members(group);
        match outcome {
            Outcome::Applied(after) => {
                let before = after.wrapping_sub(group.total); // exact: both ends fit in i64
                values_after(before, members, |index, value| results[index] = Some(Outcome::Applied(value)));
            }
            Outcome::Overflow if members.len() > 1 => {
                one_by_one.extend(members.iter().map(|&(index, _)| index));
            }
            Outcome::Overflow => results[members[0].0] = Some(Outcome::Overflow),
            // A summed command carries no idempotency key: never replayed.
            Outcome::Replayed(_) | Outcome::Failed(_) => {
                let err = match outcome {
                    Outcome::Failed(err) => err,
                    _ => StoreError::Unknown("a plain increment answered as a replay".into()),
                };
                for &(index, _) in members {
                    results[index] = Some(Outcome::Failed(err.clone()));
                }
            }
        }
    }
    if !one_by_one.is_empty() {
        one_by_one.sort_unstable(); // arrival order
        let cmds: Vec<(&CounterKey, i64)> = one_by_one.iter().map(|&i| ops[i]).collect();
        for (&index, outcome) in one_by_one.iter().zip(timed_incr(store, &cmds, metrics).await) {
            results[index] = Some(outcome);
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(lost)).collect()
}

/// The outcome of an operation no result was matched to (never expected).
fn lost() -> Outcome {
    Outcome::Failed(StoreError::Unknown("operation lost track of".into()))
}

async fn timed_incr(store: &Store, cmds: &[(&CounterKey, i64)], metrics: &Metrics) -> Vec<Outcome> {
    let started = Instant::now();
    let outcomes = store.incr(cmds).await;
    metrics.store_incr.observe(started.elapsed().as_secs_f64());
    if let Some(err) = outcomes.iter().find_map(|o| match o {
        Outcome::Failed(err) => Some(err),
        _ => None,
    }) {
        metrics.store_errors.get_or_create(&[("kind", err.kind())]).inc();
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: usize) -> Vec<Op> {
        (0..n).map(|i| Op::new(CounterKey::new(format!("r{i}"), "likes").expect("valid key"), 1)).collect()
    }

    #[tokio::test]
    async fn committers_sharing_one_flush_slot_all_make_progress() {
        let settings =
            CommitSettings { max_ops: 100, max_inflight: 1, max_queue: 1000, idempotency_retention: Duration::ZERO };
        let limits = CommitLimits::new(&settings);
        let timeouts =
            crate::store::StoreTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(1) };
        let options = crate::store::StoreOptions { timeouts, tls: Default::default(), wait: None };
        let store = Arc::new(Store::from_url("memory", &options).expect("memory store"));
        let metrics = Arc::new(Metrics::new());
        let committers: Vec<GroupCommitter> =
            (0..3).map(|_| GroupCommitter::start(store.clone(), settings, &limits, metrics.clone())).collect();
        // Twice in a row each: the slot must come back to the one with work.
        for (i, committer) in [0, 0, 1, 1, 2, 2, 0].into_iter().map(|c| &committers[c]).enumerate() {
            // A committer idling with the only slot would leave this waiting forever.
            let submitted = tokio::time::timeout(Duration::from_secs(5), committer.submit(ops(1))).await;
            let (_, results) = submitted.expect("answered while the others idle").expect("submitted");
            assert_eq!(results, vec![Outcome::Applied(i as i64 + 1)]);
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_operations_not_requests() {
        let settings =
            CommitSettings { max_ops: 100, max_inflight: 1, max_queue: 1000, idempotency_retention: Duration::ZERO };
        // No loop: what is submitted stays queued.
        let (committer, mut queue) = GroupCommitter::unstarted(&CommitLimits::new(&settings), &Metrics::new());
        let waiting = |n| {
            let committer = committer.clone();
            tokio::spawn(async move { committer.submit(ops(n)).await })
        };
        let (first, second) = (waiting(600), waiting(400));
        let (a, b) = (queue.recv().await.expect("queued"), queue.recv().await.expect("queued"));
        assert_eq!(a.ops.len() + b.ops.len(), 1000);
        assert_eq!(committer.submit(ops(1)).await, Err(SubmitError::Overloaded), "1,000 operations queued: full");
        // Answered (here: dropped unanswered), the two give their room back.
        drop((a, b));
        assert_eq!(first.await.expect("task"), Err(SubmitError::Closed));
        assert_eq!(second.await.expect("task"), Err(SubmitError::Closed));
        let third = waiting(1000);
        assert_eq!(queue.recv().await.expect("room again").ops.len(), 1000);
        drop(third);
    }
}
