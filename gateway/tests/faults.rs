//! Fault tests with real processes: three tally-counter processes on one
//! real Redis behind one gateway, under sustained concurrent load, while a
//! counter is killed (SIGKILL) or hangs (SIGSTOP). The figures (requests,
//! acknowledged, failed, error window) are printed for the report; run with
//! `--nocapture` to see them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, Service, free_port, metric, start_counter, start_gateway, unique};
use serde_json::json;
use tokio::sync::watch;

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 150;

struct Outcome {
    acknowledged: usize,
    failed: usize,
    first_error: Option<Instant>,
    last_error: Option<Instant>,
    slowest: Duration,
}

/// Drives CLIENTS × PER_CLIENT logical increments of 1. With `keyed`, every
/// logical increment has its own idempotency key and is retried until it
/// succeeds (up to 100 tries); without, a failure is counted and not retried.
async fn drive(base: String, post: String, keyed: bool, progress: watch::Sender<usize>) -> Outcome {
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (base, post, client, done, progress) =
            (base.clone(), post.clone(), client.clone(), done.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut out =
                Outcome { acknowledged: 0, failed: 0, first_error: None, last_error: None, slowest: Duration::ZERO };
            for i in 0..PER_CLIENT {
                let key = format!("{post}-{c}-{i}");
                for attempt in 0..100 {
                    let mut request = client
                        .post(format!("{base}/api/v1/counter/increment"))
                        .header("content-type", "application/json")
                        .body(json!({"resource_id": post, "counter_type": "likes", "delta": 1}).to_string());
                    if keyed {
                        request = request.header("Idempotency-Key", &key);
                    }
                    let started = Instant::now();
                    let ok = matches!(request.send().await, Ok(r) if r.status().is_success());
                    out.slowest = out.slowest.max(started.elapsed());
                    if ok {
                        out.acknowledged += 1;
                        break;
                    }
                    out.failed += 1;
                    let now = Instant::now();
                    out.first_error.get_or_insert(now);
                    out.last_error = Some(now);
                    if !keyed || attempt == 99 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await; // client back-off between retries
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress.send_replace(n);
            }
            out
        }));
    }
    let mut total =
        Outcome { acknowledged: 0, failed: 0, first_error: None, last_error: None, slowest: Duration::ZERO };
    for task in tasks {
        let out = task.await.expect("client task");
        total.acknowledged += out.acknowledged;
        total.failed += out.failed;
        total.first_error = match (total.first_error, out.first_error) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.last_error = total.last_error.max(out.last_error);
        total.slowest = total.slowest.max(out.slowest);
    }
    total
}

struct Cluster {
    redis: RedisServer,
    counters: Vec<Option<Service>>,
    listens: Vec<String>,
    gateway: Service,
}

fn cluster(gateway_env: &[(&str, &str)]) -> Cluster {
    let redis = RedisServer::start();
    let listens: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let counters: Vec<Option<Service>> =
        listens.iter().map(|l| Some(start_counter(&redis.url(), &[("TALLY_LISTEN", l)]))).collect();
    counters.iter().flatten().for_each(common::wait_store_up);
    let endpoints: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let gateway = start_gateway(&endpoints.join(","), gateway_env);
    for _ in 1..3 {
        gateway.wait_for_log("every endpoint warm", |l| l.contains("healthy=true"));
    }
    Cluster { redis, counters, listens, gateway }
}

fn stored(redis: &RedisServer, post: &str) -> i64 {
    redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]).parse().unwrap_or(0)
}

fn report(name: &str, out: &Outcome, stored: i64) {
    let window = match (out.first_error, out.last_error) {
        (Some(a), Some(b)) => (b - a).as_millis(),
        _ => 0,
    };
    println!(
        "FAULT {name}: logical={} acknowledged={} failed_attempts={} stored={stored} error_window_ms={window} slowest_ms={}",
        CLIENTS * PER_CLIENT,
        out.acknowledged,
        out.failed,
        out.slowest.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_idempotency_keys_counts_every_logical_increment_exactly_once() {
    let mut c = cluster(&[]);
    let post = unique("kill-keyed");
    let (tx, mut rx) = watch::channel(0);
    let load = tokio::spawn(drive(c.gateway.http_base(), post.clone(), true, tx));
    rx.wait_for(|n| *n >= CLIENTS * PER_CLIENT / 3).await.expect("progress");
    drop(c.counters[0].take()); // SIGKILL one counter mid-run
    let out = load.await.expect("load");
    let stored = stored(&c.redis, &post);
    report("kill -9, keyed", &out, stored);
    assert_eq!(out.acknowledged, CLIENTS * PER_CLIENT, "every logical increment was acknowledged in the end");
    assert_eq!(stored, (CLIENTS * PER_CLIENT) as i64, "nothing lost, nothing counted twice");

    // The restarted counter takes traffic again after warm-up.
    let restarted = start_counter(&c.redis.url(), &[("TALLY_LISTEN", &c.listens[0])]);
    c.gateway.wait_for_log("the restarted counter warm", |l| l.contains(&c.listens[0]) && l.contains("healthy=true"));
    let after = unique("after-restart");
    let (tx, _rx) = watch::channel(0);
    let out = drive(c.gateway.http_base(), after.clone(), false, tx).await;
    assert_eq!(out.failed, 0);
    let metrics =
        reqwest::get(format!("http://{}/metrics", restarted.addr("admin"))).await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tally_counter_grpc_requests_total{method=\"BatchIncrement\",code=\"OK\"}")),
        "the restarted counter got no traffic:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_without_keys_loses_nothing_acknowledged_and_counts_nothing_twice() {
    let mut c = cluster(&[]);
    let post = unique("kill-plain");
    let (tx, mut rx) = watch::channel(0);
    let load = tokio::spawn(drive(c.gateway.http_base(), post.clone(), false, tx));
    rx.wait_for(|n| *n >= CLIENTS * PER_CLIENT / 3).await.expect("progress");
    drop(c.counters[1].take());
    let out = load.await.expect("load");
    let stored = stored(&c.redis, &post);
    report("kill -9, no keys", &out, stored);
    assert!(stored >= out.acknowledged as i64, "an acknowledged increment was lost");
    assert!(stored <= (out.acknowledged + out.failed) as i64, "something was counted twice");
    assert!(out.failed <= CLIENTS * 2, "failures must stay bounded to the calls in flight at the kill: {}", out.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_counter_is_ejected_and_readmitted() {
    // Health checks effectively off: only the circuit breaker can eject it.
    let c = cluster(&[
        ("TALLY_REQUEST_TIMEOUT_MS", "500"),
        ("TALLY_BREAKER_RECOVERY_MS", "200"),
        ("TALLY_HEALTH_INTERVAL_MS", "60000"),
    ]);
    let post = unique("hang");
    let (tx, mut rx) = watch::channel(0);
    let load = tokio::spawn(drive(c.gateway.http_base(), post.clone(), true, tx));
    rx.wait_for(|n| *n >= CLIENTS * PER_CLIENT / 4).await.expect("progress");
    let hung = c.counters[2].as_ref().expect("counter");
    hung.signal("-STOP");
    let hung_endpoint = format!("http://{}", c.listens[2]);
    c.gateway.wait_for_log("the breaker of the hung counter open", |l| {
        l.contains(&hung_endpoint) && l.contains("state=\"open\"")
    });
    hung.signal("-CONT");
    c.gateway
        .wait_for_log("the breaker closed again", |l| l.contains(&hung_endpoint) && l.contains("state=\"closed\""));
    let out = load.await.expect("load");
    let stored = stored(&c.redis, &post);
    report("SIGSTOP/SIGCONT, keyed", &out, stored);
    assert_eq!(stored, (CLIENTS * PER_CLIENT) as i64, "nothing lost, nothing counted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_after_it_was_sent_is_retried_only_with_a_key() {
    // Redis hangs, so writes reach the counters and wait there; the gateway
    // gives up on each attempt after 300 ms. Once Redis resumes, every
    // attempt that was sent gets applied — unless the store deduplicates.
    let redis = RedisServer::start();
    let env = [("TALLY_STORE_TIMEOUT_MS", "10000")];
    let counters: Vec<Service> = (0..2).map(|_| start_counter(&redis.url(), &env)).collect();
    counters.iter().for_each(common::wait_store_up);
    let endpoints: Vec<String> = counters.iter().map(Service::grpc_endpoint).collect();
    let gateway = start_gateway(
        &endpoints.join(","),
        &[("TALLY_REQUEST_TIMEOUT_MS", "300"), ("TALLY_COALESCE", "false"), ("TALLY_HEALTH_INTERVAL_MS", "60000")],
    );
    gateway.wait_for_log("both endpoints warm", |l| l.contains("healthy=true"));
    let base = gateway.http_base();
    let admin = gateway.admin_base();
    let client = reqwest::Client::new();
    let send = |post: String, key: Option<&'static str>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut request = client
                .post(format!("{base}/api/v1/counter/increment"))
                .body(json!({"resource_id": post, "counter_type": "likes"}).to_string());
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            request.send().await.expect("send").status().as_u16()
        }
    };

    // Without a key: one attempt, 503, never resent.
    let plain = unique("timeout-plain");
    redis.signal("-STOP");
    let calls_before = metric(&admin, "tally_gateway_upstream_requests_total", &["Increment"]).await;
    assert_eq!(send(plain.clone(), None).await, 503);
    let calls = metric(&admin, "tally_gateway_upstream_requests_total", &["Increment"]).await - calls_before;
    assert_eq!(calls, 1.0, "a write with an unknown outcome and no key must not be resent");

    // With a key: resent (another endpoint), and counted once when Redis resumes.
    let keyed = unique("timeout-keyed");
    let retries_before = metric(&admin, "tally_gateway_retries_total", &["unknown"]).await;
    let status = send(keyed.clone(), Some("retry-me")).await;
    assert!(
        metric(&admin, "tally_gateway_retries_total", &["unknown"]).await > retries_before,
        "the keyed write was resent"
    );
    redis.signal("-CONT");
    let value = |post: &str| redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]);
    // Every attempt already sent now reaches Redis; ask again with the same
    // key until the counter answers (it replays the first result).
    let mut replay = 0;
    for _ in 0..50 {
        replay = send(keyed.clone(), Some("retry-me")).await;
        if replay == 200 {
            break;
        }
    }
    assert_eq!(replay, 200, "first attempt answered {status}");
    assert_eq!(value(&keyed), "1", "applied once however many attempts reached the store");
    // The keyless write was applied at most once too (it was sent once).
    let plain_value = value(&plain);
    assert!(plain_value.is_empty() || plain_value == "1", "plain write stored {plain_value:?}");
}
