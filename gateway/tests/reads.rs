//! Reads end to end (real redis-server → tally-counter → tally-gateway):
//! the read cache's consistency, and reads without it.

mod common;

use common::{Http, Stack, start_gateway, unique};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_your_writes_and_sees_other_gateways_within_the_ttl() {
    let stack = Stack::start(&[("TALLY_CACHE_TTL_MS", "1500")]);
    let other = start_gateway(&stack.counter.grpc_endpoint(), &[("TALLY_CACHE_TTL_MS", "1500")]);
    let other = Http::new(other.http_base());
    let (a, b) = (&stack.http, &other);
    let post = unique("ryw");

    assert_eq!(a.value(&post, "likes").await, 0); // A caches 0
    for expected in 1..=5 {
        // B reads its own writes at once.
        let body = json!({"resource_id": post, "counter_type": "likes", "delta": 1});
        assert_eq!(b.post("/api/v1/counter/increment", body).await.1["data"]["current_value"], expected);
        assert_eq!(b.value(&post, "likes").await, expected);
    }
    // A still serves its cached value, and sees B's writes once it expires.
    assert_eq!(a.value(&post, "likes").await, 0, "A's cache should still hold its earlier read");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.value(&post, "likes").await != 5 {
        assert!(tokio::time::Instant::now() < deadline, "A never saw B's writes");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A's own write is visible to A immediately.
    let body = json!({"resource_id": post, "counter_type": "likes", "delta": 10});
    assert_eq!(a.post("/api/v1/counter/increment", body).await.1["data"]["current_value"], 15);
    assert_eq!(a.value(&post, "likes").await, 15);
}

/// Reads without the cache, many at once: each gets its own counter's
/// value, and reads of one counter queued together are one `HGET` in
/// Redis, not one each (the gateway asks the counter for it once per batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uncached_reads_get_their_own_values_and_share_one_fetch() {
    let stack = Stack::start(&[("TALLY_CACHE_TTL_MS", "0")]);
    let http = &stack.http;
    let (hot, other) = (unique("hot"), unique("other"));
    for (resource_id, delta) in [(&hot, 5), (&other, 9)] {
        let body = json!({"resource_id": resource_id, "counter_type": "likes", "delta": delta});
        assert_eq!(http.post("/api/v1/counter/increment", body).await.0, 200);
    }
    stack.redis.cli(&["CONFIG", "RESETSTAT"]);

    const ROUNDS: usize = 3;
    const READS: usize = 100;
    for _ in 0..ROUNDS {
        let reads = (0..READS).map(|i| {
            let (http, resource_id) = (http.clone(), if i % 10 == 9 { other.clone() } else { hot.clone() });
            tokio::spawn(async move {
                let value = http.value(&resource_id, "likes").await;
                (resource_id, value)
            })
        });
        for read in futures_util::future::join_all(reads.collect::<Vec<_>>()).await {
            let (resource_id, value) = read.expect("read task");
            assert_eq!(value, if resource_id == hot { 5 } else { 9 }, "{resource_id}");
        }
    }
    let hgets = hget_calls(&stack.redis.cli(&["INFO", "commandstats"]));
    assert!(hgets > 0, "the reads went to Redis (the cache is off)");
    assert!(
        hgets < ROUNDS * READS,
        "{hgets} HGETs for {} reads: repeated counters were fetched once per batch",
        ROUNDS * READS
    );
}

/// `calls` of `cmdstat_hget` in `INFO commandstats` (0 when never called).
fn hget_calls(info: &str) -> usize {
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_hget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}
