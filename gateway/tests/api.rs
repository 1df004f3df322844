//! The HTTP API end to end: real redis-server → tally-counter → tally-gateway.

mod common;

use std::collections::HashSet;

use common::{Http, Stack, start_gateway, unique};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_in_the_documented_shape() {
    let stack = Stack::start(&[]);
    let http = &stack.http;
    let post = unique("post");

    // Increment: delta omitted → 1; the fields the original clients read.
    let (status, body) =
        http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["resource_id"], post.as_str());
    assert_eq!(body["data"]["counter_type"], "likes");
    assert_eq!(body["data"]["current_value"], 1);
    let (_, body) = http
        .post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes", "delta": -3}))
        .await;
    assert_eq!(body["data"]["current_value"], -2);

    // GET, including a resource id with '/' and a counter never written.
    assert_eq!(http.value(&post, "likes").await, -2);
    let (status, body) = http.get(&format!("/api/v1/counter/{post}/never")).await;
    assert_eq!(
        (status, body["status"].clone(), body["data"]["current_value"].clone()),
        (200, json!("success"), json!(0))
    );

    // Sync batch: per-operation results in order.
    let nested = format!("{post}/comments/7");
    let ops = json!({"operations": [
        {"resource_id": post, "counter_type": "views", "delta": 10},
        {"resource_id": nested, "counter_type": "likes", "delta": 2},
        {"resource_id": post, "counter_type": "views", "delta": 5},
    ]});
    let (status, body) = http.post("/api/v1/counter/batch-increment", ops).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let values: Vec<i64> =
        body["data"]["results"].as_array().unwrap().iter().map(|r| r["current_value"].as_i64().unwrap()).collect();
    assert_eq!(values, vec![10, 2, 15]);
    assert!(body["data"]["results"].as_array().unwrap().iter().all(|r| r["status"] == "success"));
    assert_eq!(http.value(&nested, "likes").await, 2);

    // Async batch: 202 once accepted.
    let ops = json!({"operations": [{"resource_id": post, "counter_type": "shares", "delta": 4}], "async": true});
    let (status, body) = http.post("/api/v1/counter/batch-increment", ops).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["accepted"], 1);

    // Batch get: one result per item, in order.
    let items = json!({"items": [
        {"resource_id": post, "counter_type": "views"},
        {"resource_id": post, "counter_type": "likes"},
        {"resource_id": unique("nobody"), "counter_type": "likes"},
    ]});
    let (status, body) = http.post("/api/v1/counter/batch", items).await;
    assert_eq!(status, 200, "{body}");
    let values: Vec<i64> =
        body["data"]["results"].as_array().unwrap().iter().map(|r| r["current_value"].as_i64().unwrap()).collect();
    assert_eq!(values, vec![15, -2, 0]);

    // Operational endpoints.
    let (status, body) = http.get("/api/v1/health").await;
    assert_eq!((status, body["status"].clone()), (200, json!("healthy")));
    let (status, body) = Http::new(stack.gateway.admin_base()).get("/ready").await;
    assert_eq!((status, body["status"].clone(), body["healthy_endpoints"].clone()), (200, json!("ready"), json!(1)));
    let (status, body) = Http::new(stack.gateway.admin_base()).get("/api/v1/system/backends").await;
    assert_eq!(status, 200);
    let endpoint = &body["data"]["endpoints"][0];
    assert_eq!(endpoint["address"], stack.counter.grpc_endpoint().as_str());
    assert_eq!((endpoint["healthy"].clone(), endpoint["pool_size"].clone()), (json!(true), json!(20)));
    let metrics = reqwest::get(format!("{}/metrics", stack.gateway.admin_base())).await.unwrap().text().await.unwrap();
    for name in [
        r#"tally_gateway_http_requests_total{route="/api/v1/counter/increment",method="POST",status="200"} 2"#,
        "tally_gateway_upstream_requests_total",
        "tally_gateway_coalesced_operations_count",
        r#"tally_gateway_cache_lookups_total{result="miss"}"#,
        "tally_gateway_endpoint_healthy{endpoint=",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_increments_count_exactly() {
    // The original performance plan's `hey -n 10000 -c 100` of delta 1 on one key, as a test.
    let stack = Stack::start(&[]);
    let post = unique("hey");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let http = stack.http.clone();
        let post = post.clone();
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::new();
            for _ in 0..100 {
                let body = json!({"resource_id": post, "counter_type": "likes", "delta": 1});
                let (status, body) = http.post("/api/v1/counter/increment", body).await;
                assert_eq!(status, 200, "{body}");
                values.push(body["data"]["current_value"].as_i64().expect("value"));
            }
            values
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for value in task.await.expect("task") {
            assert!(seen.insert(value), "value {value} returned twice");
        }
    }
    // Every response had its own value: exactly 1..=10000, no gaps.
    assert_eq!(seen, (1..=10_000).collect::<HashSet<i64>>());
    assert_eq!(stack.http.value(&post, "likes").await, 10_000);
    let stored = stack.redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]);
    assert_eq!(stored, "10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_error_and_writes_nothing() {
    let stack = Stack::start(&[]);
    let http = &stack.http;
    let good = unique("good");
    let long_id = "r".repeat(129);
    let too_many: Vec<Value> =
        (0..1001).map(|i| json!({"resource_id": good, "counter_type": format!("c{i}"), "delta": 1})).collect();
    let mut big = br#"{"resource_id":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 2 << 20));
    big.extend(br#"","counter_type":"likes"}"#);

    let inc = "/api/v1/counter/increment";
    let batch = "/api/v1/counter/batch-increment";
    // (case, method, path, body, expected status, expected error code)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", "POST", inc, Some(b"{\"resource_id\": ".to_vec()), 400, "invalid_argument"),
        ("not an object", "POST", inc, Some(b"[1,2]".to_vec()), 400, "invalid_argument"),
        ("empty body", "POST", inc, Some(Vec::new()), 400, "invalid_argument"),
        ("wrong type", "POST", inc, Some(json!({"resource_id": 5, "counter_type": "likes"}).to_string().into()), 400, "invalid_argument"),
        ("delta as string", "POST", inc, Some(json!({"resource_id": good, "counter_type": "likes", "delta": "1"}).to_string().into()), 400, "invalid_argument"),
        ("fractional delta", "POST", inc, Some(br#"{"resource_id":"x","counter_type":"likes","delta":1.5}"#.to_vec()), 400, "invalid_argument"),
        ("delta beyond i64", "POST", inc, Some(br#"{"resource_id":"x","counter_type":"likes","delta":9223372036854775808}"#.to_vec()), 400, "invalid_argument"),
        ("missing counter_type", "POST", inc, Some(json!({"resource_id": good}).to_string().into()), 400, "invalid_argument"),
        ("empty resource_id", "POST", inc, Some(json!({"resource_id": "", "counter_type": "likes"}).to_string().into()), 400, "invalid_argument"),
        ("resource_id too long", "POST", inc, Some(json!({"resource_id": long_id, "counter_type": "likes"}).to_string().into()), 400, "invalid_argument"),
        ("bad characters", "POST", inc, Some(json!({"resource_id": "a b", "counter_type": "likes"}).to_string().into()), 400, "invalid_argument"),
        ("upper-case type", "POST", inc, Some(json!({"resource_id": good, "counter_type": "Likes"}).to_string().into()), 400, "invalid_argument"),
        ("zero delta", "POST", inc, Some(json!({"resource_id": good, "counter_type": "likes", "delta": 0}).to_string().into()), 400, "invalid_argument"),
        ("2 MiB body", "POST", inc, Some(big), 413, "payload_too_large"),
        ("1001 operations", "POST", batch, Some(json!({"operations": too_many}).to_string().into()), 413, "payload_too_large"),
        ("empty batch", "POST", batch, Some(json!({"operations": []}).to_string().into()), 400, "invalid_argument"),
        ("one bad operation", "POST", batch, Some(json!({"operations": [{"resource_id": good, "counter_type": "likes", "delta": 1}, {"resource_id": good, "counter_type": "likes", "delta": 0}]}).to_string().into()), 400, "invalid_argument"),
        ("bad async batch", "POST", batch, Some(json!({"operations": [{"resource_id": "", "counter_type": "likes"}], "async": true}).to_string().into()), 400, "invalid_argument"),
        ("bad batch get", "POST", "/api/v1/counter/batch", Some(json!({"items": [{"resource_id": good}]}).to_string().into()), 400, "invalid_argument"),
        ("bad GET key", "GET", "/api/v1/counter/a%20b/likes", None, 400, "invalid_argument"),
        ("path not UTF-8", "GET", "/api/v1/counter/a%FFb/likes", None, 400, "invalid_argument"),
        ("unknown field (typo)", "POST", inc, Some(json!({"resource_id": good, "counter_type": "likes", "dleta": 5}).to_string().into()), 400, "invalid_argument"),
        ("unknown batch field", "POST", batch, Some(json!({"operations": [{"resource_id": good, "counter_type": "likes"}], "asnyc": true}).to_string().into()), 400, "invalid_argument"),
        ("deeply nested JSON", "POST", inc, Some(format!("{{\"resource_id\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()), 400, "invalid_argument"),
        ("DELETE without type", "DELETE", "/api/v1/counter/onlyone", None, 404, "not_found"),
        ("PUT on a counter", "PUT", "/api/v1/counter/onlyone/likes", None, 405, "method_not_allowed"),
        ("unknown path", "GET", "/api/v2/nothing", None, 404, "not_found"),
        ("wrong method", "DELETE", inc, None, 405, "method_not_allowed"),
        ("GET on a POST route", "GET", batch, None, 405, "method_not_allowed"),
    ];
    for (case, method, path, body, want_status, want_code) in cases {
        let (status, body) = http.send(method, path, body).await;
        assert_eq!(status, want_status, "{case}: {body}");
        assert_eq!(body["status"], "error", "{case}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{case}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {body}");
    }
    // A typo names the offending field.
    let typo = json!({"resource_id": good, "counter_type": "likes", "dleta": 5}).to_string().into_bytes();
    let (_, body) = http.send("POST", inc, Some(typo)).await;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("dleta")), "{body}");

    // Overflow: 422, nothing applied.
    let max = json!({"resource_id": good, "counter_type": "big", "delta": i64::MAX});
    assert_eq!(http.post(inc, max.clone()).await.0, 200);
    let (status, body) = http.post(inc, json!({"resource_id": good, "counter_type": "big", "delta": 1})).await;
    assert_eq!((status, body["error"]["code"].clone()), (422, json!("out_of_range")), "{body}");
    assert_eq!(http.value(&good, "big").await, i64::MAX);

    // Nothing else was written by any rejected request.
    assert_eq!(http.value(&good, "likes").await, 0);
    assert_eq!(http.value(&good, "c0").await, 0);
    let keys = stack.redis.cli(&["HKEYS", &format!("tally:{{{good}}}")]);
    assert_eq!(keys, "big", "only the overflow test counter exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_counts_once_across_gateways() {
    let stack = Stack::start(&[]);
    let other = start_gateway(&stack.counter.grpc_endpoint(), &[]);
    let gateways = [stack.http.clone(), Http::new(other.http_base())];
    let post = unique("idem");
    let key = unique("key");

    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = gateways[i % 2].clone();
        let (post, key) = (post.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"resource_id": post, "counter_type": "likes", "delta": 7}).to_string();
            let client = reqwest::Client::new();
            let response = client
                .post(format!("{}/api/v1/counter/increment", http.base))
                .header("content-type", "application/json")
                .header("Idempotency-Key", key)
                .body(body)
                .send()
                .await
                .expect("send");
            let replay_header = response.headers().get("idempotent-replayed").is_some();
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body, replay_header)
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let (status, body, replay_header) = task.await.expect("task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["current_value"], 7, "every caller sees the first result: {body}");
        let replayed = body["data"]["replayed"] == true;
        assert_eq!(replayed, replay_header, "{body}");
        fresh += usize::from(!replayed);
    }
    assert_eq!(fresh, 1, "applied exactly once");
    assert_eq!(stack.redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]), "7");

    // The key may come in the body too (the original project's clients put
    // it there): same counter, same key → a replay.
    let (status, body) = stack
        .http
        .post(
            "/api/v1/counter/increment",
            json!({"resource_id": post, "counter_type": "likes", "idempotency_key": key}),
        )
        .await;
    assert_eq!((status, body["data"]["replayed"].clone()), (200, json!(true)), "{body}");
    let body_key = unique("body-key");
    for _ in 0..3 {
        let body = json!({"resource_id": post, "counter_type": "views", "delta": 2, "idempotency_key": body_key});
        assert_eq!(stack.http.post("/api/v1/counter/increment", body).await.0, 200);
    }
    assert_eq!(stack.redis.cli(&["HGET", &format!("tally:{{{post}}}"), "views"]), "2", "a body key counts once");
    // Header and body disagreeing is refused.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/counter/increment", stack.http.base))
        .header("Idempotency-Key", "one")
        .body(json!({"resource_id": post, "counter_type": "views", "idempotency_key": "two"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);

    // A malformed key is refused before anything is written.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/counter/increment", stack.http.base))
        .header("Idempotency-Key", "not valid")
        .body(json!({"resource_id": post, "counter_type": "likes"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(stack.redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]), "7");
}

/// The original project's requests as its scripts send them (a reset
/// before the run, curl with a body ending in a newline, `Items`
/// capitalised), answered with the fields
/// they read: `"success":true` (grepped for in the raw text), `timestamp`,
/// `updated_at`, `total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_projects_requests_get_the_answers_its_scripts_expect() {
    let stack = Stack::start(&[]);
    let base = &stack.http.base;
    let client = reqwest::Client::new();
    let post = unique("original");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    stack.redis.cli(&["HSET", &format!("tally:{{{post}}}"), "likes", "41"]); // left over from an earlier run
    // Its performance scripts reset the counter before a run.
    let (status, body) = stack.http.send("DELETE", &format!("/api/v1/counter/{post}/likes"), None).await;
    assert_eq!((status, body["data"]["previous_value"].clone()), (200, json!(41)), "{body}");
    assert_eq!(body["data"]["success"], true);
    let raw = client
        .post(format!("{base}/api/v1/counter/increment"))
        .header("content-type", "application/json")
        .body(format!("{{\"resource_id\": \"{post}\", \"counter_type\": \"likes\", \"delta\": 1}}\n"))
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), 200);
    let text = raw.text().await.expect("text");
    assert!(text.contains("\"success\":true"), "the integration script greps for it: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let timestamp = body["data"]["timestamp"].as_u64().expect("a timestamp");
    assert!(timestamp >= before && timestamp <= before + 60, "{timestamp} vs {before}");

    let (status, body) = stack
        .http
        .send(
            "POST",
            "/api/v1/counter/batch",
            Some(
                format!("{{\"Items\": [{{\"Resource_ID\": \"{post}\", \"Counter_Type\": \"likes\"}}]}}\n").into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total"], 1);
    assert_eq!(body["data"]["results"][0]["current_value"], 1);
    assert!(body["data"]["results"][0]["updated_at"].as_u64().is_some_and(|t| t >= before));

    let (_, body) = stack.http.get(&format!("/api/v1/counter/{post}/likes")).await;
    assert!(body["data"]["updated_at"].as_u64().is_some_and(|t| t >= before), "{body}");
    let (_, body) = stack.http.get("/api/v1/health").await;
    assert!(body["timestamp"].as_u64().is_some_and(|t| t >= before), "{body}");
    // Still refused: a key no spelling of a documented field matches.
    let (status, body) = stack.http.send("POST", "/api/v1/counter/batch", Some(br#"{"Itemz": []}"#.to_vec())).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_head_name_their_methods_and_label_metrics_by_template() {
    let stack = Stack::start(&[]);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", stack.http.base);

    // HEAD on a GET route: the GET answer's status and length, no body.
    let response = client.head(url("/api/v1/health")).send().await.expect("HEAD");
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["content-length"].to_str().expect("ascii").parse().expect("a length");
    assert!(length > 0, "the GET body's length");
    assert!(response.bytes().await.expect("body").is_empty());

    // A method the route does not serve: 405, and what it does serve.
    let cases = [
        ("GET", "/api/v1/counter/increment", "POST"),
        ("PUT", "/api/v1/counter/post:1/likes", "GET,HEAD,DELETE"),
        ("POST", "/api/v1/openapi.json", "GET,HEAD"),
    ];
    for (method, path, allow) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client.request(method.clone(), url(path)).send().await.expect("send");
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
    }

    // Metrics name the route template, never the raw path.
    let resource = unique("routes");
    assert_eq!(stack.http.get(&format!("/api/v1/counter/{resource}/likes")).await.0, 200);
    assert_eq!(stack.http.get("/api/v1/counter/").await.0, 404, "the counter routes need a path");
    let admin = stack.gateway.admin_base();
    assert_eq!(requests(&admin, "/api/v1/counter/{*path}", "GET", "200").await, 1.0);
    assert_eq!(requests(&admin, "/api/v1/counter/{*path}", "PUT", "405").await, 1.0);
    assert_eq!(requests(&admin, "/api/v1/counter/increment", "GET", "405").await, 1.0);
    assert_eq!(requests(&admin, "unmatched", "GET", "404").await, 1.0);
    assert_eq!(requests(&admin, "/api/v1/health", "HEAD", "200").await, 1.0);
}

/// Requests the gateway at `admin` counted with these labels.
async fn requests(admin: &str, route: &str, method: &str, status: &str) -> f64 {
    let filters = [format!("route=\"{route}\""), format!("method=\"{method}\""), format!("status=\"{status}\"")];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    common::metric(admin, "tally_gateway_http_requests_total", &filters).await
}
