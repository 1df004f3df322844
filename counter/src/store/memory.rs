//! The embedded store: a map behind a mutex. Used when no Redis is configured
//! (`make run` on a bare machine) and as the reference the Redis backends are
//! tested against. Values live only as long as the process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tally_proto::CounterKey;

use tally_proto::validate::limits::MAX_RESOURCE_COUNTERS;

use super::{Change, Cmd, KeyedCmd, Listing, Outcome};

#[derive(Default)]
pub struct MemoryStore {
    values: Mutex<HashMap<CounterKey, i64>>,
    /// (counter, is a reset, idempotency key) → (first result, expiry).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    results: HashMap<(CounterKey, bool, String), (i64, Instant)>,
    /// Size after the last purge of expired keys; purge again at twice that.
    purged_at: usize,
}

impl MemoryStore {
    pub fn apply_ordered(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<Outcome> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if seen.results.len() > 2 * seen.purged_at.max(1024) {
            seen.results.retain(|_, (_, expires)| *expires > now);
            seen.purged_at = seen.results.len();
        }
        cmds.iter()
            .map(|&(key, change, idempotency_key)| {
                let id = idempotency_key.map(|k| (key.clone(), matches!(change, Change::Reset), k.to_string()));
                if let Some(&(first, expires)) = id.as_ref().and_then(|id| seen.results.get(id))
                    && expires > now
                {
                    return Outcome::Replayed(first);
                }
                let outcome = match change {
                    Change::Add(delta) => match self.incr(&[(key, delta)]).pop() {
                        Some(Outcome::Applied(value)) => Outcome::Applied(value),
                        Some(Outcome::Failed(err)) => Outcome::Failed(err),
                        _ => Outcome::Overflow,
                    },
                    Change::Reset => Outcome::Applied(self.reset(key)),
                };
                if let (Some(id), Outcome::Applied(value)) = (id, &outcome) {
                    seen.results.insert(id, (*value, now + retention));
                }
                outcome
            })
            .collect()
    }

    /// Sets `key` to 0 (forgets it); the value it had.
    fn reset(&self, key: &CounterKey) -> i64 {
        let mut values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        values.remove(key).unwrap_or(0)
    }

    /// Every counter of `resource_id`. A scan of every counter held: this
    /// store is for development and tests, not for large key counts.
    pub fn get_resource(&self, resource_id: &str) -> Listing {
        let values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counters: Vec<(String, i64)> = values
            .iter()
            .filter(|(key, _)| key.resource_id() == resource_id)
            .map(|(key, value)| (key.counter_type().to_string(), *value))
            .collect();
        if counters.len() > MAX_RESOURCE_COUNTERS {
            return Listing::TooMany(counters.len());
        }
        counters.sort_unstable();
        Listing::Counters(counters)
    }

    pub fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<Outcome> {
        let mut values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cmds.iter()
            .map(|(key, delta)| {
                let current = values.get(*key).copied().unwrap_or(0);
                match current.checked_add(*delta) {
                    Some(next) => {
                        values.insert((*key).clone(), next);
                        Outcome::Applied(next)
                    }
                    None => Outcome::Overflow,
                }
            })
            .collect()
    }

    pub fn get(&self, keys: &[CounterKey]) -> Vec<i64> {
        let values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.iter().map(|key| values.get(key).copied().unwrap_or(0)).collect()
    }
}
