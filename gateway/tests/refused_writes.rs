//! A write the store refused before running it was provably not applied:
//! the gateway resends it, and when every attempt is refused it answers
//! `503` with `Retry-After` — the same sign as a shed request that resending
//! is safe. The refusal here is Redis's own `NOREPLICAS` (a master told to
//! want a replica it does not have). A failure of unknown outcome gets no
//! such invitation (`partial_failure.rs`). An async batch the counter's
//! full write-behind buffer refuses is a 429 with `Retry-After`.

mod common;

use common::{Http, RedisServer, Stack, metric, retry_after, start_counter, start_gateway, unique};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_every_attempt_saw_refused_is_answered_retry_after_and_nothing_is_written() {
    let stack = Stack::start(&[]);
    let admin = stack.gateway.admin_base();
    let id = unique("refused");
    let single = json!({"resource_id": id, "counter_type": "likes"});
    let batch = json!({"operations": [{"resource_id": id, "counter_type": "likes", "delta": 5}]});
    let (status, body) = stack.http.post("/api/v1/counter/increment", single.clone()).await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(stack.redis.cli(&["config", "set", "min-replicas-to-write", "1"]), "OK");
    let retries_before = metric(&admin, "tally_gateway_retries_total", &[]).await;
    let reset = format!("/api/v1/counter/{id}/likes");
    let writes = [
        ("POST", "/api/v1/counter/increment", Some(single)),
        ("POST", "/api/v1/counter/batch-increment", Some(batch)),
        ("DELETE", reset.as_str(), None),
    ];
    for (method, path, request) in writes {
        let request = request.map(|r| r.to_string().into_bytes());
        let (status, headers, body) = stack.http.exchange(method, path, request).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{path}: {body}");
        assert_eq!(retry_after(&headers), Some("1"), "{path}: a write that was not applied invites a retry");
    }
    let retries = metric(&admin, "tally_gateway_retries_total", &[]).await - retries_before;
    assert!(retries >= 3.0, "each refused write is resent before the client is told: {retries} retries");

    assert_eq!(stack.redis.cli(&["config", "set", "min-replicas-to-write", "0"]), "OK");
    let stored = stack.redis.cli(&["hget", &format!("tally:{{{id}}}"), "likes"]);
    assert_eq!(stored, "1", "only the write acknowledged before the refusals was applied, and nothing reset");
    let (status, body) =
        stack.http.post("/api/v1/counter/increment", json!({"resource_id": id, "counter_type": "likes"})).await;
    assert_eq!((status, body["data"]["current_value"].as_i64()), (200, Some(2)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_batch_a_full_buffer_refuses_is_answered_429_retry_after_and_nothing_is_written() {
    let redis = RedisServer::start();
    // Room for one counter: a batch of two never fits.
    let full = [("TALLY_BUFFER_CAPACITY", "1"), ("TALLY_BUFFER_FULL_POLICY", "reject")];
    let counter = start_counter(&redis.url(), &full);
    let gateway = start_gateway(&counter.grpc_endpoint(), &[]);
    let http = Http::new(gateway.http_base());
    let id = unique("full");
    let batch = json!({"async": true, "operations": [
        {"resource_id": id, "counter_type": "likes"},
        {"resource_id": id, "counter_type": "views"},
    ]});
    let (status, headers, body) =
        http.exchange("POST", "/api/v1/counter/batch-increment", Some(batch.to_string().into_bytes())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("resource_exhausted")), "{body}");
    assert_eq!(retry_after(&headers), Some("1"));
    assert_eq!(redis.cli(&["exists", &format!("tally:{{{id}}}")]), "0", "nothing written");
}
