//! A partial Redis Cluster failure must not be double-counted: one master
//! refuses its part of a batch (provably not applied) while another hangs
//! (its part may still be applied when it resumes). The batch as a whole is
//! then of unknown outcome, so the gateway must not resend it.

mod common;

use std::time::Duration;

use common::{Http, metric, retry_after, start_counter, start_gateway, unique, wait_store_up};
use serde_json::json;
use tally_testkit::RedisCluster;

/// The slot range a cluster node serves (from its own `CLUSTER NODES` line).
fn slots_of(cluster: &RedisCluster, node: usize) -> (u16, u16) {
    let nodes = cluster.nodes[node].cli(&["cluster", "nodes"]);
    let mine = nodes.lines().find(|l| l.contains("myself")).expect("myself line");
    let range = mine.split_whitespace().last().expect("slot range");
    let (start, end) = range.split_once('-').expect("a start-end slot range");
    (start.parse().expect("start"), end.parse().expect("end"))
}

/// A resource id whose counters live on `node`, and its slot.
fn resource_on(cluster: &RedisCluster, node: usize, prefix: &str) -> (String, u16) {
    let (start, end) = slots_of(cluster, node);
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find_map(|id| {
            let slot: u16 = cluster.nodes[0].cli(&["cluster", "keyslot", &format!("tally:{{{id}}}")]).parse().ok()?;
            (start..=end).contains(&slot).then_some((id, slot))
        })
        .expect("a resource on the node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_half_refused_half_hung_is_not_resent() {
    let cluster = RedisCluster::start(); // its own: nodes are stopped and broken here
    let counter = start_counter(&cluster.url(), &[("TALLY_STORE_TIMEOUT_MS", "500")]);
    wait_store_up(&counter); // the gateway below checks health once a minute
    let gateway = start_gateway(&counter.grpc_endpoint(), &[("TALLY_HEALTH_INTERVAL_MS", "60000")]);
    let http = Http::new(gateway.http_base());
    let admin = gateway.admin_base();
    let prefix = unique("split");
    let (refusing, refused_slot) = resource_on(&cluster, 0, &prefix);
    let (hung, _) = resource_on(&cluster, 1, &prefix);
    let batch = json!({"operations": [
        {"resource_id": refusing, "counter_type": "likes"},
        {"resource_id": hung, "counter_type": "likes"},
    ]});
    // Both masters serve: the batch applies (and the store knows both nodes).
    let (status, body) = http.post("/api/v1/counter/batch-increment", batch.clone()).await;
    assert_eq!(status, 200, "{body}");

    // Node 0 stops serving the first operation's slot (CLUSTERDOWN: refused,
    // nothing applied); node 1 hangs.
    let refused_slot = refused_slot.to_string();
    assert_eq!(cluster.nodes[0].cli(&["cluster", "delslots", &refused_slot]), "OK");
    cluster.nodes[1].signal("-STOP");
    let calls_before = metric(&admin, "tally_gateway_upstream_requests_total", &["BatchIncrement"]).await;
    let retries_before = metric(&admin, "tally_gateway_retries_total", &[]).await;
    let (status, headers, body) =
        http.exchange("POST", "/api/v1/counter/batch-increment", Some(batch.to_string().into_bytes())).await;
    cluster.nodes[1].signal("-CONT");
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")), "{body}");
    assert_eq!(retry_after(&headers), None, "an outcome unknown does not invite a retry");
    let calls = metric(&admin, "tally_gateway_upstream_requests_total", &["BatchIncrement"]).await - calls_before;
    let retries = metric(&admin, "tally_gateway_retries_total", &[]).await - retries_before;
    assert_eq!((calls, retries), (1.0, 0.0), "a batch of unknown outcome must not be resent");

    // The hung master applies what it had received once it resumes: at most
    // acknowledged (1, the first batch) + failed (1) — never more.
    let key = format!("tally:{{{hung}}}");
    let mut stored = 0;
    for _ in 0..40 {
        stored = cluster.nodes[1].cli(&["hget", &key, "likes"]).parse().unwrap_or(0);
        if stored >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // the resumed node works through its queue
    }
    assert!((1..=2).contains(&stored), "stored {stored}, acknowledged 1, failed 1");
    // Node 0 serves the slot again; the refused part was not applied.
    assert_eq!(cluster.nodes[0].cli(&["cluster", "addslots", &refused_slot]), "OK");
    let mut refused = String::new();
    for _ in 0..100 {
        refused = cluster.nodes[0].cli(&["hget", &format!("tally:{{{refusing}}}"), "likes"]);
        if !refused.starts_with("CLUSTERDOWN") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // the node leaves the fail state on its own cadence
    }
    assert_eq!(refused, "1", "the refused part was not applied");
}
