//! What happens around failures and shutdown, against real processes:
//! SIGTERM drains the write-behind buffer; a dead or hung Redis fails requests
//! fast with UNAVAILABLE and the service recovers without a restart; a full
//! buffer never drops an async write.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, CounterProcess, RedisServer, Stack, op, unique};
use tally_proto::v1::{BatchIncrementRequest, GetRequest, IncrementOperation, IncrementRequest};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A buffer that never flushes by itself: only shutdown (or a full buffer) empties it.
const HOLD_BUFFER: &[(&str, &str)] = &[("TALLY_FLUSH_INTERVAL_MS", "60000"), ("TALLY_BATCH_SIZE", "100000")];

/// Sends 100 async batches of 40 operations over 300 counters; returns the
/// expected total per resource id (counter type `views`).
async fn send_async_load(counter: &CounterProcess, prefix: &str) -> HashMap<String, i64> {
    let mut client = common::client(counter).await;
    let mut expected: HashMap<String, i64> = HashMap::new();
    for b in 0..100i64 {
        let operations: Vec<IncrementOperation> = (0..40i64)
            .map(|i| {
                let resource = format!("{prefix}-{}", (b * 40 + i) % 300);
                let delta = 1 + (b + i) % 9;
                *expected.entry(resource.clone()).or_default() += delta;
                op(&resource, "views", delta)
            })
            .collect();
        let response =
            client.batch_increment(BatchIncrementRequest { operations, r#async: true, omit_names: false }).await;
        assert!(response.expect("async batch").into_inner().accepted);
    }
    expected
}

fn stored(redis: &RedisServer, resource: &str) -> Option<i64> {
    redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "views"]).parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_acknowledged_async_write() {
    let redis = RedisServer::start();
    let counter = common::start_counter(&redis.url(), HOLD_BUFFER);
    let prefix = unique("drain");
    let expected = send_async_load(&counter, &prefix).await;

    // Still buffered: nothing in Redis yet.
    let early: Vec<(&String, Option<i64>)> =
        expected.keys().map(|r| (r, stored(&redis, r))).filter(|(_, v)| v.is_some()).collect();
    assert!(
        early.is_empty(),
        "the buffer flushed before shutdown: {early:?}; log:\n{}",
        counter.log_lines().join("\n")
    );

    let (status, log) = tokio::task::spawn_blocking(move || counter.terminate()).await.expect("terminate");
    assert!(status.success(), "exit status {status:?}");
    assert!(log.iter().any(|l| l.contains(tally_runtime::log_events::BUFFER_DRAINED)), "log:\n{}", log.join("\n"));
    for (resource, want) in &expected {
        assert_eq!(stored(&redis, resource), Some(*want), "{resource}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_store_that_comes_back() {
    let redis = RedisServer::start();
    let port = redis.port;
    let counter = common::start_counter(&redis.url(), HOLD_BUFFER);
    let prefix = unique("late");
    let expected = send_async_load(&counter, &prefix).await;

    // Redis goes away, then the counter is told to stop: it must keep the
    // acknowledged writes and retry until Redis is back.
    redis.kill();
    counter.signal("-TERM");
    counter.wait_for_log("a failed drain attempt", |l| l.contains(tally_runtime::log_events::DRAIN_RETRYING));
    let redis = RedisServer::start_on(port, &[]);
    let (status, log) = tokio::task::spawn_blocking(move || counter.wait()).await.expect("wait");
    assert!(status.success(), "exit status {status:?}\n{}", log.join("\n"));
    for (resource, want) in &expected {
        assert_eq!(stored(&redis, resource), Some(*want), "{resource}; counter log:\n{}", log.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_an_outage_logs_every_unconfirmed_delta_at_the_deadline() {
    let redis = RedisServer::start();
    let mut env = HOLD_BUFFER.to_vec();
    env.push(("TALLY_SHUTDOWN_TIMEOUT_MS", "1500"));
    let counter = common::start_counter(&redis.url(), &env);
    let prefix = unique("deadline");
    let expected = send_async_load(&counter, &prefix).await;

    // Redis is gone for good: the drain retries until the deadline, then
    // every acknowledged delta it could not apply is logged, not dropped silently.
    redis.kill();
    counter.signal("-TERM");
    let (status, log) = tokio::task::spawn_blocking(move || counter.wait()).await.expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let unconfirmed: Vec<&String> =
        log.iter().filter(|l| l.contains(tally_runtime::log_events::UNCONFIRMED_AT_SHUTDOWN)).collect();
    let mut logged: HashMap<String, i64> = HashMap::new();
    for line in &unconfirmed {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        let key = field("key").expect("the line names the counter");
        let delta: i64 = field("delta").and_then(|d| d.parse().ok()).expect("the line says the delta");
        *logged.entry(key.trim_end_matches("/views").to_string()).or_default() += delta;
    }
    assert_eq!(logged, expected, "every acknowledged delta is in the log, once");
}

async fn health_status(counter: &CounterProcess) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(counter.grpc_endpoint()).expect("endpoint").connect().await;
    let mut health = HealthClient::new(channel.expect("connect"));
    health
        .watch(HealthCheckRequest { service: "tally.counter.v1.CounterService".into() })
        .await
        .expect("watch")
        .into_inner()
}

async fn wait_for_health(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>, want: ServingStatus) {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        while let Some(update) = watch.next().await {
            if update.expect("health update").status == want as i32 {
                return;
            }
        }
        panic!("health watch ended");
    })
    .await
    .unwrap_or_else(|_| panic!("health did not become {want:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_without_restart() {
    let redis = RedisServer::start();
    let port = redis.port;
    let counter =
        common::start_counter(&redis.url(), &[("TALLY_STORE_TIMEOUT_MS", "300"), ("TALLY_HEALTH_INTERVAL_MS", "50")]);
    let mut client = common::client(&counter).await;
    let mut watch = health_status(&counter).await;
    wait_for_health(&mut watch, ServingStatus::Serving).await;
    let post = unique("outage");
    let inc = |delta| IncrementRequest {
        resource_id: post.clone(),
        counter_type: "likes".into(),
        delta: Some(delta),
        ..Default::default()
    };
    assert_eq!(client.increment(inc(1)).await.expect("before").into_inner().current_value, 1);

    // Dead Redis. The first request may still go out on the old connection
    // and fail with an unknown outcome (the client library cannot tell which
    // in-flight request a broken pipe hit); after that, connection refused →
    // UNAVAILABLE, marked as not applied, quickly.
    redis.kill();
    let first = client.increment(inc(1)).await.expect_err("redis is down");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    let started = Instant::now();
    let status = client.increment(inc(1)).await.expect_err("redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.metadata().get("tally-write-outcome").and_then(|v| v.to_str().ok()), Some("not-applied"));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let get = client.get(GetRequest { resource_id: post.clone(), counter_type: "likes".into() }).await;
    assert_eq!(get.expect_err("read while down").code(), Code::Unavailable);
    wait_for_health(&mut watch, ServingStatus::NotServing).await;

    // Back on the same port: the same counter process serves again.
    let redis = RedisServer::start_on(port, &[]);
    wait_for_health(&mut watch, ServingStatus::Serving).await;
    assert_eq!(client.increment(inc(5)).await.expect("after restart").into_inner().current_value, 5);

    // Hung Redis (SIGSTOP): requests fail after the store timeout instead of hanging.
    redis.signal("-STOP");
    let started = Instant::now();
    let status = client.increment(inc(1)).await.expect_err("redis is hung");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    wait_for_health(&mut watch, ServingStatus::NotServing).await;
    redis.signal("-CONT");
    wait_for_health(&mut watch, ServingStatus::Serving).await;
    // The hung increment's outcome was unknown; it may have applied once Redis resumed.
    let value = client.increment(inc(10)).await.expect("after SIGCONT").into_inner().current_value;
    assert!(value == 15 || value == 16, "value {value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_applies_synchronously_by_default() {
    let env = [("TALLY_BUFFER_CAPACITY", "10"), ("TALLY_FLUSH_INTERVAL_MS", "60000"), ("TALLY_BATCH_SIZE", "100000")];
    let stack = Stack::start(Backend::Memory, &env);
    let mut client = stack.client().await;
    let prefix = unique("full");
    let operations: Vec<IncrementOperation> = (0..20).map(|i| op(&format!("{prefix}-{i}"), "views", 3)).collect();
    let response = client.batch_increment(BatchIncrementRequest { operations, r#async: true, omit_names: false }).await;
    let response = response.expect("accepted").into_inner();
    assert!(response.accepted);
    assert_eq!(response.results.len(), 20, "applied synchronously, so results are known");
    // Applied before the answer, although the buffer never flushes here.
    let value = client.get(GetRequest { resource_id: format!("{prefix}-7"), counter_type: "views".into() }).await;
    assert_eq!(value.expect("get").into_inner().current_value, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_rejects_with_the_reject_policy() {
    let env = [
        ("TALLY_BUFFER_CAPACITY", "10"),
        ("TALLY_BUFFER_FULL_POLICY", "reject"),
        ("TALLY_FLUSH_INTERVAL_MS", "60000"),
        ("TALLY_BATCH_SIZE", "100000"),
    ];
    let stack = Stack::start(Backend::Memory, &env);
    let mut client = stack.client().await;
    let prefix = unique("reject");
    let operations: Vec<IncrementOperation> = (0..20).map(|i| op(&format!("{prefix}-{i}"), "views", 3)).collect();
    let status = client
        .batch_increment(BatchIncrementRequest { operations, r#async: true, omit_names: false })
        .await
        .expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let value = client.get(GetRequest { resource_id: format!("{prefix}-7"), counter_type: "views".into() }).await;
    assert_eq!(value.expect("get").into_inner().current_value, 0, "a refused batch wrote nothing");
    // A batch that fits is still buffered.
    let fits = vec![op(&prefix, "views", 1)];
    assert!(
        client
            .batch_increment(BatchIncrementRequest { operations: fits, r#async: true, omit_names: false })
            .await
            .is_ok()
    );
}

/// SIGTERM ends a `StreamBatchIncrements` stream with OK once every batch
/// it read is answered; a batch left unanswered was not applied, so a
/// client may send it elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_batch_stream_cleanly_and_unanswered_batches_were_not_applied() {
    let redis = RedisServer::start();
    let counter = common::start_counter(&redis.url(), &[]);
    let resource = unique("stream-end");
    let batch = |delta| BatchIncrementRequest { operations: vec![op(&resource, "views", delta)], ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut client = common::client(&counter).await;
    let mut answers = client.stream_batch_increments(requests).await.expect("stream opened").into_inner();
    tx.send(batch(1)).expect("send");
    let first = answers.message().await.expect("answer").expect("answered");
    assert_eq!(first.results[0].current_value, 1);

    counter.signal("-TERM");
    // Sent while the counter stops: it is either read and answered, or never read.
    for delta in [10, 100] {
        let _ = tx.send(batch(delta));
    }
    // The value after the last answered batch.
    let mut answered = 1;
    loop {
        match answers.message().await {
            Ok(Some(answer)) => answered = answer.results[0].current_value,
            Ok(None) => break,
            Err(status) => panic!("the stream should end OK on shutdown, not with {status:?}"),
        }
    }
    let (status, _) = tokio::task::spawn_blocking(move || counter.wait()).await.expect("exit");
    assert!(status.success(), "{status:?}");
    assert_eq!(stored(&redis, &resource), Some(answered), "exactly the answered batches were applied");
}

/// With `TALLY_SHUTDOWN_DELAY_MS`, SIGTERM first only turns health
/// NOT_SERVING: calls that clients send before their next health check are
/// still served and applied, instead of meeting a closed port. A second
/// SIGTERM cuts the delay short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_delay_turns_health_off_and_keeps_serving() {
    let redis = RedisServer::start();
    // Far longer than the test: only the second signal ends it in time.
    let env = [("TALLY_SHUTDOWN_DELAY_MS", "60000"), ("TALLY_SHUTDOWN_TIMEOUT_MS", "20000")];
    let counter = common::start_counter(&redis.url(), &env);
    let mut client = common::client(&counter).await;
    let mut watch = health_status(&counter).await;
    wait_for_health(&mut watch, ServingStatus::Serving).await;

    counter.signal("-TERM");
    wait_for_health(&mut watch, ServingStatus::NotServing).await;
    let post = unique("delayed-stop");
    let inc = IncrementRequest {
        resource_id: post.clone(),
        counter_type: "views".into(),
        delta: Some(3),
        ..Default::default()
    };
    let answer = client.increment(inc).await.expect("served during the delay").into_inner();
    assert_eq!(answer.current_value, 3);
    assert_eq!(stored(&redis, &post), Some(3), "applied, not only acknowledged");

    // The health watch stays open: it is ended at the stop, and does not
    // hold the shutdown up to its 20 s deadline.
    counter.signal("-TERM");
    let started = Instant::now();
    let ended = loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    drop(client);
    let exited = tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || counter.wait()));
    let (status, log) = exited.await.expect("the second SIGTERM ends the delay").expect("exit");
    assert!(status.success(), "{status:?}\n{}", log.join("\n"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}, as if waiting for the watch");
}

/// Calls `Increment` over a bare HTTP/2 connection with `grpc-timeout`
/// set, and returns the `grpc-status` and `grpc-message` answered. (A tonic
/// client enforces the header's deadline itself, and would answer first.)
async fn increment_with_grpc_timeout(
    counter: &CounterProcess,
    request: &IncrementRequest,
    timeout: &str,
) -> (String, String) {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(counter.addr("grpc")).await.expect("connect");
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let head =
        http::Request::post(format!("http://{}/tally.counter.v1.CounterService/Increment", counter.addr("grpc")))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(())
            .expect("request");
    let message = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (response, mut body) = send.send_request(head, false).expect("send");
    body.send_data(frame.into(), true).expect("send the message");
    let response = response.await.expect("answered");
    let (head, mut body) = response.into_parts();
    let mut fields = head.headers.clone();
    while let Some(data) = body.data().await {
        data.expect("body");
    }
    if let Some(trailers) = body.trailers().await.expect("trailers") {
        fields.extend(trailers);
    }
    let field = |name: &str| fields.get(name).map(|v| v.to_str().unwrap_or_default().to_string()).unwrap_or_default();
    (field("grpc-status"), field("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_grpc_timeout_bounds_it_on_the_counter() {
    let redis = RedisServer::start();
    let counter = common::start_counter(&redis.url(), &[]);
    let request =
        IncrementRequest { resource_id: unique("deadline"), counter_type: "likes".into(), ..Default::default() };
    let (status, message) = increment_with_grpc_timeout(&counter, &request, "5S").await;
    assert_eq!(status, "0", "within its deadline: {message}");

    // Hung Redis: the store's own timeout is longer than the call's deadline.
    redis.signal("-STOP");
    let started = Instant::now();
    let (status, message) = increment_with_grpc_timeout(&counter, &request, "300m").await;
    let took = started.elapsed();
    redis.signal("-CONT");
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string(), "{message}");
    assert!(message.contains("grpc-timeout"), "{message}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(1), "answered after {took:?}");
}
