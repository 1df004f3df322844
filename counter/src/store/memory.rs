//! The embedded store: a map behind a mutex. Used when no Redis is configured
//! (`make run` on a bare machine) and as the reference the Redis backends are
//! tested against. Values live only as long as the process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tally_proto::CounterKey;

use super::{Cmd, IdempotentOutcome, IncrOutcome, KeyedCmd};

#[derive(Default)]
pub struct MemoryStore {
    values: Mutex<HashMap<CounterKey, i64>>,
    /// (counter, idempotency key) → (first result, expiry).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    results: HashMap<(CounterKey, String), (i64, Instant)>,
    /// Size after the last purge of expired keys; purge again at twice that.
    purged_at: usize,
}

impl MemoryStore {
    pub fn incr_each(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<IdempotentOutcome> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if seen.results.len() > 2 * seen.purged_at.max(1024) {
            seen.results.retain(|_, (_, expires)| *expires > now);
            seen.purged_at = seen.results.len();
        }
        cmds.iter()
            .map(|&(key, delta, idempotency_key)| {
                let Some(idempotency_key) = idempotency_key else {
                    return match self.incr(&[(key, delta)]).pop() {
                        Some(IncrOutcome::Applied(value)) => IdempotentOutcome::Applied(value),
                        Some(IncrOutcome::Failed(err)) => IdempotentOutcome::Failed(err),
                        _ => IdempotentOutcome::Overflow,
                    };
                };
                let id = (key.clone(), idempotency_key.to_string());
                if let Some(&(first, expires)) = seen.results.get(&id)
                    && expires > now
                {
                    return IdempotentOutcome::Replayed(first);
                }
                match self.incr(&[(key, delta)]).pop() {
                    Some(IncrOutcome::Applied(value)) => {
                        seen.results.insert(id, (value, now + retention));
                        IdempotentOutcome::Applied(value)
                    }
                    Some(IncrOutcome::Failed(err)) => IdempotentOutcome::Failed(err),
                    _ => IdempotentOutcome::Overflow,
                }
            })
            .collect()
    }

    pub fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<IncrOutcome> {
        let mut values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cmds.iter()
            .map(|(key, delta)| {
                let current = values.get(*key).copied().unwrap_or(0);
                match current.checked_add(*delta) {
                    Some(next) => {
                        values.insert((*key).clone(), next);
                        IncrOutcome::Applied(next)
                    }
                    None => IncrOutcome::Overflow,
                }
            })
            .collect()
    }

    pub fn get(&self, keys: &[CounterKey]) -> Vec<i64> {
        let values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.iter().map(|key| values.get(key).copied().unwrap_or(0)).collect()
    }
}
