//! The gateway's read cache: counter values for `GET` and
//! batch get, with a TTL and a size bound, kept consistent with the
//! gateway's own writes so a client always reads its own increment.
//! The entries themselves live in `expiring::Expiring` maps (quick_cache,
//! with an expiry per entry).
//!
//! The hazard is ordering: a read that started before a write may finish
//! after it and cache the older value, and two concurrent writes to one
//! counter may finish in the opposite order of how the store applied them.
//! So writes are tracked (per stripe of resources) with a gateway-wide clock:
//! - a finished write updates a cached counter with its value, unless
//!   another write overlapped it (the order of the two values is not known
//!   here), in which case the entry is dropped and the next read fetches;
//! - a read stores what it fetched only if no write on that stripe is in
//!   flight and none finished since the read started.
//!
//! Values written by *other* gateways become visible when the entry expires
//! (TTL, 5 s by default; each entry's lifetime is cut by up to an eighth of
//! it, so entries filled together do not all expire together).
//!
//! The TTL and size change live ([`ReadCache::retune`]): the cache starts
//! over empty with the new bounds, while the write bookkeeping (kept
//! whether caching is on or not) carries on, so no change can let a stale
//! value in.
//!
//! Listings of whole resources (`GET /api/v1/counter/{resource_id}`) are
//! cached the same way: any write through this gateway to a counter of the
//! resource drops its listing.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tally_proto::CounterKey;
use tally_proto::limits::MAX_RESOURCE_COUNTERS;

mod expiring;
use expiring::Expiring;

/// Write bookkeeping is kept per stripe of resources (hash of the
/// resource id), not per counter: no allocation or map update per write,
/// and one stripe serves a resource's counters and its listing alike (one
/// lock per write, not two), at the price of treating two writes to
/// different counters of one stripe as related (which only ever means "do
/// not cache", never a stale value).
const STRIPES: usize = 4096;

#[derive(Default)]
struct Stripe {
    /// Writes in flight on this stripe.
    in_flight: u32,
    /// A write started while another was in flight on this stripe.
    overlapped: bool,
    /// Clock value of the last write that finished on this stripe.
    last_write: u64,
}

/// Every counter of one resource: `(counter type, value)`, sorted.
pub type Listing = Arc<[(String, i64)]>;

/// The cached values, and listings by resource id.
struct Caches {
    entries: Expiring<CounterKey, i64>,
    listings: Expiring<String, Listing>,
    /// Whether a listing was ever stored here: until then a write has no
    /// listing to drop (most gateways serve no listings at all).
    has_listings: AtomicBool,
}

impl Caches {
    /// `None`: a zero TTL or size turns caching off.
    fn new(ttl: Duration, max_entries: u64) -> Option<Caches> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        // A listing holds up to 1,000 counters: weighed by its counters, so
        // the bound stays one of values held, as for single counters.
        let listings = Expiring::new(
            ttl,
            max_entries,
            |listing: &Listing| listing.len() as u64,
            Some(listing_shards(max_entries)),
        );
        let entries = Expiring::new(ttl, max_entries, |_| 1, None);
        Some(Caches { entries, listings, has_listings: AtomicBool::new(false) })
    }
}

/// Shards of the listings map: as many as leave each shard room for the
/// largest listing (an entry heavier than [`expiring::MAX_ENTRY_SHARE`] of
/// its shard is not kept), up to 64; one when even the whole size has no
/// such room (the largest listings are then not cached).
fn listing_shards(max_entries: u64) -> usize {
    let room = (MAX_RESOURCE_COUNTERS as f64 / expiring::MAX_ENTRY_SHARE).ceil() as u64;
    let fitting = usize::try_from(max_entries / room).unwrap_or(usize::MAX).clamp(1, 64);
    // quick_cache rounds a shard count up to a power of two: round down here.
    1 << fitting.ilog2()
}

pub struct ReadCache {
    caches: ArcSwapOption<Caches>,
    /// The TTL and size `caches` was made with.
    bounds: Mutex<(Duration, u64)>,
    stripes: Vec<Mutex<Stripe>>,
    /// Picks a resource's stripe. foldhash rather than SipHash: a stripe
    /// shared by chosen resource ids only ever means "do not cache" for
    /// them, and hashing was a measurable part of every write.
    hasher: foldhash::fast::RandomState,
    clock: AtomicU64,
}

/// Taken when a read misses; hand it back with the fetched value.
pub struct ReadStamp(u64);

impl ReadCache {
    /// A cache of at most `max_entries` counters for `ttl`; a zero TTL or
    /// size turns caching off (every read goes to the counter service).
    pub fn new(ttl: Duration, max_entries: u64) -> ReadCache {
        ReadCache {
            caches: ArcSwapOption::new(Caches::new(ttl, max_entries).map(Arc::new)),
            bounds: Mutex::new((ttl, max_entries)),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            clock: AtomicU64::new(0),
        }
    }

    /// New bounds: when they differ from those in force, the cache starts
    /// over empty with them (no entry keeps a lifetime of the old TTL).
    pub fn retune(&self, ttl: Duration, max_entries: u64) {
        let mut bounds = self.bounds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *bounds != (ttl, max_entries) {
            self.caches.store(Caches::new(ttl, max_entries).map(Arc::new));
            *bounds = (ttl, max_entries);
        }
    }

    /// Whether reads are cached now.
    pub fn is_on(&self) -> bool {
        self.caches.load().is_some()
    }

    /// The stripe of a resource: of its counters and of its listing.
    fn stripe(&self, resource_id: &str) -> std::sync::MutexGuard<'_, Stripe> {
        let index = (self.hasher.hash_one(resource_id) as usize) % STRIPES;
        self.stripes[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached listing of `resource_id`, if known.
    pub fn get_listing(&self, resource_id: &str) -> Option<Listing> {
        self.caches.load().as_ref()?.listings.get(resource_id)
    }

    /// Stores a fetched listing unless a write to a counter of the resource
    /// is in flight or finished since the read started.
    pub fn fill_listing(&self, resource_id: &str, listing: Listing, stamp: &ReadStamp) {
        let caches = self.caches.load();
        let Some(caches) = caches.as_ref() else { return };
        let stripe = self.stripe(resource_id);
        if stripe.in_flight == 0 && stripe.last_write <= stamp.0 {
            // Set before the insert, both under the stripe: a write that
            // sees it unset has no listing of this resource to drop.
            caches.has_listings.store(true, Ordering::Release);
            caches.listings.insert(resource_id.to_string(), listing);
        }
    }

    /// The cached value, if known.
    pub fn get(&self, key: &CounterKey) -> Option<i64> {
        self.caches.load().as_ref()?.entries.get(key)
    }

    /// Call before fetching a value that missed.
    pub fn read_stamp(&self) -> ReadStamp {
        ReadStamp(self.clock.load(Ordering::SeqCst))
    }

    /// Stores a fetched value unless a write on its resource's stripe is
    /// in flight or finished since the read started (the value may be older).
    pub fn fill(&self, key: &CounterKey, value: i64, stamp: &ReadStamp) {
        let caches = self.caches.load();
        let Some(caches) = caches.as_ref() else { return };
        let stripe = self.stripe(key.resource_id());
        if stripe.in_flight == 0 && stripe.last_write <= stamp.0 {
            caches.entries.insert(key.clone(), value);
        }
    }

    /// Call before sending writes to `keys`; report their outcome with
    /// [`WriteGuard::finish`]. A guard dropped unfinished (the request was
    /// cancelled, e.g. the client disconnected) counts as writes of unknown
    /// outcome, so a cancelled write can neither leave its stripe marked in
    /// flight forever (which would stop caching it) nor leave a stale value.
    pub fn write_started<'c, I>(&'c self, keys: I) -> WriteGuard<'c, I::IntoIter>
    where
        I: IntoIterator<Item = &'c CounterKey>,
        I::IntoIter: Clone,
    {
        let keys = keys.into_iter();
        // Kept with caching off too: it may be turned on while these run.
        for key in keys.clone() {
            let mut stripe = self.stripe(key.resource_id());
            stripe.overlapped |= stripe.in_flight > 0;
            stripe.in_flight += 1;
        }
        WriteGuard { cache: self, keys: Some(keys) }
    }

    /// Records the outcome of one write: `Some(value)` the value right after
    /// it, `None` unknown (failed, cancelled or not reported, e.g. async). A
    /// cached counter takes the new value, or is dropped when the value is
    /// unknown or another write overlapped (the store's order of the two is
    /// not known here). An uncached counter stays uncached: its next read
    /// fetches the current value anyway.
    fn write_finished(&self, key: &CounterKey, value: Option<i64>) {
        let caches = self.caches.load();
        let mut stripe = self.stripe(key.resource_id());
        stripe.in_flight = stripe.in_flight.saturating_sub(1);
        let overlapped = stripe.overlapped;
        if stripe.in_flight == 0 {
            stripe.overlapped = false;
        }
        stripe.last_write = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        // Still holding the stripe: no fill or other write can interleave.
        let Some(caches) = caches.as_ref() else { return };
        if caches.entries.contains_key(key) {
            match value.filter(|_| !overlapped) {
                Some(value) => caches.entries.insert(key.clone(), value),
                None => caches.entries.remove(key),
            }
        }
        // The resource's listing is dropped, not patched: the write may have
        // added a counter type, and the order of overlapping writes is unknown.
        if caches.has_listings.load(Ordering::Acquire) {
            caches.listings.remove(key.resource_id());
        }
    }
}

/// Writes in flight, from [`ReadCache::write_started`] until
/// [`WriteGuard::finish`] or drop.
#[must_use = "finish the guard with the writes' outcomes"]
pub struct WriteGuard<'c, I: Iterator<Item = &'c CounterKey> + Clone> {
    cache: &'c ReadCache,
    keys: Option<I>,
}

impl<'c, I: Iterator<Item = &'c CounterKey> + Clone> WriteGuard<'c, I> {
    /// The value right after each write, in the order of the keys (`None`:
    /// unknown); missing values count as unknown.
    pub fn finish(mut self, values: impl IntoIterator<Item = Option<i64>>) {
        let Some(keys) = self.keys.take() else { return };
        let mut values = values.into_iter();
        for key in keys {
            self.cache.write_finished(key, values.next().flatten());
        }
    }
}

impl<'c, I: Iterator<Item = &'c CounterKey> + Clone> Drop for WriteGuard<'c, I> {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            for key in keys {
                self.cache.write_finished(key, None);
            }
        }
    }
}

#[cfg(test)]
mod tests;
