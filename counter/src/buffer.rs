//! The write-behind buffer for async increments (plan item 5).
//!
//! Async operations are acknowledged once they are in this buffer, where they
//! are summed per counter. The flusher sends the buffer to the store through
//! the group committer every `flush_interval`, or as soon as `batch_size`
//! operations arrived, whichever comes first.
//!
//! Bounded: at most `capacity` distinct counters wait here; an offer that
//! does not fit is refused ([`Offer::Full`]) and the caller applies it
//! synchronously or rejects it, never drops it. On shutdown the flusher
//! drains everything, retrying while the store is unreachable, until the
//! shutdown deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_proto::CounterKey;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::commit::{GroupCommitter, OpResult};
use crate::metrics::Metrics;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    /// Flush as soon as this many operations are buffered.
    pub batch_size: usize,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// Most distinct counters held at once.
    pub capacity: usize,
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
}

pub struct WriteBuffer {
    pending: Mutex<Pending>,
    batch_ready: Notify,
    settings: BufferSettings,
    committer: GroupCommitter,
    metrics: Arc<Metrics>,
}

impl WriteBuffer {
    pub fn new(settings: BufferSettings, committer: GroupCommitter, metrics: Arc<Metrics>) -> WriteBuffer {
        WriteBuffer { pending: Mutex::default(), batch_ready: Notify::new(), settings, committer, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Buffers all of `ops` or none of them.
    pub fn offer(&self, ops: &[(CounterKey, i64)]) -> Offer {
        let mut pending = self.lock();
        if pending.closed || !fits(&pending.deltas, ops, self.settings.capacity) {
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
        self.metrics.buffer_keys.set(pending.deltas.len() as i64);
        if pending.ops_since_flush >= self.settings.batch_size {
            self.batch_ready.notify_one();
        }
        Offer::Accepted
    }

    /// Counters currently buffered.
    pub fn len(&self) -> usize {
        self.lock().deltas.len()
    }

    /// Flushes until `shutdown` fires, then drains everything (see module doc),
    /// giving up on what is left after `drain_timeout`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain_timeout: Duration) {
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.batch_ready.notified() => {}
                _ = shutdown.changed() => break,
            }
            self.flush_once().await;
        }
        self.drain(drain_timeout).await;
    }

    async fn drain(&self, timeout: Duration) {
        self.lock().closed = true;
        let deadline = Instant::now() + timeout;
        loop {
            self.flush_once().await;
            if self.len() == 0 {
                tracing::info!("write-behind buffer drained");
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            // The store refused the flush; retry at the flush cadence.
            tokio::time::sleep(self.settings.flush_interval.min(Duration::from_millis(200))).await;
        }
        let left = std::mem::take(&mut self.lock().deltas);
        for (key, delta) in &left {
            tracing::error!(%key, delta, "shutdown deadline passed: acknowledged async increment NOT applied");
        }
        self.metrics.async_lost.get_or_create(&[("reason", "shutdown_timeout")]).inc_by(left.len() as u64);
        self.metrics.buffer_keys.set(0);
    }

    /// Sends everything buffered to the store once. Operations the store
    /// provably did not apply go back into the buffer for the next flush;
    /// operations whose outcome is unknown are not resent (that could count
    /// them twice) and are logged, with their amounts, as possibly lost.
    async fn flush_once(&self) {
        let batch: Vec<(CounterKey, i64)> = {
            let mut pending = self.lock();
            pending.ops_since_flush = 0;
            std::mem::take(&mut pending.deltas).into_iter().collect()
        };
        if batch.is_empty() {
            return;
        }
        let results = match self.committer.submit(batch.clone()).await {
            Ok(results) => results,
            Err(closed) => vec![OpResult::Failed(StoreError::NotApplied(closed.to_string())); batch.len()],
        };
        let mut retry = Vec::new();
        for ((key, delta), result) in batch.into_iter().zip(results) {
            match result {
                OpResult::Applied(_) => {}
                OpResult::Failed(err) if err.is_not_applied() => retry.push((key, delta)),
                OpResult::Overflow => self.lost(&key, delta, "overflow", "the counter would overflow i64"),
                OpResult::Failed(err) => self.lost(&key, delta, "outcome_unknown", &err.to_string()),
            }
        }
        let mut pending = self.lock();
        for (key, delta) in retry {
            let merged = match pending.deltas.get(&key) {
                Some(newer) => newer.checked_add(delta),
                None => Some(delta),
            };
            match merged {
                Some(sum) => {
                    pending.deltas.insert(key, sum);
                }
                None => self.lost(&key, delta, "overflow", "re-buffered sum would overflow i64"),
            }
        }
        self.metrics.buffer_keys.set(pending.deltas.len() as i64);
    }

    fn lost(&self, key: &CounterKey, delta: i64, reason: &'static str, why: &str) {
        tracing::error!(%key, delta, reason, why, "acknowledged async increment not applied");
        self.metrics.async_lost.get_or_create(&[("reason", reason)]).inc();
    }
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
    fn fits_refuses_sums_that_overflow() {
        let mut deltas = HashMap::new();
        deltas.insert(op("a", 1).0, i64::MAX - 1);
        assert!(fits(&deltas, &[op("a", 1)], 10));
        assert!(!fits(&deltas, &[op("a", 1), op("a", 1)], 10));
    }
}
