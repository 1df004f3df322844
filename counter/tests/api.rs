//! The counter's API semantics, run identically on every store
//! (memory, real standalone Redis, real 3-master Redis Cluster).

mod common;

use std::collections::HashMap;

use common::{Backend, Stack, op, unique};
use futures_util::StreamExt;
use tally_proto::v1::{
    BatchGetRequest, BatchIncrementRequest, CounterRef, GetRequest, IncrementOperation, IncrementRequest,
};
use tonic::Code;

fn inc(resource_id: &str, counter_type: &str, delta: Option<i64>) -> IncrementRequest {
    IncrementRequest { resource_id: resource_id.into(), counter_type: counter_type.into(), delta, ..Default::default() }
}

async fn get(client: &mut common::Client, resource_id: &str, counter_type: &str) -> i64 {
    client
        .get(GetRequest { resource_id: resource_id.into(), counter_type: counter_type.into() })
        .await
        .expect("get")
        .into_inner()
        .current_value
}

on_every_store!(
    round_trips,
    concurrent_increments_are_serialisable,
    bad_input_writes_nothing,
    overflow_is_refused_alone
);

async fn round_trips(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let post = unique("post");

    // Never written → 0.
    assert_eq!(get(&mut client, &post, "likes").await, 0);

    // Increment: omitted delta is 1; the response carries the value after it.
    let r = client.increment(inc(&post, "likes", None)).await.expect("increment").into_inner();
    assert_eq!((r.resource_id.as_str(), r.counter_type.as_str(), r.current_value), (post.as_str(), "likes", 1));
    let r = client.increment(inc(&post, "likes", Some(41))).await.expect("increment").into_inner();
    assert_eq!(r.current_value, 42);
    let r = client.increment(inc(&post, "likes", Some(-2))).await.expect("increment").into_inner();
    assert_eq!(r.current_value, 40);
    assert_eq!(get(&mut client, &post, "likes").await, 40);

    // BatchIncrement (sync): per-operation results in order, same key summed in order.
    let other = unique("user");
    let batch = BatchIncrementRequest {
        operations: vec![
            op(&post, "likes", 5),
            op(&post, "views", 100),
            op(&other, "follows", 3),
            op(&post, "likes", 1),
        ],
        r#async: false,
        omit_names: false,
    };
    let results = client.batch_increment(batch).await.expect("batch").into_inner().results;
    let values: Vec<i64> = results.iter().map(|r| r.current_value).collect();
    assert_eq!(values, vec![45, 100, 3, 46]);
    assert!(results.iter().all(|r| r.error.is_none()));
    assert_eq!(results[2].resource_id, other);

    // omit_names: the same results, matched by position, without the names.
    let lean = unique("lean");
    let operations = vec![op(&lean, "likes", 2), op(&lean, "likes", 3)];
    let batch = BatchIncrementRequest { operations, r#async: false, omit_names: true };
    let results = client.batch_increment(batch).await.expect("lean batch").into_inner().results;
    let got: Vec<(&str, &str, i64)> =
        results.iter().map(|r| (r.resource_id.as_str(), r.counter_type.as_str(), r.current_value)).collect();
    assert_eq!(got, vec![("", "", 2), ("", "", 5)]);
    let items = vec![CounterRef { resource_id: lean.clone(), counter_type: "likes".into() }];
    let results = client.batch_get(BatchGetRequest { items, omit_names: true }).await.expect("lean get").into_inner();
    let got: Vec<(&str, i64)> = results.results.iter().map(|r| (r.resource_id.as_str(), r.current_value)).collect();
    assert_eq!(got, vec![("", 5)]);

    // BatchGet: one result per item, in order, unknown counters read 0.
    let items = vec![
        CounterRef { resource_id: post.clone(), counter_type: "views".into() },
        CounterRef { resource_id: other.clone(), counter_type: "follows".into() },
        CounterRef { resource_id: post.clone(), counter_type: "never".into() },
        CounterRef { resource_id: post.clone(), counter_type: "likes".into() },
    ];
    let got: Vec<i64> = client
        .batch_get(BatchGetRequest { items, omit_names: false })
        .await
        .expect("batch get")
        .into_inner()
        .results
        .iter()
        .map(|r| r.current_value)
        .collect();
    assert_eq!(got, vec![100, 3, 0, 46]);

    // StreamIncrements: responses in request order; a bad message gets an
    // error response and does not end the stream.
    let requests = vec![
        inc(&post, "shares", Some(2)),
        inc(&post, "shares", Some(0)),
        inc(&post, "shares", Some(3)),
        inc(&post, "shares", Some(i64::MAX)),
    ];
    let mut responses = client.stream_increments(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    let mut seen = Vec::new();
    while let Some(response) = responses.next().await {
        let response = response.expect("stream item");
        assert_eq!(response.resource_id, post, "every answer, refusals too, names its counter");
        seen.push((response.current_value, response.error.map(|e| e.code)));
    }
    let (invalid, overflow) = (Some(Code::InvalidArgument as i32), Some(Code::OutOfRange as i32));
    assert_eq!(seen, vec![(2, None), (0, invalid), (5, None), (0, overflow)]);

    // StreamBatchIncrements: one answer per batch, in order; a batch refused
    // as a whole ends the stream with its status, and the batch sent after
    // it is neither answered nor applied.
    let batch = |operations: Vec<IncrementOperation>, omit_names| BatchIncrementRequest {
        operations,
        r#async: false,
        omit_names,
    };
    let batches = vec![
        batch(vec![op(&post, "saves", 2), op(&post, "saves", 3)], true),
        batch(vec![op(&post, "saves", 10)], false),
        batch(vec![op(&post, "", 1)], true),
        batch(vec![op(&post, "saves", 100)], true),
    ];
    let mut answers = client.stream_batch_increments(tokio_stream::iter(batches)).await.expect("stream").into_inner();
    let first = answers.message().await.expect("first answer").expect("answered");
    assert_eq!(first.results.iter().map(|r| r.current_value).collect::<Vec<_>>(), vec![2, 5]);
    let second = answers.message().await.expect("second answer").expect("answered");
    assert_eq!((second.results[0].resource_id.as_str(), second.results[0].current_value), (post.as_str(), 15));
    let refused = answers.message().await.expect_err("the refused batch ends the stream");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(get(&mut client, &post, "saves").await, 15, "the batch after the refused one was not applied");

    // StreamBatchGet: one answer per batch of reads, in order, names kept or
    // omitted as asked; a batch refused as a whole ends the stream.
    let reads = |types: &[&str], omit_names| BatchGetRequest {
        items: types.iter().map(|t| CounterRef { resource_id: post.clone(), counter_type: t.to_string() }).collect(),
        omit_names,
    };
    let batches =
        vec![reads(&["saves", "shares"], true), reads(&["saves"], false), reads(&[""], true), reads(&["saves"], true)];
    let mut answers = client.stream_batch_get(tokio_stream::iter(batches)).await.expect("stream").into_inner();
    let first = answers.message().await.expect("first answer").expect("answered");
    let values: Vec<_> = first.results.iter().map(|r| (r.counter_type.as_str(), r.current_value)).collect();
    assert_eq!(values, vec![("", 15), ("", 5)]);
    let second = answers.message().await.expect("second answer").expect("answered");
    assert_eq!((second.results[0].counter_type.as_str(), second.results[0].current_value), ("saves", 15));
    let refused = answers.message().await.expect_err("the refused batch ends the stream");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // Async batch: accepted at once, visible after the next flush.
    let accepted = client
        .batch_increment(BatchIncrementRequest {
            operations: vec![op(&post, "views", 7)],
            r#async: true,
            omit_names: false,
        })
        .await
        .expect("async batch")
        .into_inner();
    assert!(accepted.accepted);
    assert_eq!(eventually(&mut client, &post, "views", 107).await, 107);
}

/// Polls a counter until it reads `want` (async writes land within one flush
/// interval, 100 ms by default) and returns the last value read; gives up
/// after 5 s.
async fn eventually(client: &mut common::Client, resource_id: &str, counter_type: &str, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let value = get(client, resource_id, counter_type).await;
        if value == want || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn concurrent_increments_are_serialisable(backend: Backend) {
    const TASKS: usize = 32;
    const PER_TASK: usize = 150;
    let stack = Stack::start(backend, &[]);
    let hot: Vec<String> = (0..3).map(|_| unique("hot")).collect();
    let cold_prefix = unique("cold");

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = stack.client().await;
        let hot = hot.clone();
        let cold_prefix = cold_prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64, i64)> = Vec::new(); // (resource, delta, returned value)
            for i in 0..PER_TASK {
                let delta = 1 + ((t * 7 + i) % 5) as i64;
                let resource =
                    if i % 3 == 0 { format!("{cold_prefix}-{t}-{i}") } else { hot[(t + i) % hot.len()].clone() };
                if i % 10 == 0 {
                    // Batches take the same path: mix them in.
                    let batch = BatchIncrementRequest {
                        operations: vec![op(&resource, "likes", delta)],
                        r#async: false,
                        omit_names: false,
                    };
                    let result = client.batch_increment(batch).await.expect("batch").into_inner().results.remove(0);
                    acked.push((resource, delta, result.current_value));
                } else {
                    let r = client.increment(inc(&resource, "likes", Some(delta))).await.expect("increment");
                    acked.push((resource, delta, r.into_inner().current_value));
                }
            }
            acked
        }));
    }
    let mut per_key: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for task in tasks {
        for (resource, delta, value) in task.await.expect("task") {
            per_key.entry(resource).or_default().push((value, delta));
        }
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), TASKS * PER_TASK);

    let mut client = stack.client().await;
    for (resource, mut observed) in per_key {
        // Deltas are positive, so sorting by value recovers the serial order:
        // each value must be the previous one plus its own delta — no
        // duplicates, no gaps — and the final value is the sum of all deltas.
        observed.sort_unstable();
        let mut previous = 0;
        for &(value, delta) in &observed {
            assert_eq!(value - delta, previous, "{resource}: value {value} (delta {delta}) does not follow {previous}");
            previous = value;
        }
        let sum: i64 = observed.iter().map(|&(_, d)| d).sum();
        assert_eq!(get(&mut client, &resource, "likes").await, sum, "{resource}");
    }
}

async fn bad_input_writes_nothing(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let good = unique("good");
    let long_id = "r".repeat(129);
    let long_type = "t".repeat(65);

    let unary: Vec<(&str, IncrementRequest)> = vec![
        ("empty resource_id", inc("", "likes", Some(1))),
        ("empty counter_type", inc(&good, "", Some(1))),
        ("resource_id too long", inc(&long_id, "likes", Some(1))),
        ("counter_type too long", inc(&good, &long_type, Some(1))),
        ("space in resource_id", inc("a b", "likes", Some(1))),
        ("brace in resource_id", inc("a{b}", "likes", Some(1))),
        ("upper case counter_type", inc(&good, "Likes", Some(1))),
        ("non-ASCII resource_id", inc("café", "likes", Some(1))),
        ("zero delta", inc(&good, "likes", Some(0))),
    ];
    for (case, request) in unary {
        let status = client.increment(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(!status.message().is_empty(), "{case}: message");
    }

    let too_many: Vec<IncrementOperation> = (0..1001).map(|i| op(&good, &format!("c{i}"), 1)).collect();
    let batches: Vec<(&str, Vec<IncrementOperation>, &str)> = vec![
        ("empty batch", vec![], "at least one"),
        ("1001 operations", too_many, "limit is 1000"),
        ("one bad operation", vec![op(&good, "likes", 1), op(&good, "BAD", 1)], "operations[1]"),
        ("one zero delta", vec![op(&good, "likes", 1), op(&good, "likes", 0)], "operations[1]"),
    ];
    for (case, operations, mentions) in batches {
        for r#async in [false, true] {
            let request = BatchIncrementRequest { operations: operations.clone(), r#async, omit_names: false };
            let status = client.batch_increment(request).await.expect_err(case);
            assert_eq!(status.code(), Code::InvalidArgument, "{case} (async={async}): {status:?}");
            assert!(status.message().contains(mentions), "{case}: {:?} should mention {mentions:?}", status.message());
        }
    }

    let bad_get = client.get(GetRequest { resource_id: "".into(), counter_type: "likes".into() }).await;
    assert_eq!(bad_get.expect_err("empty get").code(), Code::InvalidArgument);
    let bad_items = BatchGetRequest {
        items: vec![CounterRef { resource_id: good.clone(), counter_type: "x y".into() }],
        omit_names: false,
    };
    assert_eq!(client.batch_get(bad_items).await.expect_err("bad batch get").code(), Code::InvalidArgument);

    // Nothing was written by any of it. For the async cases: a valid async
    // write sent afterwards is flushed no earlier than anything buffered
    // before it, so once it is visible the refused ones would be too.
    let marker = BatchIncrementRequest { operations: vec![op(&good, "marker", 1)], r#async: true, omit_names: false };
    assert!(client.batch_increment(marker).await.expect("marker").into_inner().accepted);
    assert_eq!(eventually(&mut client, &good, "marker", 1).await, 1);
    assert_eq!(get(&mut client, &good, "likes").await, 0);
    assert_eq!(get(&mut client, &good, "c0").await, 0);
}

async fn overflow_is_refused_alone(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let big = unique("big");
    let small = unique("small");
    client.increment(inc(&big, "views", Some(i64::MAX - 1))).await.expect("near max");

    let status = client.increment(inc(&big, "views", Some(5))).await.expect_err("overflow");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(get(&mut client, &big, "views").await, i64::MAX - 1);

    // Downward overflow too.
    client.increment(inc(&small, "views", Some(i64::MIN))).await.expect("to min");
    assert_eq!(client.increment(inc(&small, "views", Some(-1))).await.expect_err("underflow").code(), Code::OutOfRange);

    // In a batch, only the overflowing operation fails; its neighbours apply.
    let batch = BatchIncrementRequest {
        operations: vec![op(&big, "likes", 1), op(&big, "views", 10), op(&big, "views", 1)],
        r#async: false,
        omit_names: false,
    };
    let results = client.batch_increment(batch).await.expect("batch").into_inner().results;
    assert_eq!(results[0].current_value, 1);
    assert_eq!(results[1].error.as_ref().map(|e| e.code), Some(Code::OutOfRange as i32));
    assert_eq!(results[2].current_value, i64::MAX);
    assert_eq!(get(&mut client, &big, "views").await, i64::MAX);

    // Concurrent increments near the limit: every one either applies or is
    // refused, and the final value is exactly the sum of the applied ones.
    let edge = unique("edge");
    client.increment(inc(&edge, "views", Some(i64::MAX - 100))).await.expect("edge");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut client = stack.client().await;
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move {
            client.increment(inc(&edge, "views", Some(7))).await.map(|r| r.into_inner())
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => applied += 1,
            Err(status) => assert_eq!(status.code(), Code::OutOfRange),
        }
    }
    assert_eq!(applied, 100 / 7);
    assert_eq!(get(&mut client, &edge, "views").await, i64::MAX - 100 + 7 * applied);
}

on_every_store!(idempotency_keys_apply_once);

fn keyed(resource_id: &str, delta: i64, key: &str) -> IncrementRequest {
    IncrementRequest {
        resource_id: resource_id.into(),
        counter_type: "likes".into(),
        delta: Some(delta),
        idempotency_key: key.into(),
    }
}

async fn idempotency_keys_apply_once(backend: Backend) {
    let stack = Stack::start(backend, &[]);
    let mut client = stack.client().await;
    let post = unique("idem");
    let key = unique("key");

    let first = client.increment(keyed(&post, 5, &key)).await.expect("first").into_inner();
    assert_eq!((first.current_value, first.replayed), (5, false));
    client.increment(inc(&post, "likes", Some(1))).await.expect("unkeyed");
    let again = client.increment(keyed(&post, 5, &key)).await.expect("again").into_inner();
    assert_eq!((again.current_value, again.replayed), (5, true), "the first result, applied once");
    assert_eq!(get(&mut client, &post, "likes").await, 6);

    // The same key on another counter is another operation.
    let other = unique("idem-other");
    assert_eq!(client.increment(keyed(&other, 2, &key)).await.expect("other").into_inner().current_value, 2);

    // Concurrent duplicates (separate connections) count once and all see the first result.
    let racy = unique("idem-race");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut client = stack.client().await;
        let racy = racy.clone();
        tasks.push(tokio::spawn(
            async move { client.increment(keyed(&racy, 3, "same-key")).await.map(|r| r.into_inner()) },
        ));
    }
    let mut fresh = 0;
    for task in tasks {
        let response = task.await.expect("task").expect("increment");
        assert_eq!(response.current_value, 3);
        fresh += usize::from(!response.replayed);
    }
    assert_eq!(fresh, 1, "exactly one caller applied it");
    assert_eq!(get(&mut client, &racy, "likes").await, 3);

    // Batches: per-operation keys, a duplicate inside one batch, and async
    // batches with keys (applied synchronously, so results are returned).
    let batch_key = unique("bk");
    let keyed_op = |delta| IncrementOperation {
        resource_id: post.clone(),
        counter_type: "views".into(),
        delta: Some(delta),
        idempotency_key: batch_key.clone(),
    };
    for r#async in [false, true] {
        let request = BatchIncrementRequest {
            operations: vec![keyed_op(10), keyed_op(10), op(&post, "views", 1)],
            r#async,
            omit_names: false,
        };
        let results = client.batch_increment(request).await.expect("batch").into_inner().results;
        let seen: Vec<(i64, bool)> = results.iter().map(|r| (r.current_value, r.replayed)).collect();
        let plain = if r#async { 12 } else { 11 };
        assert_eq!(seen, vec![(10, r#async), (10, true), (plain, false)], "async={async}");
    }
    assert_eq!(get(&mut client, &post, "views").await, 12);

    let bad = client.increment(keyed(&post, 1, "has space")).await.expect_err("bad key");
    assert_eq!(bad.code(), Code::InvalidArgument);
}
