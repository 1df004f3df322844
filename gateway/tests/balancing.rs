//! Request distribution over three real counters, per balancing policy,
//! read from each counter's own request metrics.

mod common;

use common::{Http, RedisServer, Service, start_counter, start_gateway, unique};
use serde_json::json;

const REQUESTS: usize = 600;

/// Unary Increment calls each counter served, from its /metrics.
async fn served(counter: &Service) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", counter.addr("admin"))).await.unwrap().text().await.unwrap();
    tally_testkit::prometheus::sum(&text, "tally_counter_grpc_requests_total", &["method=\"Increment\""]).unwrap_or(0.0)
}

/// Shares of REQUESTS sequential increments per counter under `policy`.
async fn shares(policy: &str, weights: [u32; 3]) -> Vec<f64> {
    let redis = RedisServer::start();
    let counters: Vec<Service> = (0..3).map(|_| start_counter(&redis.url(), &[])).collect();
    let endpoints: Vec<String> =
        counters.iter().zip(weights).map(|(c, w)| format!("{};weight={w}", c.grpc_endpoint())).collect();
    // No coalescing: one gRPC call per HTTP request, so calls are countable.
    let gateway = start_gateway(&endpoints.join(","), &[("TALLY_LB_POLICY", policy), ("TALLY_COALESCE", "false")]);
    for _ in 1..3 {
        gateway.wait_for_log("every endpoint warm", |l| l.contains("healthy=true"));
    }
    let http = Http::new(gateway.http_base());
    let post = unique("lb");
    for _ in 0..REQUESTS {
        let (status, body) =
            http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut counts = Vec::new();
    for c in &counters {
        counts.push(served(c).await);
    }
    assert_eq!(counts.iter().sum::<f64>() as usize, REQUESTS, "{counts:?}");
    counts.iter().map(|c| c / REQUESTS as f64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let s = shares("round_robin", [1, 1, 1]).await;
    for share in &s {
        assert!((share - 1.0 / 3.0).abs() < 0.02, "round_robin within ±2 %: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_the_weights() {
    let s = shares("weighted", [1, 2, 5]).await;
    for (share, want) in s.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0]) {
        assert!((share - want).abs() < 0.07, "weighted 1:2:5 within ±7 % (600 draws): {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_uses_every_idle_endpoint() {
    // Sequential calls leave every endpoint idle, so P2C is a fair draw.
    let s = shares("least_request", [1, 1, 1]).await;
    for share in &s {
        assert!((share - 1.0 / 3.0).abs() < 0.08, "least_request within ±8 %: {s:?}");
    }
}
