//! Resets (`DELETE /api/v1/counter/{resource_id}/{counter_type}`) and
//! whole-resource reads (`GET /api/v1/counter/{resource_id}`) through the
//! gateway, on real processes: read-your-writes through the cache, replays
//! under an `Idempotency-Key`, bad input refused with nothing reset, and
//! concurrent increments (coalesced by the gateway) and resets whose every
//! returned value fits one serial order, on Redis and on a Redis Cluster.

mod common;

use common::{Http, Stack, start_counter, start_gateway, unique};
use serde_json::{Value, json};
use tally_testkit::{RedisCluster, serial};

async fn reset(http: &Http, resource_id: &str, counter_type: &str) -> (u16, Value) {
    http.send("DELETE", &format!("/api/v1/counter/{resource_id}/{counter_type}"), None).await
}

async fn increment(http: &Http, resource_id: &str, counter_type: &str, delta: i64) -> i64 {
    let body = json!({"resource_id": resource_id, "counter_type": counter_type, "delta": delta});
    let (status, body) = http.post("/api/v1/counter/increment", body).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["current_value"].as_i64().expect("current_value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_read_back_at_once_and_a_resource_lists_its_counters() {
    let stack = Stack::start(&[]);
    let http = &stack.http;
    let post = unique("reset");
    increment(http, &post, "likes", 7).await;
    increment(http, &post, "views", 3).await;
    assert_eq!(http.value(&post, "likes").await, 7); // now cached

    let (status, body) = reset(http, &post, "likes").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["previous_value"], 7);
    assert_eq!(body["data"]["current_value"], 0);
    assert_eq!(http.value(&post, "likes").await, 0, "the gateway's cache reads its own reset");

    // The resource as a whole (and cached: read twice, then a write shows).
    let listing = json!([{"counter_type": "views", "current_value": 3}]);
    for _ in 0..2 {
        let (status, body) = http.get(&format!("/api/v1/counter/{post}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["data"]["counters"].clone(), body["data"]["total"].clone()), (listing.clone(), json!(1)));
        assert_eq!(body["data"]["resource_id"], post.as_str());
    }
    increment(http, &post, "likes", 2).await;
    let (_, body) = http.get(&format!("/api/v1/counter/{post}")).await;
    let listing = json!([{"counter_type": "likes", "current_value": 2}, {"counter_type": "views", "current_value": 3}]);
    assert_eq!(body["data"]["counters"], listing, "a write through the gateway drops the cached listing");

    // A resource id containing '/' is listed with it percent-encoded.
    let nested = format!("{post}/comments");
    increment(http, &nested, "likes", 1).await;
    let (status, body) = http.get(&format!("/api/v1/counter/{}", nested.replace('/', "%2F"))).await;
    assert_eq!((status, body["data"]["total"].clone()), (200, json!(1)), "{body}");
    let (_, body) = http.get(&format!("/api/v1/counter/{post}/comments/likes")).await;
    assert_eq!(body["data"]["current_value"], 1, "and its counters still read by path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_resets_replay_and_bad_resets_change_nothing() {
    let stack = Stack::start(&[]);
    let http = &stack.http;
    let post = unique("reset-key");
    increment(http, &post, "likes", 5).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/counter/{post}/likes", http.base);
    let send = || client.delete(&url).header("idempotency-key", "run-42").send();
    let first = send().await.expect("send");
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(first.json::<Value>().await.expect("json")["data"]["previous_value"], 5);
    increment(http, &post, "likes", 3).await;
    let again = send().await.expect("send");
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    let body: Value = again.json().await.expect("json");
    assert_eq!((body["data"]["previous_value"].clone(), body["data"]["replayed"].clone()), (json!(5), json!(true)));
    assert_eq!(http.value(&post, "likes").await, 3, "the resend reset nothing");

    for (path, want) in [
        (format!("/api/v1/counter/{post}/Likes"), 400),     // invalid counter type
        (format!("/api/v1/counter/{post}%20x/likes"), 400), // invalid resource id
        (format!("/api/v1/counter/{post}"), 404),           // a whole resource cannot be reset
    ] {
        let (status, body) = http.send("DELETE", &path, None).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["status"], "error", "{body}");
    }
    let bad_key = client.delete(&url).header("idempotency-key", "not a key").send().await.expect("send");
    assert_eq!(bad_key.status(), 400);
    assert_eq!(stack.redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]), "3", "nothing was reset");
    let (status, _) = http.get("/api/v1/counter/bad%20id").await;
    assert_eq!(status, 400);
}

/// 8 clients increment (coalesced into batches by the gateway) while 2
/// reset the same counter: every value returned fits one serial order.
async fn concurrent_increments_and_resets_fit_one_serial_order(store: &str) {
    let counter = start_counter(store, &[]);
    let gateway = start_gateway(&counter.grpc_endpoint(), &[]);
    let http = Http::new(gateway.http_base());
    let post = unique("reset-race");
    let incrementers: Vec<_> = (0..8)
        .map(|_| {
            let (http, post) = (http.clone(), post.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..150 {
                    seen.push(increment(&http, &post, "likes", 1).await);
                }
                seen
            })
        })
        .collect();
    let resetters: Vec<_> = (0..2)
        .map(|_| {
            let (http, post) = (http.clone(), post.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..30 {
                    let (status, body) = reset(&http, &post, "likes").await;
                    assert_eq!(status, 200, "{body}");
                    seen.push(body["data"]["previous_value"].as_i64().expect("previous_value"));
                }
                seen
            })
        })
        .collect();
    let (increments, resets) = (serial::joined(incrementers).await, serial::joined(resetters).await);
    let final_value = http.value(&post, "likes").await;
    serial::check_race(&increments, &resets, final_value, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_and_resets_on_redis() {
    let redis = common::RedisServer::start();
    concurrent_increments_and_resets_fit_one_serial_order(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_and_resets_on_a_redis_cluster() {
    concurrent_increments_and_resets_fit_one_serial_order(&RedisCluster::shared().url()).await;
}
