//! Reset and per-resource reads over gRPC, on every store: a reset returns
//! the value it cleared and is ordered with the increments around it (every
//! value any caller saw fits one serial order), keyed resets replay, and a
//! resource lists its counters from one read of its hash.

mod common;

use common::{Backend, Client, Stack, unique};
use tally_proto::v1::{CounterValue, GetRequest, GetResourceRequest, IncrementRequest, ResetRequest};
use tally_testkit::serial;
use tonic::Code;

fn inc(resource_id: &str, counter_type: &str, delta: i64) -> IncrementRequest {
    IncrementRequest {
        resource_id: resource_id.into(),
        counter_type: counter_type.into(),
        delta: Some(delta),
        idempotency_key: String::new(),
    }
}

fn reset(resource_id: &str, counter_type: &str, key: &str) -> ResetRequest {
    ResetRequest { resource_id: resource_id.into(), counter_type: counter_type.into(), idempotency_key: key.into() }
}

async fn get(client: &mut Client, resource_id: &str, counter_type: &str) -> i64 {
    let request = GetRequest { resource_id: resource_id.into(), counter_type: counter_type.into() };
    client.get(request).await.expect("get").into_inner().current_value
}

async fn listing(client: &mut Client, resource_id: &str) -> Vec<(String, i64)> {
    let request = GetResourceRequest { resource_id: resource_id.into() };
    let response = client.get_resource(request).await.expect("get resource").into_inner();
    assert_eq!(response.resource_id, resource_id);
    response
        .counters
        .into_iter()
        .map(|CounterValue { counter_type, current_value }| (counter_type, current_value))
        .collect()
}

on_every_store!(a_reset_clears_one_counter_and_returns_its_value, keyed_resets_replay_apart_from_increments);
on_every_store!(concurrent_increments_and_resets_fit_one_serial_order, a_resource_lists_its_counters);

async fn a_reset_clears_one_counter_and_returns_its_value(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let post = unique("reset");
    client.increment(inc(&post, "likes", 7)).await.expect("increment");
    client.increment(inc(&post, "views", 3)).await.expect("increment");

    let cleared = client.reset(reset(&post, "likes", "")).await.expect("reset").into_inner();
    assert_eq!((cleared.previous_value, cleared.replayed), (7, false));
    assert_eq!((cleared.resource_id.as_str(), cleared.counter_type.as_str()), (post.as_str(), "likes"));
    assert_eq!(get(&mut client, &post, "likes").await, 0);
    assert_eq!(get(&mut client, &post, "views").await, 3, "the other counter is untouched");
    // After a reset the counter counts from 0; a never-written one resets to 0 from 0.
    assert_eq!(client.increment(inc(&post, "likes", 2)).await.expect("increment").into_inner().current_value, 2);
    assert_eq!(client.reset(reset(&post, "never", "")).await.expect("reset").into_inner().previous_value, 0);

    // Bad input is refused and nothing is reset.
    for bad in [reset("", "likes", ""), reset(&post, "Likes", ""), reset(&post, "likes", "bad key")] {
        let status = client.reset(bad).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(get(&mut client, &post, "likes").await, 2);
    if let Some(redis) = &stack.redis {
        // The field is gone, not set to "0": the hash holds only live counters.
        assert_eq!(redis.cli(&["hexists", &format!("tally:{{{post}}}"), "never"]), "0");
    }
}

async fn keyed_resets_replay_apart_from_increments(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let post = unique("reset-key");
    let key = unique("k");
    client.increment(inc(&post, "likes", 5)).await.expect("increment");
    let first = client.reset(reset(&post, "likes", &key)).await.expect("reset").into_inner();
    assert_eq!((first.previous_value, first.replayed), (5, false));
    client.increment(inc(&post, "likes", 3)).await.expect("increment");
    // The resend of the same reset (e.g. after a timeout) changes nothing.
    let again = client.reset(reset(&post, "likes", &key)).await.expect("reset").into_inner();
    assert_eq!((again.previous_value, again.replayed), (5, true), "the first reset's answer");
    assert_eq!(get(&mut client, &post, "likes").await, 3, "the increment after the reset survives its resend");

    // An increment under the same key is another operation, applied once itself.
    let keyed = IncrementRequest { idempotency_key: key.clone(), ..inc(&post, "likes", 1) };
    let applied = client.increment(keyed.clone()).await.expect("keyed increment").into_inner();
    assert_eq!((applied.current_value, applied.replayed), (4, false));
    assert!(client.increment(keyed).await.expect("replay").into_inner().replayed);
    assert_eq!(get(&mut client, &post, "likes").await, 4);
}

async fn concurrent_increments_and_resets_fit_one_serial_order(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let client = stack.client().await;
    let post = unique("reset-race");
    // 8 callers incrementing by 1 and 2 resetting, interleaved on one counter
    // (through the group committer's summing, the resets through its ordered path).
    let incrementers = (0..8).map(|_| {
        let (mut client, post) = (client.clone(), post.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                seen.push(
                    client.increment(inc(&post, "likes", 1)).await.expect("increment").into_inner().current_value,
                );
            }
            seen
        })
    });
    let resetters = (0..2).map(|_| {
        let (mut client, post) = (client.clone(), post.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                seen.push(client.reset(reset(&post, "likes", "")).await.expect("reset").into_inner().previous_value);
                tokio::task::yield_now().await;
            }
            seen
        })
    });
    let (incrementers, resetters): (Vec<_>, Vec<_>) = (incrementers.collect(), resetters.collect());
    let (increments, resets) = (serial::joined(incrementers).await, serial::joined(resetters).await);
    let final_value = get(&mut client.clone(), &post, "likes").await;
    serial::check_race(&increments, &resets, final_value, 1600);
}

async fn a_resource_lists_its_counters(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let post = unique("listing");
    assert_eq!(listing(&mut client, &post).await, vec![], "never written: no counters");
    for (counter_type, delta) in [("views", 10), ("likes", 2), ("shares", -1), ("likes", 3)] {
        client.increment(inc(&post, counter_type, delta)).await.expect("increment");
    }
    // Another resource sharing the prefix is not listed.
    client.increment(inc(&format!("{post}/1"), "likes", 1)).await.expect("increment");
    let expected = vec![("likes".to_string(), 5), ("shares".to_string(), -1), ("views".to_string(), 10)];
    assert_eq!(listing(&mut client, &post).await, expected);
    client.reset(reset(&post, "shares", "")).await.expect("reset");
    assert_eq!(listing(&mut client, &post).await, vec![expected[0].clone(), expected[2].clone()]);

    let status = client.get_resource(GetResourceRequest { resource_id: "bad id".into() }).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);

    // More counters than one listing returns: refused whole, not cut short.
    let crowded = unique("crowded");
    let ops = (0..1001).map(|i| common::op(&crowded, &format!("c{i}"), 1)).collect::<Vec<_>>();
    for chunk in ops.chunks(1000) {
        let request = tally_proto::v1::BatchIncrementRequest { operations: chunk.to_vec(), ..Default::default() };
        client.batch_increment(request).await.expect("batch");
    }
    let status = client.get_resource(GetResourceRequest { resource_id: crowded }).await.expect_err("too many");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("1001 counters"), "{}", status.message());
}
