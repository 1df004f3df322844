//! Live settings through the settings file, as the operator's mounted
//! ConfigMap delivers them: real redis-server, tally-counter and
//! tally-gateway processes; the file is replaced whole while increments run,
//! and every change is observed from outside (backend view, metrics, log),
//! with no failed request and the same process throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Http, RedisServer, metric, start_counter, start_gateway, unique};
use serde_json::{Value, json};
use tally_runtime::log_events::{SETTINGS_APPLIED, SETTINGS_REFUSED};
use tally_testkit::SettingsFile;

/// Increments sent by `tasks` loops until `stop`: (acknowledged, failed).
fn load(http: &Http, resource: &str, tasks: usize, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..tasks)
        .map(|_| {
            let (http, stop, resource) = (http.clone(), stop.clone(), resource.to_string());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"resource_id": resource, "counter_type": "likes", "delta": 1});
                    match http.post("/api/v1/counter/increment", body).await.0 {
                        200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn backends(admin: &Http) -> Value {
    let (status, body) = admin.get("/api/v1/system/backends").await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn settings_view(admin: &Http) -> Value {
    let (status, body) = admin.get("/api/v1/system/settings").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_settings_apply_under_load_and_a_bad_version_is_refused() {
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    let base = [("TALLY_POOL_SIZE", "2"), ("TALLY_LB_POLICY", "round_robin"), ("TALLY_CACHE_TTL_MS", "60000")];
    let file = SettingsFile::new(&base);
    let path = file.env_value();
    let gateway = start_gateway(
        &counter.grpc_endpoint(),
        &[("TALLY_SETTINGS_FILE", path.as_str()), ("TALLY_SETTINGS_RELOAD_MS", "100"), ("TALLY_WORKER_THREADS", "2")],
    );
    let (http, admin) = (Http::new(gateway.http_base()), Http::new(gateway.admin_base()));
    let admin_base = gateway.admin_base();
    let view = settings_view(&admin).await;
    assert_eq!(view["file"], json!(path));
    assert!(view["refused"].is_null());
    assert_eq!(backends(&admin).await["endpoints"][0]["pool_size"], 2);

    let resource = unique("live");
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(&http, &resource, 4, &stop);

    // Pool size and balancing policy: the backend view shows the new ones.
    file.write(&[("TALLY_POOL_SIZE", "6"), ("TALLY_LB_POLICY", "least_request"), ("TALLY_CACHE_TTL_MS", "60000")]);
    let applied = gateway.wait_for_log("the first reload", |l| l.contains(SETTINGS_APPLIED));
    assert!(applied.contains("TALLY_LB_POLICY,TALLY_POOL_SIZE"), "{applied}");
    let now = backends(&admin).await;
    assert_eq!(
        (now["endpoints"][0]["pool_size"].clone(), now["load_balancing"].clone()),
        (json!(6), json!("least_request"))
    );

    // Coalescing bound: with at most one increment per call, every batch
    // sent from then on carries one (the histogram's sum grows with its count).
    file.write(&[
        ("TALLY_POOL_SIZE", "6"),
        ("TALLY_LB_POLICY", "least_request"),
        ("TALLY_CACHE_TTL_MS", "60000"),
        ("TALLY_COALESCE_MAX_OPS", "1"),
    ]);
    gateway
        .wait_for_log("the coalescing bound", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_COALESCE_MAX_OPS"));
    // Both from one scrape: batches go on being sent between two.
    let batches = || async {
        let text = reqwest::get(format!("{admin_base}/metrics")).await.expect("scrape").text().await.expect("text");
        let series = |name| tally_testkit::prometheus::sum(&text, name, &[]).unwrap_or(0.0);
        (series("tally_gateway_coalesced_operations_count"), series("tally_gateway_coalesced_operations_sum"))
    };
    // Batches keep coming while the loaders run; a stalled load fails here.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let settled = batches().await.0 + 10.0;
    while batches().await.0 < settled {
        assert!(tokio::time::Instant::now() < deadline, "no batches sent after the change");
    }
    let before = batches().await;
    let mut after = batches().await;
    while after.0 < before.0 + 50.0 {
        assert!(tokio::time::Instant::now() < deadline, "no batches sent after the change");
        after = batches().await;
    }
    assert_eq!(after.1 - before.1, after.0 - before.0, "one increment per batch: {before:?} → {after:?}");

    // Cache TTL: reads hit the cache, then, with the TTL at 0, none does
    // (of a counter no write is in flight on, which the cache would skip).
    let quiet = unique("quiet");
    let once = json!({"resource_id": quiet, "counter_type": "likes", "delta": 1});
    assert_eq!(http.post("/api/v1/counter/increment", once).await.0, 200);
    let read = format!("/api/v1/counter/{quiet}/likes");
    for _ in 0..3 {
        assert_eq!(http.get(&read).await.0, 200);
    }
    let hits = metric(&admin_base, "tally_gateway_cache_lookups_total", &["hit"]).await;
    assert!(hits >= 1.0, "a 60 s cache serves repeated reads");
    file.write(&[("TALLY_POOL_SIZE", "6"), ("TALLY_LB_POLICY", "least_request"), ("TALLY_CACHE_TTL_MS", "0")]);
    gateway.wait_for_log("the cache change", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_CACHE_TTL_MS"));
    for _ in 0..3 {
        assert_eq!(http.get(&read).await.0, 200);
    }
    assert_eq!(metric(&admin_base, "tally_gateway_cache_lookups_total", &["hit"]).await, hits, "caching is off");

    // The log filter: the access log (debug) appears.
    let debug = [("TALLY_POOL_SIZE", "6"), ("TALLY_CACHE_TTL_MS", "0"), ("RUST_LOG", "info,tally_gateway::api=debug")];
    file.write(&debug);
    gateway.wait_for_log("the log filter change", |l| l.contains(SETTINGS_APPLIED) && l.contains("RUST_LOG"));
    gateway.wait_for_log("an access log line", |l| l.contains("DEBUG") && l.contains("route="));

    // A version that would not start is refused whole: nothing of it applies.
    file.write(&[("TALLY_POOL_SIZE", "3"), ("TALLY_COALESCE_MAX_OPS", "0")]);
    let refused = gateway.wait_for_log("the refusal", |l| l.contains(SETTINGS_REFUSED));
    assert!(refused.contains("TALLY_COALESCE_MAX_OPS"), "{refused}");
    assert_eq!(
        backends(&admin).await["endpoints"][0]["pool_size"],
        6,
        "the valid line of a refused version is not applied"
    );
    let view = settings_view(&admin).await;
    assert!(view["refused"].as_str().is_some_and(|r| r.contains("TALLY_COALESCE_MAX_OPS")), "{view}");
    assert_eq!(metric(&admin_base, "tally_gateway_settings_refused", &[]).await, 1.0);
    assert_eq!(metric(&admin_base, "tally_gateway_settings_reloads_total", &["refused"]).await, 1.0);
    file.write_raw("TALLY_POOL_SIZE 3\n");
    gateway.wait_for_log("a syntax error", |l| l.contains(SETTINGS_REFUSED) && l.contains("line 1"));

    // A restart-only setting keeps its value and is reported pending; the
    // live ones of the same version apply.
    // A name this gateway does not know (a newer operator's) is ignored.
    file.write(&[("TALLY_POOL_SIZE", "4"), ("TALLY_LISTEN", "127.0.0.1:1"), ("TALLY_NOT_YET_A_SETTING", "1")]);
    gateway.wait_for_log("the mixed version", |l| {
        l.contains(SETTINGS_APPLIED) && l.contains("restart_pending=TALLY_LISTEN")
    });
    let view = settings_view(&admin).await;
    assert!(view["refused"].is_null(), "a version applied clears the refusal: {view}");
    assert_eq!(view["restart_pending"], json!(["TALLY_LISTEN"]));
    assert_eq!(view["ignored"], json!(["TALLY_NOT_YET_A_SETTING"]));
    assert_eq!(view["in_force"], json!(tally_runtime::settings_file::digest(&std::fs::read(file.path()).unwrap())));
    assert_eq!(metric(&admin_base, "tally_gateway_settings_refused", &[]).await, 0.0);
    assert_eq!(metric(&admin_base, "tally_gateway_settings_restart_pending", &[]).await, 1.0);
    assert_eq!(backends(&admin).await["endpoints"][0]["pool_size"], 4, "two workers, two connections each");

    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut failed) = (0, 0);
    for loader in loaders {
        let (ok, bad) = loader.await.expect("load task");
        acknowledged += ok;
        failed += bad;
    }
    assert_eq!(failed, 0, "no request failed while settings changed");
    assert!(acknowledged > 0);
    let stored: u64 = redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "likes"]).trim().parse().expect("stored");
    assert_eq!(stored, acknowledged, "every acknowledged increment stored once");
    let (status, _) = http.get("/api/v1/health").await;
    assert_eq!(status, 200, "the same process serves on its old port");
}

/// Reads through a gateway in front of two counters, one of them hung
/// (SIGSTOP) and never health-checked again: only the breaker can eject it.
/// Every read succeeds (a read that timed out on the hung counter is
/// retried on the other); the breaker's threshold decides when it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_breaker_threshold_ejects_a_hung_counter_that_the_old_one_tolerated() {
    let redis = RedisServer::start();
    let counters = [start_counter(&redis.url(), &[]), start_counter(&redis.url(), &[])];
    counters.iter().for_each(common::wait_store_up);
    let endpoints: Vec<String> = counters.iter().map(|c| c.grpc_endpoint()).collect();
    let file = SettingsFile::new(&[("TALLY_BREAKER_FAILURES", "1000"), ("TALLY_CACHE_TTL_MS", "0")]);
    let path = file.env_value();
    let gateway = start_gateway(
        &endpoints.join(","),
        &[
            ("TALLY_SETTINGS_FILE", path.as_str()),
            ("TALLY_SETTINGS_RELOAD_MS", "100"),
            ("TALLY_HEALTH_INTERVAL_MS", "60000"),
            ("TALLY_REQUEST_TIMEOUT_MS", "300"),
            ("TALLY_COALESCE", "false"),
        ],
    );
    gateway.wait_for_log("both endpoints warm", |l| l.contains("healthy=true"));
    let (http, admin) = (Http::new(gateway.http_base()), Http::new(gateway.admin_base()));
    let resource = unique("breaker");
    let once = json!({"resource_id": resource, "counter_type": "likes", "delta": 1});
    assert_eq!(http.post("/api/v1/counter/increment", once).await.0, 200);
    let hung = endpoints[1].clone();
    counters[1].signal("-STOP");
    let read = format!("/api/v1/counter/{resource}/likes");
    let breaker_of_hung = || async {
        let view = backends(&admin).await;
        let endpoints = view["endpoints"].as_array().cloned().unwrap_or_default();
        let entry = endpoints.into_iter().find(|e| e["address"] == hung.as_str()).expect("the hung endpoint");
        entry["breaker"].as_str().unwrap_or_default().to_string()
    };
    for i in 0..10 {
        let (status, body) = http.get(&read).await;
        assert_eq!(status, 200, "read {i}: {body}");
    }
    assert_eq!(breaker_of_hung().await, "closed", "1000 failures tolerated");

    file.write(&[("TALLY_BREAKER_FAILURES", "2"), ("TALLY_CACHE_TTL_MS", "0")]);
    gateway.wait_for_log("the new threshold", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_BREAKER_FAILURES"));
    let mut reads = 0;
    while breaker_of_hung().await != "open" {
        let (status, body) = http.get(&read).await;
        assert_eq!(status, 200, "read {reads} after the change: {body}");
        reads += 1;
        assert!(reads <= 20, "the breaker did not open at the new threshold");
    }
    gateway
        .wait_for_log("the ejection", |l| l.contains(tally_runtime::log_events::BREAKER_CHANGED) && l.contains("open"));
    counters[1].signal("-CONT");
}

/// The cap on requests in flight, lowered and raised live: while one
/// request waits on a hung counter, a cap of 1 sheds the others at once;
/// raised again, the same burst is served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_cap_is_lowered_and_raised_live() {
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    common::wait_store_up(&counter);
    let file = SettingsFile::new(&[("TALLY_MAX_IN_FLIGHT", "1")]);
    let path = file.env_value();
    let gateway = start_gateway(
        &counter.grpc_endpoint(),
        &[
            ("TALLY_SETTINGS_FILE", path.as_str()),
            ("TALLY_SETTINGS_RELOAD_MS", "100"),
            ("TALLY_HEALTH_INTERVAL_MS", "60000"),
            ("TALLY_REQUEST_TIMEOUT_MS", "1000"),
        ],
    );
    let (http, admin_base) = (Http::new(gateway.http_base()), gateway.admin_base());
    let burst = |n: usize| {
        let futures: Vec<_> = (0..n)
            .map(|_| {
                let http = http.clone();
                let body = json!({"resource_id": unique("cap"), "counter_type": "likes", "delta": 1});
                tokio::spawn(async move { http.post("/api/v1/counter/increment", body).await.0 })
            })
            .collect();
        async move {
            let mut statuses = Vec::new();
            for f in futures {
                statuses.push(f.await.expect("request task"));
            }
            statuses
        }
    };
    counter.signal("-STOP");
    let statuses = burst(10).await;
    counter.signal("-CONT");
    let shed = metric(&admin_base, "tally_gateway_requests_shed_total", &["in_flight"]).await;
    assert!(shed >= 5.0, "a cap of 1 sheds most of a burst while one request waits: {statuses:?}");
    let unavailable = statuses.iter().filter(|s| **s == 503).count() as f64;
    assert!(unavailable >= shed, "each shed request answered 503: {statuses:?}");

    file.write(&[("TALLY_MAX_IN_FLIGHT", "4096")]);
    gateway.wait_for_log("the raised cap", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_MAX_IN_FLIGHT"));
    let statuses = burst(10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(metric(&admin_base, "tally_gateway_requests_shed_total", &["in_flight"]).await, shed);
}

/// The trace sampling ratio, changed live: the gateway exports to an
/// in-process OTLP receiver (**a test double for Jaeger**); at ratio 0 no
/// request of an untrusted caller is traced, at ratio 1 every one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_ratio_changes_live() {
    let receiver = tally_testkit::OtlpReceiver::start().await;
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    let file = SettingsFile::new(&[("OTEL_TRACES_SAMPLER_ARG", "0")]);
    let (path, endpoint) = (file.env_value(), receiver.endpoint());
    let gateway = start_gateway(
        &counter.grpc_endpoint(),
        &[
            ("TALLY_SETTINGS_FILE", path.as_str()),
            ("TALLY_SETTINGS_RELOAD_MS", "100"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let client = reqwest::Client::new();
    let base = gateway.http_base();
    // Unsampled callers' trace ids: the gateway's own sampler decides, and
    // continues the caller's trace when it samples.
    let send = |phase: u8| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut traces = Vec::new();
            for n in 0..10u8 {
                let trace = format!("{phase:02x}{n:02x}{}", "ab".repeat(14));
                let response = client
                    .post(format!("{base}/api/v1/counter/increment"))
                    .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-00"))
                    .json(&json!({"resource_id": unique("sampled"), "counter_type": "likes"}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status().as_u16(), 200);
                traces.push(trace);
            }
            traces
        }
    };
    let unsampled = send(1).await;
    file.write(&[("OTEL_TRACES_SAMPLER_ARG", "1")]);
    gateway.wait_for_log("the new ratio", |l| l.contains(SETTINGS_APPLIED) && l.contains("OTEL_TRACES_SAMPLER_ARG"));
    let sampled = send(2).await;
    let spans = receiver
        .wait_until(std::time::Duration::from_secs(20), |spans| {
            sampled.iter().all(|t| spans.iter().any(|s| &s.trace_id == t && s.service == "tally-gateway"))
        })
        .await;
    assert!(sampled.iter().all(|t| spans.iter().any(|s| &s.trace_id == t)), "ratio 1 traces every request");
    assert!(!spans.iter().any(|s| unsampled.contains(&s.trace_id)), "ratio 0 traced none");
}
