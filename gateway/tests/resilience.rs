//! The gateway when its counter goes away and comes back.

mod common;

use std::time::{Duration, Instant};

use common::{Http, free_port, start_counter, start_gateway, unique};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_down_gives_a_fast_503_and_recovers_without_restart() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let counter = start_counter("memory", &[("TALLY_LISTEN", &listen)]);
    let gateway = start_gateway(&counter.grpc_endpoint(), &[]);
    let http = Http::new(gateway.http_base());
    let post = unique("down");
    let body = json!({"resource_id": post, "counter_type": "likes", "delta": 1});
    assert_eq!(http.post("/api/v1/counter/increment", body.clone()).await.0, 200);

    drop(counter); // SIGKILL
    let started = Instant::now();
    let (status, error) = http.post("/api/v1/counter/increment", body.clone()).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["status"], "error");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let (status, error) = http.get(&format!("/api/v1/counter/{post}/likes")).await;
    assert_eq!((status, error["error"]["code"].clone()), (503, json!("unavailable")), "{error}");

    gateway.wait_for_log("the endpoint marked unhealthy", |l| l.contains("healthy=false"));
    let (status, ready) = http.get("/api/v1/ready").await;
    assert_eq!((status, ready["status"].clone()), (503, json!("not_ready")));
    let started = Instant::now();
    assert_eq!(http.post("/api/v1/counter/increment", body.clone()).await.0, 503);
    assert!(started.elapsed() < Duration::from_millis(500), "no healthy endpoint: should not even try");

    // Back on the same address: the same gateway serves again.
    let _counter = start_counter("memory", &[("TALLY_LISTEN", &listen)]);
    gateway.wait_for_log("the endpoint healthy again", |l| l.contains("healthy=true"));
    let (status, body) = http.post("/api/v1/counter/increment", body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http.get("/api/v1/ready").await.0, 200);
}
