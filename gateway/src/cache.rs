//! The gateway's read cache (plan item 4): counter values for `GET` and
//! batch get, with a TTL and a size bound (moka), kept consistent with the
//! gateway's own writes so a client always reads its own increment.
//!
//! The hazard is ordering: a read that started before a write may finish
//! after it and cache the older value, and two concurrent writes to one
//! counter may finish in the opposite order of how the store applied them.
//! So every cache update carries a stamp from one gateway-wide clock:
//! - a finished write stores its value, unless another write to the same
//!   counter overlapped it, in which case it stores "unknown, fetch" (the
//!   order of the two values is not known here);
//! - a read stores what it fetched only if no write to that counter is in
//!   flight and no newer update (a write finished after the read started)
//!   is there.
//!
//! Values written by *other* gateways become visible when the entry expires
//! (TTL, 5 s by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use tally_proto::CounterKey;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `None`: the latest value is not known here; fetch it.
    value: Option<i64>,
    stamp: u64,
}

#[derive(Default)]
struct WritesInFlight {
    count: u32,
    overlapped: bool,
}

pub struct ReadCache {
    entries: Option<Cache<CounterKey, Entry>>,
    writes: Mutex<HashMap<CounterKey, WritesInFlight>>,
    clock: AtomicU64,
}

/// Taken when a read misses; hand it back with the fetched value.
pub struct ReadStamp(u64);

impl ReadCache {
    /// A cache of at most `max_entries` counters for `ttl`; a zero TTL or
    /// size turns caching off (every read goes to the counter service).
    pub fn new(ttl: Duration, max_entries: u64) -> ReadCache {
        let entries = (!ttl.is_zero() && max_entries > 0)
            .then(|| Cache::builder().max_capacity(max_entries).time_to_live(ttl).build());
        ReadCache { entries, writes: Mutex::default(), clock: AtomicU64::new(0) }
    }

    fn writes(&self) -> std::sync::MutexGuard<'_, HashMap<CounterKey, WritesInFlight>> {
        self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached value, if known.
    pub fn get(&self, key: &CounterKey) -> Option<i64> {
        self.entries.as_ref()?.get(key)?.value
    }

    /// Call before fetching a value that missed.
    pub fn read_stamp(&self) -> ReadStamp {
        ReadStamp(self.clock.load(Ordering::SeqCst))
    }

    /// Stores a fetched value unless a write to the counter is in flight or
    /// finished since the read started.
    pub fn fill(&self, key: &CounterKey, value: i64, stamp: &ReadStamp) {
        let Some(entries) = &self.entries else { return };
        let writes = self.writes();
        if writes.contains_key(key) {
            return;
        }
        // Holding the writes lock: no write can finish (and stamp) meanwhile.
        entries.entry(key.clone()).and_compute_with(|existing| match existing {
            Some(e) if e.value().stamp > stamp.0 => Op::Nop,
            _ => Op::Put(Entry { value: Some(value), stamp: stamp.0 }),
        });
    }

    /// Call before sending writes; pair with [`ReadCache::write_finished`].
    pub fn write_started<'a>(&self, keys: impl IntoIterator<Item = &'a CounterKey>) {
        let mut writes = self.writes();
        for key in keys {
            let w = writes.entry(key.clone()).or_default();
            w.overlapped |= w.count > 0;
            w.count += 1;
        }
    }

    /// Records the outcome of writes started with [`ReadCache::write_started`]:
    /// `Some(value)` the value right after the write, `None` unknown (failed
    /// or not reported, e.g. async).
    pub fn write_finished<'a>(&self, outcomes: impl IntoIterator<Item = (&'a CounterKey, Option<i64>)>) {
        let mut writes = self.writes();
        for (key, value) in outcomes {
            let overlapped = match writes.get_mut(key) {
                Some(w) => {
                    w.count = w.count.saturating_sub(1);
                    let overlapped = w.overlapped;
                    if w.count == 0 {
                        writes.remove(key);
                    }
                    overlapped
                }
                None => true,
            };
            if let Some(entries) = &self.entries {
                let stamp = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
                let value = if overlapped { None } else { value };
                entries.insert(key.clone(), Entry { value, stamp });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> CounterKey {
        CounterKey::new(r, "likes").unwrap()
    }

    fn cache() -> ReadCache {
        ReadCache::new(Duration::from_secs(60), 100)
    }

    #[test]
    fn a_write_is_read_back() {
        let c = cache();
        let k = key("a");
        c.write_started([&k]);
        c.write_finished([(&k, Some(7))]);
        assert_eq!(c.get(&k), Some(7));
    }

    #[test]
    fn a_read_that_started_before_a_write_does_not_overwrite_it() {
        let c = cache();
        let k = key("a");
        let stamp = c.read_stamp(); // read starts, fetches 5 …
        c.write_started([&k]);
        c.write_finished([(&k, Some(6))]); // … a write finishes with 6 …
        c.fill(&k, 5, &stamp); // … and the read's 5 arrives late.
        assert_eq!(c.get(&k), Some(6));
    }

    #[test]
    fn a_read_does_not_fill_while_a_write_is_in_flight() {
        let c = cache();
        let k = key("a");
        c.write_started([&k]);
        let stamp = c.read_stamp();
        c.fill(&k, 5, &stamp);
        assert_eq!(c.get(&k), None);
        c.write_finished([(&k, Some(6))]);
        assert_eq!(c.get(&k), Some(6));
    }

    #[test]
    fn overlapping_writes_leave_the_value_unknown() {
        let c = cache();
        let k = key("a");
        c.write_started([&k]);
        c.write_started([&k]);
        c.write_finished([(&k, Some(2))]); // the store may have applied this one last …
        c.write_finished([(&k, Some(1))]);
        assert_eq!(c.get(&k), None, "… so neither value may be served");
        let stamp = c.read_stamp();
        c.fill(&k, 2, &stamp);
        assert_eq!(c.get(&k), Some(2));
    }

    #[test]
    fn a_failed_write_invalidates() {
        let c = cache();
        let k = key("a");
        c.fill(&k, 3, &c.read_stamp());
        c.write_started([&k]);
        c.write_finished([(&k, None)]);
        assert_eq!(c.get(&k), None);
    }

    #[test]
    fn zero_ttl_disables_caching() {
        let c = ReadCache::new(Duration::ZERO, 100);
        let k = key("a");
        c.fill(&k, 3, &c.read_stamp());
        assert_eq!(c.get(&k), None);
    }
}
