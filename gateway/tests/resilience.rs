//! The gateway when its counter goes away and comes back.

mod common;

use std::time::{Duration, Instant};

use common::{Http, free_port, retry_after, start_counter, start_gateway, unique};
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
    let (status, ready) = Http::new(gateway.admin_base()).get("/ready").await;
    assert_eq!((status, ready["status"].clone()), (503, json!("not_ready")));
    let started = Instant::now();
    let (status, headers, _) =
        http.exchange("POST", "/api/v1/counter/increment", Some(body.to_string().into_bytes())).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_millis(500), "no healthy endpoint: should not even try");
    assert_eq!(retry_after(&headers), Some("1"), "nothing was sent: safe to resend");

    // Back on the same address: the same gateway serves again.
    let _counter = start_counter("memory", &[("TALLY_LISTEN", &listen)]);
    gateway.wait_for_log("the endpoint healthy again", |l| l.contains("healthy=true"));
    let (status, body) = http.post("/api/v1/counter/increment", body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Http::new(gateway.admin_base()).get("/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_never_reached_a_dead_counter_are_retried_on_another() {
    let redis = common::RedisServer::start();
    let first = start_counter(&redis.url(), &[]);
    let second = start_counter(&redis.url(), &[]);
    common::wait_store_up(&first);
    common::wait_store_up(&second);
    let endpoints = format!("{},{}", first.grpc_endpoint(), second.grpc_endpoint());
    // A long health interval keeps the dead endpoint in rotation, so every
    // other call really meets a refused connection.
    let gateway = start_gateway(&endpoints, &[("TALLY_HEALTH_INTERVAL_MS", "60000"), ("TALLY_COALESCE", "false")]);
    gateway.wait_for_log("the second endpoint warm", |l| l.contains("healthy=true"));
    let http = Http::new(gateway.http_base());
    let post = unique("retry");

    drop(first); // SIGKILL: connections to it are refused from now on
    for i in 1..=100 {
        let body = json!({"resource_id": post, "counter_type": "likes", "delta": 1});
        let (status, body) = http.post("/api/v1/counter/increment", body).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]), "100", "each counted exactly once");
    let metrics = reqwest::get(format!("{}/metrics", gateway.admin_base())).await.unwrap().text().await.unwrap();
    // Summed over methods: every method/reason pair is exported, at zero until used.
    let retried = tally_testkit::prometheus::sum(&metrics, "tally_gateway_retries_total", &["not_sent"]).unwrap_or(0.0);
    assert!(retried >= 1.0, "the dead endpoint was never hit:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_counters_behind_a_name() {
    // `localhost` stands in for a headless Service name: the resolver (here
    // /etc/hosts) answers with the addresses, the gateway warms them up.
    let port = free_port();
    let _counter = start_counter("memory", &[("TALLY_LISTEN", &format!("127.0.0.1:{port}"))]);
    let name = format!("localhost:{port}");
    let gateway =
        start_gateway("", &[("TALLY_DISCOVERY", "dns"), ("TALLY_DNS_NAME", &name), ("TALLY_DNS_INTERVAL_MS", "200")]);
    let http = Http::new(gateway.http_base());
    let body = json!({"resource_id": unique("dns"), "counter_type": "likes"});
    let (status, response) = http.post("/api/v1/counter/increment", body).await;
    assert_eq!(status, 200, "{response}");
    let (_, backends) = Http::new(gateway.admin_base()).get("/api/v1/system/backends").await;
    let endpoints: Vec<&str> =
        backends["data"]["endpoints"].as_array().unwrap().iter().filter_map(|e| e["address"].as_str()).collect();
    assert!(endpoints.contains(&format!("http://127.0.0.1:{port}").as_str()), "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_discovery_without_a_cluster_refuses_to_start_clearly() {
    let output = tally_testkit::output_on_exit(
        std::process::Command::new(env!("CARGO_BIN_EXE_tally-gateway"))
            .env("TALLY_DISCOVERY", "kubernetes")
            .env("TALLY_LISTEN", "127.0.0.1:0")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST"),
    );
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("no usable Kubernetes client configuration"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_endpoint_without_a_scheme_is_dialled_over_http() {
    let counter = start_counter("memory", &[]);
    let gateway = start_gateway(&counter.addr("grpc").to_string(), &[]);
    let http = Http::new(gateway.http_base());
    let body = json!({"resource_id": unique("bare"), "counter_type": "likes", "delta": 2});
    let (status, response) = http.post("/api/v1/counter/increment", body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["data"]["current_value"], 2, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_endpoint_of_another_scheme_refuses_to_start_clearly() {
    let output = tally_testkit::output_on_exit(
        std::process::Command::new(env!("CARGO_BIN_EXE_tally-gateway"))
            .env("TALLY_LISTEN", "127.0.0.1:0")
            .env("TALLY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("TALLY_COUNTER_ENDPOINTS", "grpc://127.0.0.1:9001"),
    );
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("the scheme must be http:// or https://"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_counter_sends_away_when_quiet_are_reopened_without_a_failed_request() {
    let redis = common::RedisServer::start();
    let counter = start_counter(&redis.url(), &[("TALLY_GRPC_IDLE_TIMEOUT_MS", "1000")]);
    common::wait_store_up(&counter);
    // Coalesced (over batch streams) and unary calls alike; health checks
    // rare enough to leave connections quiet.
    let gateway = start_gateway(&counter.grpc_endpoint(), &[("TALLY_HEALTH_INTERVAL_MS", "60000")]);
    let http = Http::new(gateway.http_base());
    let post = unique("quiet");
    let increment = |delta: i64| json!({"resource_id": post, "counter_type": "likes", "delta": delta});
    for _ in 0..20 {
        let (status, body) = http.post("/api/v1/counter/increment", increment(1)).await;
        assert_eq!(status, 200, "{body}");
    }
    // The counter sends a quiet connection of the gateway's away.
    common::metric_reaches(
        &counter.admin_base(),
        "tally_counter_grpc_connections_idle_closed_total",
        &[],
        "a quiet gateway connection sent away",
        |closed| closed >= 1.0,
    )
    .await;
    let writes = (0..64).map(|_| {
        let http = http.clone();
        let body = increment(2);
        async move { http.post("/api/v1/counter/increment", body).await }
    });
    for (status, body) in futures_util::future::join_all(writes).await {
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = http.get(&format!("/api/v1/counter/{post}/likes")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]), "148", "each counted exactly once");
}
