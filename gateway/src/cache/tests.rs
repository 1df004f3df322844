//! The read cache's ordering rules, one scenario each.

use super::*;

fn key(r: &str) -> CounterKey {
    CounterKey::new(r, "likes").unwrap()
}

fn cache() -> ReadCache {
    ReadCache::new(Duration::from_secs(60), 100)
}

#[test]
fn a_write_updates_a_cached_value() {
    let c = cache();
    let k = key("a");
    c.fill(&k, 3, &c.read_stamp());
    c.write_started([&k]).finish([Some(7)]);
    assert_eq!(c.get(&k), Some(7));
}

#[test]
fn a_write_to_an_uncached_counter_leaves_it_uncached() {
    let c = cache();
    let k = key("a");
    c.write_started([&k]).finish([Some(7)]);
    assert_eq!(c.get(&k), None, "the next read fetches it");
}

#[test]
fn a_read_that_started_before_a_write_does_not_overwrite_it() {
    let c = cache();
    let k = key("a");
    c.fill(&k, 4, &c.read_stamp());
    let stamp = c.read_stamp(); // a read starts, fetches 5 …
    c.write_started([&k]).finish([Some(6)]); // … a write finishes with 6 …
    c.fill(&k, 5, &stamp); // … and the read's 5 arrives late.
    assert_eq!(c.get(&k), Some(6));

    let fresh = key("b"); // the same when the counter was not cached
    let stamp = c.read_stamp();
    c.write_started([&fresh]).finish([Some(1)]);
    c.fill(&fresh, 0, &stamp);
    assert_eq!(c.get(&fresh), None);
}

#[test]
fn a_read_does_not_fill_while_a_write_is_in_flight() {
    let c = cache();
    let k = key("a");
    let write = c.write_started([&k]);
    let stamp = c.read_stamp();
    c.fill(&k, 5, &stamp);
    assert_eq!(c.get(&k), None);
    write.finish([Some(6)]);
    c.fill(&k, 6, &c.read_stamp());
    assert_eq!(c.get(&k), Some(6));
}

#[test]
fn overlapping_writes_leave_the_value_unknown() {
    let c = cache();
    let k = key("a");
    c.fill(&k, 0, &c.read_stamp());
    let first = c.write_started([&k]);
    let second = c.write_started([&k]);
    first.finish([Some(2)]); // the store may have applied this one last …
    second.finish([Some(1)]);
    assert_eq!(c.get(&k), None, "… so neither value may be served");
    let stamp = c.read_stamp();
    c.fill(&k, 2, &stamp);
    assert_eq!(c.get(&k), Some(2));
}

#[test]
fn writes_to_two_counters_of_one_resource_count_as_overlapping() {
    let c = cache();
    let (likes, views) = (key("a"), CounterKey::new("a", "views").unwrap());
    c.fill(&likes, 1, &c.read_stamp());
    let other = c.write_started([&views]);
    c.write_started([&likes]).finish([Some(2)]);
    assert_eq!(c.get(&likes), None, "one stripe per resource: dropped rather than updated");
    other.finish([Some(1)]);
    c.fill(&likes, 2, &c.read_stamp());
    assert_eq!(c.get(&likes), Some(2), "cached again once the resource has no write in flight");
}

#[test]
fn a_failed_write_invalidates() {
    let c = cache();
    let k = key("a");
    c.fill(&k, 3, &c.read_stamp());
    c.write_started([&k]).finish([None]);
    assert_eq!(c.get(&k), None);
}

#[test]
fn a_cancelled_write_does_not_stop_caching() {
    let c = cache();
    let k = key("a");
    c.fill(&k, 3, &c.read_stamp());
    drop(c.write_started([&k])); // the request was cancelled mid-write
    assert_eq!(c.get(&k), None, "its outcome is unknown: the cached value may be stale");
    c.fill(&k, 4, &c.read_stamp());
    assert_eq!(c.get(&k), Some(4), "the stripe is no longer marked in flight");
}

#[test]
fn a_write_to_any_counter_of_a_resource_drops_its_listing() {
    let c = cache();
    let listing: Listing = vec![("likes".to_string(), 3)].into();
    c.fill_listing("a", listing.clone(), &c.read_stamp());
    assert_eq!(c.get_listing("a"), Some(listing.clone()));
    c.write_started([&CounterKey::new("b", "likes").unwrap()]).finish([Some(1)]);
    assert_eq!(c.get_listing("a"), Some(listing.clone()), "another resource's write");
    c.write_started([&CounterKey::new("a", "views").unwrap()]).finish([Some(1)]);
    assert_eq!(c.get_listing("a"), None, "a new counter type of the resource");
}

#[test]
fn a_listing_read_across_a_write_is_not_cached() {
    let c = cache();
    let listing: Listing = vec![("likes".to_string(), 3)].into();
    let (k, stamp) = (key("a"), c.read_stamp());
    let write = c.write_started([&k]);
    c.fill_listing("a", listing.clone(), &stamp);
    assert_eq!(c.get_listing("a"), None, "a write is in flight");
    write.finish([Some(4)]);
    c.fill_listing("a", listing.clone(), &stamp);
    assert_eq!(c.get_listing("a"), None, "the read started before the write finished");
    c.fill_listing("a", listing.clone(), &c.read_stamp());
    assert_eq!(c.get_listing("a"), Some(listing));
}

#[test]
fn zero_ttl_disables_caching() {
    let c = ReadCache::new(Duration::ZERO, 100);
    let k = key("a");
    c.fill(&k, 3, &c.read_stamp());
    assert_eq!(c.get(&k), None);
}

#[test]
fn new_bounds_start_the_cache_over_and_a_write_across_the_change_still_counts() {
    let c = ReadCache::new(Duration::ZERO, 100);
    let (k, stamp) = (key("a"), c.read_stamp());
    let write = c.write_started([&k]);
    c.retune(Duration::from_secs(60), 100);
    assert!(c.is_on());
    c.fill(&k, 3, &stamp);
    assert_eq!(c.get(&k), None, "a write that started while caching was off is still in flight");
    write.finish([Some(4)]);
    c.fill(&k, 4, &c.read_stamp());
    assert_eq!(c.get(&k), Some(4));
    c.retune(Duration::from_secs(60), 100);
    assert_eq!(c.get(&k), Some(4), "unchanged bounds keep the entries");
    c.retune(Duration::from_secs(30), 100);
    assert_eq!(c.get(&k), None, "new bounds start over empty");
    c.retune(Duration::from_secs(30), 0);
    assert!(!c.is_on(), "size 0 turns caching off");
}

#[test]
fn the_largest_listing_is_cached_at_the_default_size() {
    let c = ReadCache::new(Duration::from_secs(60), 10_000);
    let listing: Listing = (0..MAX_RESOURCE_COUNTERS).map(|i| (format!("type{i}"), 1)).collect();
    c.fill_listing("a", listing.clone(), &c.read_stamp());
    assert_eq!(c.get_listing("a"), Some(listing));
}

#[test]
fn listing_shards_leave_room_for_the_largest_listing() {
    for max_entries in [1, 1_000, 1_031, 2_062, 10_000, 100_000, 100_000_000] {
        let shards = listing_shards(max_entries);
        assert!(shards.is_power_of_two() && (1..=64).contains(&shards), "{max_entries}: {shards}");
        let room = (max_entries / shards as u64) as f64 * expiring::MAX_ENTRY_SHARE;
        assert!(shards == 1 || room >= MAX_RESOURCE_COUNTERS as f64, "{max_entries}: {shards} shards");
    }
    assert_eq!(listing_shards(10_000), 8);
}
