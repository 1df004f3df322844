//! The write-behind buffer for async increments.
//!
//! Async operations are acknowledged once they are in this buffer, where they
//! are summed per counter. The flusher sends the buffer to the store itself
//! (`Store::incr_batch_once`, not through the group committer) every
//! `flush_interval`, or as soon as `batch_size` operations arrived, whichever
//! comes first.
//!
//! Bounded: at most `capacity` distinct counters wait here (including a batch
//! awaiting a resend); an offer that does not fit is refused
//! ([`Offer::Full`]) and the caller applies it synchronously or rejects it,
//! never drops it.
//!
//! A flush that fails is resent unchanged under the same batch id until it
//! succeeds; the store applies a batch at most once per id
//! ([`crate::store::batch`]), so a resend after an ambiguous failure cannot
//! count twice. On shutdown the flusher drains everything, retrying while the
//! store is unreachable, until the shutdown deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use tally_proto::CounterKey;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::spans;
use crate::store::batch;
use crate::store::{Outcome, Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    /// Flush as soon as this many operations are buffered.
    pub batch_size: usize,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// Most distinct counters held at once.
    pub capacity: usize,
    /// Life of the store's batch markers; bounds how long a batch whose
    /// outcome is unknown may still be resent ([`batch::resend_window`]).
    /// Fixed at startup: [`WriteBuffer::retune`] keeps it.
    pub marker_ttl: Duration,
    /// What an async batch that does not fit gets.
    pub full_policy: BufferFullPolicy,
}

/// What to do with an async batch when the write-behind buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BufferFullPolicy {
    /// Apply it synchronously (slower, never refused).
    Sync,
    /// Refuse it with RESOURCE_EXHAUSTED (HTTP 429) so the client backs off.
    Reject,
}

/// The answer to [`WriteBuffer::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Buffered: the caller may acknowledge.
    Accepted,
    /// Not buffered (full, shutting down, or a sum would overflow): nothing
    /// was taken, the caller must apply or reject the operations itself.
    Full,
}

#[derive(Default)]
struct Pending {
    deltas: HashMap<CounterKey, i64>,
    ops_since_flush: usize,
    closed: bool,
    /// A flushed batch the store did not confirm; resent before anything else.
    in_doubt: Option<Batch>,
    /// The traced requests buffered since the last flush (at most
    /// [`MAX_LINKS`]), linked from the flush that applies them.
    links: Vec<SpanContext>,
    /// When the oldest buffered operation arrived (for the age gauge).
    oldest: Option<std::time::Instant>,
}

/// Links per flush span at most (the OpenTelemetry SDK's default limit).
const MAX_LINKS: usize = 128;

impl Pending {
    /// Counters held: buffered plus awaiting a resend.
    fn held(&self) -> usize {
        self.deltas.len() + self.in_doubt.as_ref().map_or(0, |b| b.cmds.len())
    }
}

struct Batch {
    id: String,
    cmds: Vec<(CounterKey, i64)>,
    links: Vec<SpanContext>,
    /// When its oldest operation was buffered.
    oldest: Option<std::time::Instant>,
    /// When an attempt first failed in a way that may have applied it; from
    /// then on its marker's life limits how long it may be resent.
    ambiguous_since: Option<Instant>,
}

pub struct WriteBuffer {
    pending: Mutex<Pending>,
    batch_ready: Notify,
    /// Live: [`WriteBuffer::retune`].
    settings: ArcSwap<BufferSettings>,
    /// Wakes the flusher to take a new flush interval.
    retuned: Notify,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl WriteBuffer {
    pub fn new(settings: BufferSettings, store: Arc<Store>, metrics: Arc<Metrics>) -> WriteBuffer {
        metrics.buffer_capacity.set(i64::try_from(settings.capacity).unwrap_or(i64::MAX));
        WriteBuffer {
            pending: Mutex::default(),
            batch_ready: Notify::new(),
            settings: ArcSwap::from_pointee(settings),
            retuned: Notify::new(),
            store,
            metrics,
        }
    }

    /// Takes new batch size, flush interval, capacity and full-buffer
    /// policy. A smaller capacity refuses new counters until the buffer is
    /// under it; nothing already buffered is dropped.
    pub fn retune(&self, new: &BufferSettings) {
        let marker_ttl = self.settings.load().marker_ttl;
        self.settings.store(Arc::new(BufferSettings { marker_ttl, ..*new }));
        self.metrics.buffer_capacity.set(i64::try_from(new.capacity).unwrap_or(i64::MAX));
        self.retuned.notify_one();
        self.batch_ready.notify_one();
    }

    /// What an async batch that does not fit gets now.
    pub fn full_policy(&self) -> BufferFullPolicy {
        self.settings.load().full_policy
    }

    fn settings(&self) -> BufferSettings {
        **self.settings.load()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Buffers all of `ops` or none of them.
    pub fn offer(&self, ops: &[(CounterKey, i64)]) -> Offer {
        let settings = self.settings();
        let mut pending = self.lock();
        let room = settings.capacity.saturating_sub(pending.in_doubt.as_ref().map_or(0, |b| b.cmds.len()));
        if pending.closed || !fits(&pending.deltas, ops, room) {
            return Offer::Full;
        }
        for (key, delta) in ops {
            match pending.deltas.get_mut(key) {
                Some(sum) => *sum += delta, // checked by `fits`
                None => {
                    pending.deltas.insert(key.clone(), *delta);
                }
            }
        }
        pending.ops_since_flush += ops.len();
        pending.oldest.get_or_insert_with(std::time::Instant::now);
        if tally_runtime::telemetry::enabled() && pending.links.len() < MAX_LINKS {
            let context = tally_runtime::telemetry::span_context(&tracing::Span::current());
            if context.is_valid() {
                pending.links.push(context);
            }
        }
        self.metrics.buffer_keys.set(pending.deltas.len() as i64);
        if pending.ops_since_flush >= settings.batch_size {
            self.batch_ready.notify_one();
        }
        Offer::Accepted
    }

    /// Counters currently held (buffered or awaiting a resend).
    pub fn held(&self) -> usize {
        self.lock().held()
    }

    /// Flushes until `shutdown` fires, then drains everything (see module doc),
    /// giving up on what is left after `drain_timeout`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain_timeout: Duration) {
        // First tick one interval from now (a plain `interval` fires at once,
        // which would flush whatever arrived first early).
        let mut period = self.settings().flush_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pause = None;
        while !*shutdown.borrow() {
            match pause.take() {
                // Draining a backlog (e.g. after a store outage): paced.
                Some(pause) => tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => break,
                },
                None => tokio::select! {
                    _ = tick.tick() => {}
                    _ = self.batch_ready.notified() => {}
                    _ = self.retuned.notified() => {
                        // A new interval counts from now.
                        period = self.settings().flush_interval;
                        tick = tokio::time::interval_at(Instant::now() + period, period);
                        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        continue;
                    }
                    _ = shutdown.changed() => break,
                },
            }
            let started = Instant::now();
            let more = self.flush_once().await;
            pause = drain_pause(started.elapsed(), more, period);
        }
        self.drain(drain_timeout).await;
    }

    async fn drain(&self, timeout: Duration) {
        self.lock().closed = true;
        let deadline = Instant::now() + timeout;
        loop {
            self.flush_once().await;
            if self.held() == 0 {
                tracing::info!("{}", tally_runtime::log_events::BUFFER_DRAINED);
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            // More than one flush's worth left: go on at once. A batch left
            // in doubt means the store refused it: retry at the flush cadence.
            if self.lock().in_doubt.is_some() {
                tracing::warn!(counters = self.held(), "{}", tally_runtime::log_events::DRAIN_RETRYING);
                tokio::time::sleep(self.settings().flush_interval.min(Duration::from_millis(200))).await;
            }
        }
        let left: Vec<(CounterKey, i64)> = {
            let mut pending = self.lock();
            let mut left: Vec<_> = std::mem::take(&mut pending.deltas).into_iter().collect();
            left.extend(pending.in_doubt.take().map(|b| b.cmds).unwrap_or_default());
            left
        };
        for (key, delta) in &left {
            tracing::error!(%key, delta, "{}", tally_runtime::log_events::UNCONFIRMED_AT_SHUTDOWN);
        }
        self.metrics.async_lost.get_or_create(&[("reason", "shutdown_timeout")]).inc_by(left.len() as u64);
        self.metrics.buffer_keys.set(0);
    }

    /// Sends one batch to the store: the batch left over from a failed
    /// attempt if there is one (resent unchanged, under the same id, so the
    /// store applies it at most once), otherwise what is buffered, up to
    /// [`MAX_FLUSH_COUNTERS`]. True when more is waiting (a backlog to drain).
    async fn flush_once(&self) -> bool {
        let batch = {
            let mut pending = self.lock();
            match pending.in_doubt.take() {
                Some(batch) if self.resend_expired(&batch) => {
                    // Its marker may be gone: a resend could apply it twice.
                    drop(pending);
                    for (key, delta) in &batch.cmds {
                        self.lost(key, *delta, "unconfirmed", "outcome unknown past the resend window; not resent");
                    }
                    self.metrics.buffer_keys.set(self.held() as i64);
                    return !self.lock().deltas.is_empty();
                }
                Some(batch) => batch,
                None => {
                    let cmds = take_at_most(&mut pending.deltas, MAX_FLUSH_COUNTERS);
                    let oldest = if pending.deltas.is_empty() {
                        pending.ops_since_flush = 0;
                        pending.oldest.take()
                    } else {
                        pending.oldest // more is waiting: see `drain_pause`
                    };
                    let links = std::mem::take(&mut pending.links);
                    if cmds.is_empty() {
                        self.metrics.buffer_oldest_age.set(0.0);
                        return false;
                    }
                    Batch { id: batch::new_batch_id(), cmds, links, oldest, ambiguous_since: None }
                }
            }
        };
        let age = batch.oldest.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.buffer_oldest_age.set(age);
        let refs: Vec<(&CounterKey, i64)> = batch.cmds.iter().map(|(k, d)| (k, *d)).collect();
        let started = std::time::Instant::now();
        let span = spans::buffer_flush(spans::db_system(self.store.kind()), &batch.links, refs.len());
        let outcomes =
            self.store.incr_batch_once(&batch.id, &refs, self.settings().marker_ttl).instrument(span.clone()).await;
        self.metrics.store_flush.observe(started.elapsed().as_secs_f64());
        let mut failure = None;
        for ((key, delta), outcome) in refs.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied(_) | Outcome::Replayed(_) => {}
                Outcome::Overflow => self.lost(key, *delta, "overflow", "the counter would overflow i64"),
                Outcome::Failed(StoreError::Rejected(why)) => self.lost(key, *delta, "rejected", &why),
                Outcome::Failed(err) => failure = Some(err),
            }
        }
        let mut pending = self.lock();
        if let Some(err) = failure {
            let mut batch = batch;
            if !err.is_not_applied() {
                batch.ambiguous_since.get_or_insert_with(Instant::now);
            }
            spans::failed(&span, &err);
            tracing::warn!(%err, batch_id = %batch.id, counters = batch.cmds.len(), "flush failed; the batch will be resent");
            self.metrics.store_errors.get_or_create(&[("kind", err.kind())]).inc();
            pending.in_doubt = Some(batch);
        }
        self.metrics.buffer_keys.set(pending.held() as i64);
        // A failed batch waits for the next tick; a backlog behind a good
        // flush is drained (paced).
        pending.in_doubt.is_none() && !pending.deltas.is_empty()
    }

    /// True when `batch` failed ambiguously longer ago than the resend window.
    fn resend_expired(&self, batch: &Batch) -> bool {
        batch.ambiguous_since.is_some_and(|since| since.elapsed() >= batch::resend_window(self.settings().marker_ttl))
    }

    fn lost(&self, key: &CounterKey, delta: i64, reason: &'static str, why: &str) {
        tracing::error!(%key, delta, reason, why, "acknowledged async increment not applied");
        self.metrics.async_lost.get_or_create(&[("reason", reason)]).inc();
    }
}

/// How long to wait before the next flush when a flush that took `took`
/// left `more` waiting: as long as it took (capped at the flush interval),
/// so draining a backlog — after a store outage, say — uses at most about
/// half of the store's time and live requests interleave with it, instead
/// of back-to-back flushes queueing them behind thousands of increments.
/// `None`: nothing waiting, the usual cadence applies.
fn drain_pause(took: Duration, more: bool, interval: Duration) -> Option<Duration> {
    more.then(|| took.min(interval))
}

/// Counters sent by one flush at most. A full buffer (`capacity`, 100,000 by
/// default) sent at once held every chunk's command in memory together:
/// measured 106 MiB peak RSS under `make bench-counter`'s async run. What is
/// left waits for the next flush, which follows at once.
pub const MAX_FLUSH_COUNTERS: usize = 16 * batch::CHUNK;

/// Removes and returns at most `most` of the buffered sums.
fn take_at_most(deltas: &mut HashMap<CounterKey, i64>, most: usize) -> Vec<(CounterKey, i64)> {
    if deltas.len() <= most {
        return std::mem::take(deltas).into_iter().collect();
    }
    let mut taken = 0;
    deltas
        .extract_if(|_, _| {
            taken += 1;
            taken <= most
        })
        .collect()
}

/// Whether `ops` can join `deltas` without exceeding `capacity` distinct
/// counters or overflowing a buffered sum.
fn fits(deltas: &HashMap<CounterKey, i64>, ops: &[(CounterKey, i64)], capacity: usize) -> bool {
    let mut sums: HashMap<&CounterKey, i64> = HashMap::new();
    for (key, delta) in ops {
        let base = sums.get(key).copied().or_else(|| deltas.get(key).copied()).unwrap_or(0);
        match base.checked_add(*delta) {
            Some(sum) => sums.insert(key, sum),
            None => return false,
        };
    }
    let new_keys = sums.keys().filter(|key| !deltas.contains_key(**key)).count();
    deltas.len() + new_keys <= capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(r: &str, d: i64) -> (CounterKey, i64) {
        (CounterKey::new(r, "views").unwrap(), d)
    }

    #[test]
    fn fits_counts_only_new_counters_against_capacity() {
        let mut deltas = HashMap::new();
        deltas.insert(op("a", 1).0, 1);
        assert!(fits(&deltas, &[op("a", 5), op("b", 1)], 2));
        assert!(!fits(&deltas, &[op("b", 1), op("c", 1)], 2));
        assert!(fits(&deltas, &[op("b", 1), op("b", 1)], 2));
    }

    #[test]
    fn a_flush_takes_at_most_its_share_and_leaves_the_rest() {
        let mut deltas: HashMap<CounterKey, i64> = (0..10).map(|i| op(&format!("r{i}"), i)).collect();
        let taken = take_at_most(&mut deltas, 4);
        assert_eq!((taken.len(), deltas.len()), (4, 6));
        assert!(taken.iter().all(|(key, _)| !deltas.contains_key(key)), "nothing is taken twice");
        let total: i64 = taken.iter().map(|(_, d)| d).sum::<i64>() + deltas.values().sum::<i64>();
        assert_eq!(total, 45, "nothing is lost");
        assert_eq!(take_at_most(&mut deltas, 100).len(), 6);
        assert!(deltas.is_empty());
    }

    #[test]
    fn a_backlog_drains_paced_by_the_time_each_flush_took() {
        let interval = Duration::from_millis(100);
        assert_eq!(drain_pause(Duration::from_millis(7), true, interval), Some(Duration::from_millis(7)));
        assert_eq!(
            drain_pause(Duration::from_secs(2), true, interval),
            Some(interval),
            "never slower than the cadence"
        );
        assert_eq!(drain_pause(Duration::from_millis(7), false, interval), None);
    }

    #[test]
    fn fits_refuses_sums_that_overflow() {
        let mut deltas = HashMap::new();
        deltas.insert(op("a", 1).0, i64::MAX - 1);
        assert!(fits(&deltas, &[op("a", 1)], 10));
        assert!(!fits(&deltas, &[op("a", 1), op("a", 1)], 10));
    }
}
