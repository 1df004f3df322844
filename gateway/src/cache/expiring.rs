//! A bounded concurrent map whose entries expire: quick_cache (S3-FIFO
//! eviction, sharded read-write locks) with each value's expiry kept beside
//! it.
//!
//! Why not moka, which has a TTL of its own: a moka read records the hit for
//! its LRU/TinyLFU policy and, every few dozen reads, drains those records
//! (frequency sketch, deque moves) on the reading thread. On the cached GET
//! of 10k counters that bookkeeping was about 8 % of the gateway's CPU (see
//! docs/bench/performance-log.md). A quick_cache read is a shard read lock,
//! one probe and a reference bit.
//!
//! Why each lifetime is cut by up to an eighth of the TTL, chosen by the
//! key's hash: entries filled together (a cold start, a burst of new keys)
//! would otherwise all expire together and send a burst of misses to the
//! counter service at once, the long tail of the cached GET. No entry lives
//! longer than the TTL, so the staleness bound is unchanged.

use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, OptionsBuilder, Weighter};

/// The most a lifetime is cut, as a fraction (1 / `SPREAD`) of the TTL.
const SPREAD: u32 = 8;

/// quick_cache keeps no entry heavier than this share of its shard's
/// capacity (its default hot allocation).
pub const MAX_ENTRY_SHARE: f64 = 0.97;

#[derive(Clone)]
struct Timed<V> {
    value: V,
    until: Instant,
}

/// What an entry weighs against the capacity (at least 1: quick_cache never
/// evicts weightless entries).
#[derive(Clone, Copy)]
struct Weigh<V>(fn(&V) -> u64);

impl<K, V> Weighter<K, Timed<V>> for Weigh<V> {
    fn weight(&self, _: &K, timed: &Timed<V>) -> u64 {
        (self.0)(&timed.value).max(1)
    }
}

pub struct Expiring<K, V> {
    map: Cache<K, Timed<V>, Weigh<V>, foldhash::fast::RandomState>,
    ttl: Duration,
    /// Picks each key's cut of the TTL: the map's own hasher.
    spread: foldhash::fast::RandomState,
}

impl<K: Eq + Hash, V: Clone> Expiring<K, V> {
    /// Entries live `ttl` at most; their weights (`weigh`, at least 1 each)
    /// add up to `capacity` at most, and an entry heavier than
    /// [`MAX_ENTRY_SHARE`] of `capacity / shards` is not kept. `shards`: a
    /// power of two (quick_cache rounds up to one); `None` for quick_cache's
    /// default (four per core), fewer when single entries are heavy.
    pub fn new(ttl: Duration, capacity: u64, weigh: fn(&V) -> u64, shards: Option<usize>) -> Expiring<K, V> {
        let mut options = OptionsBuilder::new();
        options
            .estimated_items_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
            .weight_capacity(capacity)
            .hot_allocation(MAX_ENTRY_SHARE);
        if let Some(shards) = shards {
            options.shards(shards.max(1));
        }
        // `build` fails only when a capacity is unset; both are set above.
        let options = options.build().expect("both capacities are set");
        let hasher = foldhash::fast::RandomState::default();
        let map = Cache::with_options(options, Weigh(weigh), hasher.clone(), Default::default());
        Expiring { map, ttl, spread: hasher }
    }

    /// The value of `key`, unless absent or expired.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_at(key, Instant::now())
    }

    fn get_at<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let timed = self.map.get(key)?;
        if now < timed.until {
            return Some(timed.value);
        }
        // Expired: give its room back rather than wait for eviction.
        self.map.remove_if(key, |timed| timed.until <= now);
        None
    }

    /// Whether `key` has an entry that has not expired (without touching
    /// its standing in the eviction policy).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.contains_key_at(key, Instant::now())
    }

    fn contains_key_at<Q>(&self, key: &Q, now: Instant) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.peek(key).is_some_and(|timed| now < timed.until)
    }

    /// Stores `value`, for this key's lifetime from now.
    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    fn insert_at(&self, key: K, value: V, now: Instant) {
        let until = now + self.lifetime(&key);
        self.map.insert(key, Timed { value, until });
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.map.remove(key);
    }

    /// The TTL less this key's cut: up to 1/`SPREAD` of it, by its hash.
    fn lifetime(&self, key: &K) -> Duration {
        cut_lifetime(self.ttl, self.spread.hash_one(key))
    }
}

/// `ttl` less a cut of up to 1/`SPREAD` of it, the cut picked by `hash`.
fn cut_lifetime(ttl: Duration, hash: u64) -> Duration {
    let steps = 1024;
    let cut = ttl / SPREAD * (hash % steps) as u32 / steps as u32;
    ttl - cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ttl: Duration, capacity: u64) -> Expiring<String, i64> {
        Expiring::new(ttl, capacity, |_| 1, None)
    }

    #[test]
    fn a_lifetime_is_never_longer_than_the_ttl_nor_shorter_than_seven_eighths() {
        let ttl = Duration::from_secs(8);
        for hash in [0, 1, 511, 1023, 1024, u64::MAX] {
            let lifetime = cut_lifetime(ttl, hash);
            assert!(lifetime <= ttl && lifetime >= ttl * 7 / 8, "{hash}: {lifetime:?}");
        }
        assert_eq!(cut_lifetime(ttl, 0), ttl);
        assert!(cut_lifetime(ttl, 1023) < ttl);
    }

    #[test]
    fn entries_filled_together_expire_at_different_times() {
        let m = map(Duration::from_secs(8), 1000);
        let lifetimes: std::collections::BTreeSet<Duration> =
            (0..100).map(|i| m.lifetime(&format!("key-{i}"))).collect();
        assert!(lifetimes.len() > 50, "only {} distinct lifetimes of 100", lifetimes.len());
    }

    #[test]
    fn an_entry_is_served_until_its_lifetime_ends_and_then_removed() {
        let m = map(Duration::from_secs(8), 1000);
        let now = Instant::now();
        m.insert_at("a".to_string(), 3, now);
        let lifetime = m.lifetime(&"a".to_string());
        assert_eq!(m.get_at("a", now + lifetime - Duration::from_millis(1)), Some(3));
        assert!(m.contains_key_at("a", now + lifetime - Duration::from_millis(1)));
        assert!(!m.contains_key_at("a", now + lifetime), "an expired entry does not count as cached");
        assert_eq!(m.get_at("a", now + lifetime), None);
        assert!(m.map.peek("a").is_none(), "an expired entry found by a read is removed");
    }

    #[test]
    fn the_capacity_bounds_the_weight_held() {
        let m: Expiring<u32, Vec<u8>> = Expiring::new(Duration::from_secs(60), 100, |v| v.len() as u64, Some(1));
        for i in 0..50 {
            m.insert(i, vec![0; 10]);
        }
        let held = (0..50).filter(|i| m.get(i).is_some()).count();
        assert!(held <= 10, "{held} entries of weight 10 held within 100");
        m.insert(99, vec![0; 101]);
        assert_eq!(m.get(&99), None, "heavier than the whole capacity: not kept");
    }
}
