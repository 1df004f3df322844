//! The store layer on its own, against every backend: idempotent batches
//! (what makes the write-behind buffer's resends safe) and slot-aware
//! pipelines in the cluster.

mod common;

use std::time::Duration;

use common::{Backend, RedisCluster, store_url, unique};
use tally_counter::store::batch::{DEFAULT_MARKER_TTL, new_batch_id};
use tally_counter::store::{Change, Outcome, Store, StoreError, StoreOptions, StoreTimeouts, slot_of_resource};
use tally_proto::CounterKey;

const TIMEOUTS: StoreTimeouts = StoreTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(2) };

fn options() -> StoreOptions {
    StoreOptions { timeouts: TIMEOUTS, tls: Default::default(), wait: None }
}

fn key(resource: &str, counter_type: &str) -> CounterKey {
    CounterKey::new(resource, counter_type).expect("valid key")
}

on_every_store!(a_batch_resent_under_its_id_applies_once, many_resources_in_one_call);

async fn a_batch_resent_under_its_id_applies_once(backend: Backend) {
    let (redis, url) = store_url(backend);
    let store = Store::from_url(&url, &options()).expect("store");
    let prefix = unique("once");
    // 1200 commands over many resources: several chunks and, in a cluster, many slots.
    let keys: Vec<CounterKey> =
        (0..1200).map(|i| key(&format!("{prefix}-{}", i % 400), &format!("c{}", i / 400))).collect();
    let big = key(&prefix, "big");
    let mut cmds: Vec<(&CounterKey, i64)> = keys.iter().map(|k| (k, 2)).collect();
    assert_eq!(store.incr(&[(&big, i64::MAX)]).await, vec![Outcome::Applied(i64::MAX)]);
    cmds.push((&big, 1)); // overflows: refused alone

    let id = new_batch_id();
    let first = store.incr_batch_once(&id, &cmds, DEFAULT_MARKER_TTL).await;
    let resent = store.incr_batch_once(&id, &cmds, DEFAULT_MARKER_TTL).await;
    let mut want = vec![Outcome::Applied(0); 1200];
    want.push(Outcome::Overflow);
    if !matches!(backend, Backend::Memory) {
        // The in-memory store cannot fail ambiguously and keeps no markers;
        // for Redis the resend must report exactly what the first attempt did.
        assert_eq!(resent, want, "resend");
    }
    assert_eq!(first, want, "first attempt");

    // The markers live as long as configured, not a day (issue: 156 MB of
    // Redis per pod and day at 24 h).
    if let Some(redis) = &redis {
        let markers = redis.cli(&["--scan", "--pattern", &format!("tally:batch:*:{id}:*")]);
        let markers: Vec<&str> = markers.lines().collect();
        assert_eq!(markers.len(), 3, "one marker per chunk: {markers:?}");
        for marker in markers {
            let ttl: u64 = redis.cli(&["ttl", marker]).parse().expect("ttl");
            assert!(ttl > 0 && ttl <= DEFAULT_MARKER_TTL.as_secs(), "{marker} ttl {ttl}");
        }
    }

    let values = store.get(&keys).await.expect("get");
    let expected = if matches!(backend, Backend::Memory) { 4 } else { 2 };
    assert!(values.iter().all(|&v| v == expected), "values {:?}", &values[..5]);

    // A new id is a new batch.
    store.incr_batch_once(&new_batch_id(), &cmds[..1], DEFAULT_MARKER_TTL).await;
    assert_eq!(store.get(&keys[..1]).await.expect("get"), vec![expected + 2]);
}

async fn many_resources_in_one_call(backend: Backend) {
    let (_redis, url) = store_url(backend);
    let store = Store::from_url(&url, &options()).expect("store");
    let prefix = unique("many");
    let keys: Vec<CounterKey> = (0..500).map(|i| key(&format!("{prefix}-{i}"), "views")).collect();
    // Each key twice: commands on one key apply in order.
    let cmds: Vec<(&CounterKey, i64)> = keys.iter().map(|k| (k, 1)).chain(keys.iter().map(|k| (k, 10))).collect();
    let outcomes = store.incr(&cmds).await;
    assert!(outcomes[..500].iter().all(|o| *o == Outcome::Applied(1)));
    assert!(outcomes[500..].iter().all(|o| *o == Outcome::Applied(11)));
    assert!(store.get(&keys).await.expect("get").iter().all(|&v| v == 11));
    store.ping().await.expect("ping");
}

/// A slot half-way through a resharding, then moved: plain increments of
/// two resources of that slot, one still on the slot's master and one
/// already moved, both apply — the redirected one (`ASK`, then `MOVED`)
/// followed once to the node that holds it — and each report agrees with
/// what the nodes hold (never "not applied" for an increment that was: a
/// resend would count it twice); so does a reset without a key of the
/// moved resource. Once the slot has moved, write-behind
/// batches, reads and keyed increments on a stale map follow the `MOVED`
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_during_a_slot_migration_report_what_each_did() {
    let cluster = RedisCluster::start();
    let store = Store::from_url(&cluster.url(), &options()).expect("store");
    let stays = unique("stays");
    let slot = slot_of_resource(&stays);
    let moves = (0..)
        .map(|i| format!("{stays}-{i}"))
        .find(|r| slot_of_resource(r) == slot)
        .expect("another resource in the slot");
    let (stays_key, moves_key) = (key(&stays, "views"), key(&moves, "views"));
    let both = [(&stays_key, 1), (&moves_key, 1)];
    assert_eq!(store.incr(&both).await, vec![Outcome::Applied(1), Outcome::Applied(1)]);

    let moved_hash = format!("tally:{{{moves}}}");
    let (source, importing) = cluster.migrate_keys(slot, &[&moved_hash]);
    // The moved resource's increment is refused (ASK) by the slot's master
    // and followed, after ASKING, to the node importing it.
    assert_eq!(store.incr(&both).await, vec![Outcome::Applied(2), Outcome::Applied(2)]);
    // What the store holds agrees with each report.
    let stays_hash = format!("tally:{{{stays}}}");
    assert_eq!(source.cli(&["hget", &stays_hash, "views"]), "2");
    assert_eq!(RedisCluster::hget_importing(importing, &moved_hash, "views"), "2", "applied once, where it moved");
    // A read of both: the moved one is refused (ASK) and read, after
    // ASKING, where it moved.
    let read = store.get(&[stays_key.clone(), moves_key.clone()]).await.expect("a read of a half-moved slot");
    assert_eq!(read, vec![2, 2]);
    // A reset without a key of the moved resource, on the ordered path: one
    // command, refused (ASK) and followed, after ASKING, to where it moved.
    let reset = [(&moves_key, Change::Reset, None)];
    assert_eq!(store.apply_ordered(&reset, Duration::from_secs(60)).await, vec![Outcome::Applied(2)]);
    assert_eq!(RedisCluster::hget_importing(importing, &moved_hash, "views"), "", "reset where it moved");

    // The ordered path: an increment without a key next to one with a key,
    // whose marker (a second key) is not on the node yet, so its script is
    // refused (TRYAGAIN). The two go as one transaction, which is aborted
    // whole: neither ran, both are reported not applied (safe to resend),
    // and the hash is as before.
    let ordered = [(&stays_key, Change::Add(1), None), (&stays_key, Change::Add(1), Some("k1"))];
    let outcomes = store.apply_ordered(&ordered, Duration::from_secs(60)).await;
    assert_eq!(source.cli(&["hget", &stays_hash, "views"]), "2", "the unkeyed increment did not run either");
    for outcome in &outcomes {
        match outcome {
            Outcome::Failed(StoreError::NotApplied(_)) => {}
            other => panic!("the transaction was aborted whole, a redirect: {outcomes:?} ({other:?})"),
        }
    }

    // The migration completes: every node hands the slot to the importing
    // one. The counter's map still names the old master, which refuses both
    // increments (MOVED); each is followed once to the new master and
    // applied there, and the map is fetched again.
    let stays_moved = cluster.migrate_keys(slot, &[&stays_hash]);
    assert_eq!(stays_moved.1.port, importing.port, "the same migration");
    cluster.finish_migration(slot, importing);
    // A write-behind batch (one script for the slot), reads and keyed
    // increments go to the slot's master as the stale map names it too:
    // refused there (MOVED, so not run), sent once more to the new master,
    // answered there.
    let batch = store.incr_batch_once(&new_batch_id(), &both, DEFAULT_MARKER_TTL).await;
    assert_eq!(batch, vec![Outcome::Applied(0), Outcome::Applied(0)], "the batch followed the slot");
    let read = store.get(&[stays_key.clone(), moves_key.clone()]).await.expect("read on the new master");
    assert_eq!(read, vec![3, 1]);
    let keyed = [(&stays_key, Change::Add(1), Some("k2"))];
    assert_eq!(store.apply_ordered(&keyed, Duration::from_secs(60)).await, vec![Outcome::Applied(4)]);
    assert_eq!(store.incr(&both).await, vec![Outcome::Applied(5), Outcome::Applied(2)]);
    assert_eq!(importing.cli(&["hget", &stays_hash, "views"]), "5");
    assert_eq!(importing.cli(&["hget", &moved_hash, "views"]), "2");
}
