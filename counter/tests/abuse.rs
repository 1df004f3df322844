//! Hostile gRPC clients against the real counter binary: huge messages, a
//! stream that never reads its responses, silent connections and a flood
//! above the connection cap, a slow client on the admin port, and a store
//! password that must not reach the logs. Each is bounded in time and
//! memory, and normal clients keep being served.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{CounterProcess, op, start_counter, unique};
use tally_proto::v1::{BatchIncrementRequest, IncrementRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn increment_ok(counter: &CounterProcess, resource: &str) {
    let mut client = common::client(counter).await;
    let request = IncrementRequest { resource_id: resource.into(), counter_type: "likes".into(), ..Default::default() };
    client.increment(request).await.expect("a normal client is served");
}

/// Waits until the server closes `stream` (EOF or reset); false after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_invalid_messages_are_refused_without_echo_or_growth() {
    let counter = start_counter("memory", &[]);
    let baseline = counter.rss_bytes();
    // 100 messages of 1 MiB (over the 512 KiB limit) on concurrent calls.
    let client = common::client(&counter).await;
    let huge: Vec<_> = (0..100)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let operations = vec![op(&"x".repeat(1 << 20), "likes", 1)];
                client.batch_increment(BatchIncrementRequest { operations, r#async: false, omit_names: false }).await
            })
        })
        .collect();
    for call in huge {
        let status = call.await.expect("task").expect_err("a 1 MiB message is refused");
        assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
        assert!(status.message().len() < 300, "no echo of the input: {} bytes", status.message().len());
    }
    // Under the limit but invalid: INVALID_ARGUMENT naming the field, not repeating it.
    let mut client = client.clone();
    let operations = vec![op(&"y".repeat(300 << 10), "likes", 1)];
    let status = client
        .batch_increment(BatchIncrementRequest { operations, r#async: false, omit_names: false })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("resource_id") && status.message().len() < 300, "{}", status.message());
    let grown = counter.rss_bytes().saturating_sub(baseline);
    assert!(grown < 64 * MIB, "grew by {} MiB", grown / MIB);
    increment_ok(&counter, &unique("after-huge")).await;
}

/// A client that sends increments on a stream and never reads the answers:
/// the counter stops reading once its bounded response queue is full, so
/// the client's sends stall instead of the counter's memory growing; and
/// SIGTERM still ends the process within the shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reads_is_bounded_and_does_not_hold_up_shutdown() {
    let counter = start_counter("memory", &[("TALLY_SHUTDOWN_TIMEOUT_MS", "2000")]);
    let baseline = counter.rss_bytes();
    let sent = Arc::new(AtomicU64::new(0));
    let resource = unique("never-reads");
    let counted = sent.clone();
    let requests = tokio_stream::iter(0..10_000_000u64).map(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        IncrementRequest { resource_id: resource.clone(), counter_type: "likes".into(), ..Default::default() }
    });
    let mut client = common::client(&counter).await;
    // The response stream is held, never polled.
    let responses = client.stream_increments(requests).await.expect("stream opened");
    // The client's sends must stall: the count stops moving.
    let mut last = 0;
    let mut stalled = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await; // observing that nothing moves is the point
        let now = sent.load(Ordering::Relaxed);
        if now == last && now > 0 {
            stalled = true;
            break;
        }
        last = now;
    }
    assert!(stalled, "the client kept sending ({last} requests): nothing pushes back");
    assert!(last < 1_000_000, "{last} requests were taken before the counter pushed back");
    let grown = counter.rss_bytes().saturating_sub(baseline);
    assert!(grown < 64 * MIB, "a stalled stream grew the counter by {} MiB", grown / MIB);
    increment_ok(&counter, &unique("beside-stalled")).await;

    let started = Instant::now();
    let (status, _) = tokio::task::spawn_blocking(move || counter.terminate()).await.expect("terminate");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "SIGTERM with a stalled stream took {took:?} (timeout 2 s)");
    drop(responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_time_out_and_a_flood_above_the_cap_is_closed() {
    let counter =
        start_counter("memory", &[("TALLY_GRPC_MAX_CONNECTIONS", "10"), ("TALLY_GRPC_HANDSHAKE_TIMEOUT_MS", "1000")]);
    let addr = counter.addr("grpc");
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let opened = Instant::now();
    // Every slot is taken: more connections are closed at once.
    for i in 0..50 {
        let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
        assert!(
            closed_within(&mut extra, Duration::from_millis(900)).await,
            "connection {i} above the cap stayed open"
        );
    }
    // The silent ones are closed once the handshake timeout passes.
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(closed_within(stream, Duration::from_secs(5)).await, "silent connection {i} stayed open");
    }
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "closed after {took:?}");
    // Slots are free again: a real client is served.
    increment_ok(&counter, &unique("after-flood")).await;
    for name in ["tally_counter_grpc_connections_rejected_total", "tally_counter_grpc_handshake_timeouts_total"] {
        let value = metric(&counter, name).await;
        assert!(value >= 10.0, "{name} = {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_cuts_slow_headers() {
    let counter = start_counter("memory", &[("TALLY_HTTP_HEADER_TIMEOUT_MS", "1000")]);
    let mut stream = TcpStream::connect(counter.addr("admin")).await.expect("connect");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("partial head");
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await, "the slow connection stayed open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "closed after {took:?}");
    let health = reqwest::get(format!("{}/health", counter.admin_base())).await.expect("health");
    assert_eq!(health.status(), 200);
}

/// A store URL's password never reaches the output, whether the URL is
/// unusable (the counter exits saying why) or the store is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_passwords_stay_out_of_the_logs() {
    let binary = env!("CARGO_BIN_EXE_tally-counter");
    // (URL, whether the error repeats the URL)
    let cases = [
        ("redis+cluster://:S3cret@", false),
        ("redis://:S3cret@127.0.0.1:notaport", true),
        ("rediss://user:S3cret@127.0.0.1:notaport", true),
        ("rediss+cluster://user:S3cret@", false),
    ];
    for (url, repeats_url) in cases {
        let out = tally_testkit::output_on_exit(
            Command::new(binary)
                .env("TALLY_STORE", url)
                .env("TALLY_LISTEN", "127.0.0.1:0")
                .env("TALLY_ADMIN_LISTEN", "127.0.0.1:0")
                .env("RUST_LOG", "debug"),
        );
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{url}: an unusable store URL must stop the counter:\n{text}");
        assert!(!text.contains("S3cret"), "{url}: the password was logged:\n{text}");
        assert!(text.contains("store configuration"), "{url}: says what is wrong:\n{text}");
        if repeats_url {
            assert!(text.contains("***@127.0.0.1"), "{url}: the error names the (masked) URL:\n{text}");
        }
    }
    // Usable URL, unreachable store: the readiness and request errors carry no password.
    let port = tally_testkit::free_port();
    let counter = start_counter(&format!("redis://:S3cret@127.0.0.1:{port}"), &[("RUST_LOG", "debug")]);
    let mut client = common::client(&counter).await;
    let request = IncrementRequest { resource_id: unique("pw"), counter_type: "likes".into(), ..Default::default() };
    let status = client.increment(request).await.expect_err("the store is down");
    assert!(!status.message().contains("S3cret"), "{}", status.message());
    counter.wait_for_log("the store probed as down", |l| l.contains("up=false"));
    let (_, lines) = tokio::task::spawn_blocking(move || counter.terminate()).await.expect("terminate");
    assert!(lines.iter().all(|l| !l.contains("S3cret")), "the password was logged:\n{}", lines.join("\n"));
}

/// The HTTP/2 preface and an empty SETTINGS frame: what a client sends
/// before its first call.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The value of one of the counter's metrics, scraped now.
async fn metric(counter: &CounterProcess, name: &str) -> f64 {
    let metrics = reqwest::get(format!("{}/metrics", counter.admin_base())).await.expect("scrape");
    let text = metrics.text().await.expect("text");
    tally_testkit::prometheus::sum(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing"))
}

const OPEN_CONNECTIONS: &str = "tally_counter_grpc_connections_open";

/// Scrapes the counter until its open gRPC connections are `wanted`: the
/// counter is another process, so this polls, bounded in time.
async fn open_connections_reach(counter: &CounterProcess, wanted: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(counter, OPEN_CONNECTIONS).await;
        if open == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {open} gRPC connections open, not {wanted}");
        tokio::time::sleep(Duration::from_millis(50)).await; // the next scrape
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_connections_are_sent_away_and_open_calls_keep_theirs() {
    let counter = start_counter("memory", &[("TALLY_GRPC_IDLE_TIMEOUT_MS", "1000")]);
    // A call stays open on this connection, sending nothing for a while.
    let mut client = common::client(&counter).await;
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let resource = unique("kept-open");
    let increment =
        || IncrementRequest { resource_id: resource.clone(), counter_type: "likes".into(), ..Default::default() };
    requests.send(increment()).await.expect("send");
    let mut answers =
        client.stream_increments(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    answers.next().await.expect("an answer").expect("applied");

    // A connection that never opens a call, nor acknowledges the GOAWAY's PING.
    let mut quiet = TcpStream::connect(counter.addr("grpc")).await.expect("connect");
    quiet.write_all(H2_HELLO).await.expect("hello");
    let opened = Instant::now();
    assert!(closed_within(&mut quiet, Duration::from_secs(10)).await, "a connection with no call stayed open");
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the 1 s idle timeout");

    // Much longer than the idle timeout since the stream's last message: still served.
    requests.send(increment()).await.expect("send");
    let answer = answers.next().await.expect("an answer").expect("applied on the kept connection");
    assert_eq!(answer.current_value, 2);
    assert_eq!(metric(&counter, OPEN_CONNECTIONS).await, 1.0);

    // The call ends: its connection is quiet from then on, and is closed.
    drop(requests);
    assert!(answers.next().await.is_none(), "the stream ends when its requests do");
    open_connections_reach(&counter, 0.0, "the connection after its last call").await;
    assert_eq!(metric(&counter, "tally_counter_grpc_connections_idle_closed_total").await, 2.0);
    // The client's channel connects again for its next call.
    let value = client.increment(increment()).await.expect("served after the GOAWAY").into_inner().current_value;
    assert_eq!(value, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_quiet_connections_costs_bounded_memory_and_is_sent_away() {
    const FLOOD: usize = 300;
    let counter = start_counter(
        "memory",
        &[("TALLY_GRPC_IDLE_TIMEOUT_MS", "2000"), ("TALLY_GRPC_MAX_CONNECTIONS", &FLOOD.to_string())],
    );
    increment_ok(&counter, &unique("before-flood")).await; // the runtime warm
    let baseline = counter.rss_bytes();
    let mut quiet = Vec::new();
    for _ in 0..FLOOD {
        let mut stream = TcpStream::connect(counter.addr("grpc")).await.expect("connect");
        stream.write_all(H2_HELLO).await.expect("hello");
        quiet.push(stream);
    }
    open_connections_reach(&counter, FLOOD as f64, "the flood taken").await;
    let grown = counter.rss_bytes().saturating_sub(baseline);
    eprintln!("{FLOOD} quiet HTTP/2 connections: {} KiB more RSS", grown / 1024);
    assert!(grown < 16 * MIB, "{FLOOD} quiet connections grew the counter by {} MiB", grown / MIB);
    let closes = quiet.iter_mut().map(|stream| closed_within(stream, Duration::from_secs(15)));
    let closed = futures_util::future::join_all(closes).await;
    assert!(
        closed.iter().all(|closed| *closed),
        "{} quiet connections stayed open",
        closed.iter().filter(|c| !**c).count()
    );
    increment_ok(&counter, &unique("after-flood")).await; // the slots are free again
}
