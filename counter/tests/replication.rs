//! Writes that wait for replicas (`TALLY_STORE_WAIT_REPLICAS`), and a Redis
//! Cluster master failing over, on real replicas: an acknowledged write is
//! on the replica when it is acknowledged; one the replica did not confirm
//! is reported unknown, and its resend under the same idempotency key or
//! batch id applies once; a master killed after its writes were confirmed
//! loses none of them, the store finds the promoted replica by itself, and
//! writes there are unknown until the promoted master has a replica again.

mod common;

use std::time::{Duration, Instant};

use common::{RedisCluster, RedisServer, start_counter, unique};
use tally_counter::store::batch::{DEFAULT_MARKER_TTL, new_batch_id};
use tally_counter::store::{
    Change, Outcome, ReplicaWait, Store, StoreError, StoreOptions, StoreTimeouts, slot_of_resource,
};
use tally_proto::CounterKey;
use tally_proto::v1::IncrementRequest;
use tonic::Code;

const TIMEOUTS: StoreTimeouts = StoreTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(2) };
const RETENTION: Duration = Duration::from_secs(600);

/// A second for a replica to confirm: a resumed or newly synced replica on
/// a loaded 2-core machine may take more than the default 100 ms.
fn options(wait_for: u32) -> StoreOptions {
    let wait = ReplicaWait::from_settings(wait_for, 1000, TIMEOUTS.response).expect("valid wait");
    StoreOptions { timeouts: TIMEOUTS, tls: Default::default(), wait }
}

fn key(resource: &str, counter_type: &str) -> CounterKey {
    CounterKey::new(resource, counter_type).expect("valid key")
}

fn hget(redis: &RedisServer, key: &CounterKey) -> String {
    redis.cli(&["hget", &format!("tally:{{{}}}", key.resource_id()), key.counter_type()])
}

/// `HGET` on a Cluster replica, which answers reads after `READONLY`.
fn hget_replica(replica: &RedisServer, key: &CounterKey) -> String {
    let hget = format!("HGET tally:{{{}}} {}", key.resource_id(), key.counter_type());
    let replies = replica.cli_session(&["READONLY", &hget]);
    replies.get(1).cloned().unwrap_or_default()
}

fn unconfirmed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| matches!(o, Outcome::Failed(StoreError::Unconfirmed(m)) if m.contains("replicas")))
}

#[tokio::test]
async fn an_acknowledged_write_is_on_the_replica() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let store = Store::from_url(&master.url(), &options(1)).expect("store");
    let resource = unique("acked");
    let (views, likes) = (key(&resource, "views"), key(&resource, "likes"));

    // Each read of the replica comes right after the acknowledgement: WAIT
    // returned once the replica had applied the write.
    assert_eq!(store.incr(&[(&views, 5), (&likes, 1)]).await, vec![Outcome::Applied(5), Outcome::Applied(1)]);
    assert_eq!((hget(&replica, &views), hget(&replica, &likes)), ("5".into(), "1".into()));
    let ordered = [(&views, Change::Add(2), Some("k1")), (&likes, Change::Reset, None)];
    assert_eq!(store.apply_ordered(&ordered, RETENTION).await, vec![Outcome::Applied(7), Outcome::Applied(1)]);
    assert_eq!((hget(&replica, &views), hget(&replica, &likes)), ("7".into(), String::new()));
    let chunk = store.incr_batch_once(&new_batch_id(), &[(&views, 1)], DEFAULT_MARKER_TTL).await;
    assert_eq!(chunk, vec![Outcome::Applied(0)]);
    assert_eq!(hget(&replica, &views), "8");

    // An overflow applied nothing: it keeps its own report, whatever the
    // replicas say.
    let big = key(&resource, "big");
    assert_eq!(store.incr(&[(&big, i64::MAX)]).await, vec![Outcome::Applied(i64::MAX)]);
    assert_eq!(store.incr(&[(&big, 1)]).await, vec![Outcome::Overflow]);
}

#[tokio::test]
async fn a_write_the_replica_did_not_confirm_is_unknown_and_its_resend_applies_once() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let waiting = Store::from_url(&master.url(), &options(1)).expect("store");
    let not_waiting = Store::from_url(&master.url(), &options(0)).expect("store");
    let resource = unique("unconfirmed");
    let (views, likes) = (key(&resource, "views"), key(&resource, "likes"));

    replica.signal("-STOP");
    // Without waiting, acknowledged though the replica has nothing.
    assert_eq!(not_waiting.incr(&[(&views, 1)]).await, vec![Outcome::Applied(1)]);
    // Waiting: applied on the master, reported unknown on every path.
    let plain = waiting.incr(&[(&views, 1)]).await;
    assert!(unconfirmed(&plain), "{plain:?}");
    let keyed = waiting.apply_ordered(&[(&views, Change::Add(10), Some("retry-me"))], RETENTION).await;
    assert!(unconfirmed(&keyed), "{keyed:?}");
    let batch_id = new_batch_id();
    let chunk = waiting.incr_batch_once(&batch_id, &[(&likes, 3)], DEFAULT_MARKER_TTL).await;
    assert!(unconfirmed(&chunk), "{chunk:?}");
    assert_eq!((hget(&master, &views), hget(&master, &likes)), ("12".into(), "3".into()), "applied on the master");
    // A resend on another connection (another counter, or this one after a
    // reconnect) finds the write applied; it is still not confirmed. (Redis
    // 7.0's `WAIT` counts from the server's offset, so this holds there even
    // without the replay's marker rewrite; where `WAIT` counts from the
    // connection's last write, the rewrite is what makes it hold.)
    let elsewhere = Store::from_url(&master.url(), &options(1)).expect("store");
    let keyed = elsewhere.apply_ordered(&[(&views, Change::Add(10), Some("retry-me"))], RETENTION).await;
    assert!(unconfirmed(&keyed), "{keyed:?}");
    let chunk = elsewhere.incr_batch_once(&batch_id, &[(&likes, 3)], DEFAULT_MARKER_TTL).await;
    assert!(unconfirmed(&chunk), "{chunk:?}");
    replica.signal("-CONT");

    // Resent under the same key and batch id: nothing applied twice, and
    // now confirmed.
    let keyed = waiting.apply_ordered(&[(&views, Change::Add(10), Some("retry-me"))], RETENTION).await;
    assert_eq!(keyed, vec![Outcome::Replayed(12)]);
    let chunk = waiting.incr_batch_once(&batch_id, &[(&likes, 3)], DEFAULT_MARKER_TTL).await;
    assert_eq!(chunk, vec![Outcome::Applied(0)]);
    assert_eq!(waiting.get(&[views.clone(), likes.clone()]).await.expect("read"), vec![12, 3]);
    assert_eq!((hget(&replica, &views), hget(&replica, &likes)), ("12".into(), "3".into()));
}

/// On a Redis Cluster, a resource's transaction (an increment next to a
/// keyed one) and a write-behind chunk go with their `WAIT` in one pipeline
/// on their slot master's connection: confirmed by its replica, or unknown
/// while that replica is paused, and then resent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_transactions_and_chunks_wait_for_their_master_s_replica() {
    let cluster = RedisCluster::start_replicated();
    let store = Store::from_url(&cluster.url(), &options(1)).expect("store");
    let resource = unique("transaction");
    let (views, likes) = (key(&resource, "views"), key(&resource, "likes"));
    let slot = slot_of_resource(&resource);
    let (master, replica) = (cluster.master_of(slot).expect("a master"), cluster.replica_for(slot));

    let both = [(&views, Change::Add(1), None), (&likes, Change::Add(1), Some("k1"))];
    assert_eq!(store.apply_ordered(&both, RETENTION).await, vec![Outcome::Applied(1), Outcome::Applied(1)]);
    let on_replica = (hget_replica(replica, &views), hget_replica(replica, &likes));
    assert_eq!(on_replica, ("1".into(), "1".into()), "confirmed: on the replica");

    replica.signal("-STOP");
    let both = [(&views, Change::Add(1), None), (&likes, Change::Add(1), Some("k2"))];
    let transaction = store.apply_ordered(&both, RETENTION).await;
    assert!(unconfirmed(&transaction), "{transaction:?}");
    let batch_id = new_batch_id();
    let chunk = store.incr_batch_once(&batch_id, &[(&views, 10)], DEFAULT_MARKER_TTL).await;
    assert!(unconfirmed(&chunk), "{chunk:?}");
    assert_eq!((hget(master, &views), hget(master, &likes)), ("12".into(), "2".into()), "applied on the master");
    replica.signal("-CONT");

    // Resent under the same key and batch id: nothing applied twice, and
    // now confirmed.
    let keyed = store.apply_ordered(&[(&likes, Change::Add(1), Some("k2"))], RETENTION).await;
    assert_eq!(keyed, vec![Outcome::Replayed(2)]);
    let chunk = store.incr_batch_once(&batch_id, &[(&views, 10)], DEFAULT_MARKER_TTL).await;
    assert_eq!(chunk, vec![Outcome::Applied(0)]);
    assert_eq!((hget_replica(replica, &views), hget_replica(replica, &likes)), ("12".into(), "2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failing_over_loses_no_confirmed_write() {
    let mut cluster = RedisCluster::start_replicated();
    let store = Store::from_url(&cluster.url(), &options(1)).expect("store");
    let prefix = unique("failover");
    // Enough resources for every master to hold some.
    let keys: Vec<CounterKey> = (0..30).map(|i| key(&format!("{prefix}-{i}"), "views")).collect();
    let plain: Vec<(&CounterKey, i64)> = keys.iter().map(|k| (k, 1)).collect();
    let keyed: Vec<_> = keys.iter().map(|k| (k, Change::Add(1), Some("first"))).collect();
    // Plain increments (on the masters' own pipelines), keyed ones and a
    // write-behind batch (on the same connections, one transaction or
    // script per resource or slot), every one confirmed by a replica.
    for (round, want) in [(0, 1), (1, 2)] {
        assert!(store.incr(&plain).await.iter().all(|o| *o == Outcome::Applied(want)), "round {round}");
    }
    assert!(store.apply_ordered(&keyed, RETENTION).await.iter().all(|o| *o == Outcome::Applied(3)));
    let chunk = store.incr_batch_once(&new_batch_id(), &plain, DEFAULT_MARKER_TTL).await;
    assert!(chunk.iter().all(|o| *o == Outcome::Applied(0)), "{chunk:?}");

    let slot = slot_of_resource(keys[0].resource_id());
    let old_master = cluster.master_of(slot).expect("a master").port;
    let new_master = cluster.fail_over(slot).expect("a failover").port;
    assert_ne!(new_master, old_master);

    // The store finds the new master by itself. Until it does, reads fail
    // (there is no event to await: polled, bounded); then every confirmed
    // write is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let values = loop {
        match store.get(&keys).await {
            Ok(values) => break values,
            Err(err) => assert!(Instant::now() < deadline, "the store did not find the new master: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(values, vec![4; keys.len()], "a confirmed write was lost in the failover");

    // The new master has no replica yet: a write reaching it is applied
    // but not confirmed, so not acknowledged (polled until one reaches it).
    let after = [(&keys[0], Change::Add(1), Some("after-failover"))];
    loop {
        match store.apply_ordered(&after, RETENTION).await.remove(0) {
            Outcome::Failed(StoreError::Unconfirmed(_)) => break,
            Outcome::Failed(err) => assert!(Instant::now() < deadline, "no write reached the new master: {err}"),
            other => panic!("a write on a master without replicas: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old master comes back as the new one's replica: the resend under
    // the same key is then confirmed (resent until it is: each attempt
    // unconfirmed or replayed, never applied again), and was applied once.
    cluster.restart_node(old_master).expect("the old master back as a replica");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.apply_ordered(&after, RETENTION).await.remove(0) {
            Outcome::Replayed(value) => break assert_eq!(value, 5, "applied once"),
            Outcome::Failed(StoreError::Unconfirmed(m)) => assert!(Instant::now() < deadline, "never confirmed: {m}"),
            other => panic!("a resend on a master with its replica back: {other:?}"),
        }
    }
    // Plain increments reach the new master too, once the masters' own
    // pipelines fetched the slot map again. Until then they are refused
    // (not applied), or unknown when sent on the dead master's broken
    // connection: not resent by tally, since a plain increment has no key
    // that would make a resend safe.
    let mut unknown = 0;
    let value = loop {
        match store.incr(&[(&keys[0], 1)]).await.remove(0) {
            Outcome::Applied(v) => break v,
            Outcome::Failed(StoreError::NotApplied(_)) => {}
            Outcome::Failed(StoreError::Unknown(_)) => unknown += 1,
            other => panic!("a plain increment after the failover: {other:?}"),
        }
        assert!(Instant::now() < deadline, "plain increments did not reach the new master");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!((6..=6 + unknown).contains(&value), "{value} after {unknown} unknown attempts");
    assert_eq!(store.get(&keys[1..]).await.expect("read"), vec![4; keys.len() - 1], "other resources untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_answers_an_unconfirmed_increment_unavailable_with_its_outcome_unknown() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let counter = start_counter(&master.url(), &[("TALLY_STORE_WAIT_REPLICAS", "1")]);
    let mut client = common::client(&counter).await;
    let resource = unique("grpc-wait");
    let inc = || IncrementRequest {
        resource_id: resource.clone(),
        counter_type: "likes".into(),
        delta: Some(1),
        ..Default::default()
    };
    assert_eq!(client.increment(inc()).await.expect("confirmed").into_inner().current_value, 1);

    replica.signal("-STOP");
    let status = client.increment(inc()).await.expect_err("not confirmed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.metadata().get("tally-write-outcome").and_then(|v| v.to_str().ok()), Some("unknown"));
    assert!(status.message().contains("replicas"), "{status:?}");
    assert_eq!(master.cli(&["hget", &format!("tally:{{{resource}}}"), "likes"]), "2", "applied on the master");
    replica.signal("-CONT");
}

#[test]
fn replica_waits_that_cannot_work_stop_startup_saying_why() {
    // (whether it started, what it printed)
    let run = |env: &[(&str, &str)]| {
        let out = tally_testkit::output_on_exit(
            std::process::Command::new(env!("CARGO_BIN_EXE_tally-counter"))
                .envs([("TALLY_LISTEN", "127.0.0.1:0"), ("TALLY_ADMIN_LISTEN", "127.0.0.1:0")])
                .envs(env.iter().copied()),
        );
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = run(&[
        ("TALLY_STORE", "redis://127.0.0.1:1"),
        ("TALLY_STORE_WAIT_REPLICAS", "1"),
        ("TALLY_STORE_WAIT_TIMEOUT_MS", "1000"),
        ("TALLY_STORE_TIMEOUT_MS", "1000"),
    ]);
    assert!(!ok && text.contains("TALLY_STORE_WAIT_TIMEOUT_MS"), "a wait as long as a store call: {text}");
    let (ok, text) = run(&[("TALLY_STORE", "memory"), ("TALLY_STORE_WAIT_REPLICAS", "1")]);
    assert!(!ok && text.contains("no replicas"), "a wait on the in-memory store: {text}");
}
