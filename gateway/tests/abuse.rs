//! Hostile HTTP clients against the real gateway binary: slow headers, slow
//! bodies, idle and oversized connections, a connection flood above the cap
//! and more requests than the in-flight bound. Each is cut within its
//! timeout, the gateway's memory stays bounded, and a normal client keeps
//! being served meanwhile.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{PeakRss, Stack, metric, metric_reaches, retry_after, unique};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INC: &str = "/api/v1/counter/increment";
const MIB: u64 = 1 << 20;

/// Reads until the server closes the connection (EOF or reset) or `limit`
/// passes; everything read, and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a partial request head, then one more header byte every 200 ms
/// until the server closes the connection; how long that took (`None`: still
/// open after `limit`).
async fn slowloris(addr: SocketAddr, padding: usize, limit: Duration) -> Option<Duration> {
    // The clock starts before the connection does, so the server's (from
    // its accept) never starts earlier, however late this task resumes.
    let opened = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut head = b"POST /api/v1/counter/increment HTTP/1.1\r\nHost: tally\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', padding));
    if stream.write_all(&head).await.is_err() {
        return Some(opened.elapsed());
    }
    let mut buf = [0u8; 1024];
    while opened.elapsed() < limit {
        if stream.write_all(b"a").await.is_err() {
            return Some(opened.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

fn increment_body(resource: &str) -> serde_json::Value {
    json!({"resource_id": resource, "counter_type": "likes"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_the_header_timeout_while_others_are_served() {
    let stack = Stack::start(&[("TALLY_HTTP_HEADER_TIMEOUT_MS", "1000")]);
    let addr = stack.gateway.addr("http");
    let baseline = stack.gateway.rss_bytes();
    let rss = PeakRss::watch(stack.gateway.pid());
    // 300 connections, each holding a 32 KiB partial head and dribbling more.
    let slow: Vec<_> = (0..300).map(|_| tokio::spawn(slowloris(addr, 32 << 10, Duration::from_secs(10)))).collect();
    let resource = unique("slowloris");
    for i in 0..20 {
        let (status, body) = stack.http.post(INC, increment_body(&resource)).await;
        assert_eq!(status, 200, "normal request {i} during the attack: {body}");
    }
    for task in slow {
        let took = task.await.expect("task").expect("a slow connection was never closed");
        assert!(took >= Duration::from_millis(950), "closed before the header timeout: {took:?}");
        assert!(took < Duration::from_millis(2500), "closed {took:?} after opening, header timeout is 1 s");
    }
    let grown = rss.peak().saturating_sub(baseline);
    assert!(grown < 48 * MIB, "300 slow connections grew the gateway by {} MiB", grown / MIB);
    assert_eq!(stack.http.value(&resource, "likes").await, 20);
}

/// A head that completes after the header timeout is not served: the
/// connection was closed at the deadline, not given a grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_completed_after_the_header_timeout_is_not_served() {
    let stack = Stack::start(&[("TALLY_HTTP_HEADER_TIMEOUT_MS", "1000")]);
    let resource = unique("late-head");
    let body = increment_body(&resource).to_string();
    let mut stream = TcpStream::connect(stack.gateway.addr("http")).await.expect("connect");
    let head = format!("POST {INC} HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n");
    stream.write_all(head.as_bytes()).await.expect("partial head");
    tokio::time::sleep(Duration::from_millis(1600)).await; // arriving late is the point
    let rest = format!("Content-Length: {}\r\n\r\n{body}", body.len());
    let _ = stream.write_all(rest.as_bytes()).await; // may fail: the server closed
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "a late head was served");
    assert_eq!(stack.http.value(&resource, "likes").await, 0, "nothing written");
}

/// HTTP/2 (h2c, prior knowledge): a connection that sends its preface and
/// settings but never a request is closed at the header timeout, after a
/// GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_a_request_is_closed() {
    let stack = Stack::start(&[("TALLY_HTTP_HEADER_TIMEOUT_MS", "1000")]);
    let mut stream = TcpStream::connect(stack.gateway.addr("http")).await.expect("connect");
    // Preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "the silent HTTP/2 connection stayed open");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
    assert_eq!(answer.get(3), Some(&4), "the server answered in HTTP/2 (a SETTINGS frame first)");
    // A GOAWAY frame (type 7) was sent before the close.
    let mut frames = &answer[..];
    let mut goaway = false;
    while frames.len() >= 9 {
        let len = usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        goaway |= frames[3] == 7;
        frames = &frames[(9 + len).min(frames.len())..];
    }
    assert!(goaway, "no GOAWAY before the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_with_431() {
    let stack = Stack::start(&[]);
    let addr = stack.gateway.addr("http");
    let baseline = stack.gateway.rss_bytes();
    let rss = PeakRss::watch(stack.gateway.pid());
    let attacks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let mut head = b"GET /api/v1/health HTTP/1.1\r\nHost: tally\r\nX-Pad: ".to_vec();
                head.extend(std::iter::repeat_n(b'a', 380 << 10));
                head.extend(b"\r\n\r\n");
                let _ = stream.write_all(&head).await; // the server may close before it read it all
                read_until_closed(&mut stream, Duration::from_secs(5)).await
            })
        })
        .collect();
    let mut refused = 0;
    for attack in attacks {
        let (answer, closed) = attack.await.expect("task");
        assert!(closed, "the connection was closed");
        let text = String::from_utf8_lossy(&answer);
        // (A client still writing when the server closes may see a reset
        // instead of the answer.)
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
        refused += usize::from(text.starts_with("HTTP/1.1 431"));
    }
    assert!(refused > 0, "no connection was answered 431");
    let grown = rss.peak().saturating_sub(baseline);
    assert!(grown < 48 * MIB, "grew by {} MiB", grown / MIB);
    assert_eq!(stack.http.get("/api/v1/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_writes_nothing() {
    let stack = Stack::start(&[("TALLY_HTTP_BODY_TIMEOUT_MS", "1000")]);
    let resource = unique("slowbody");
    let mut stream = TcpStream::connect(stack.gateway.addr("http")).await.expect("connect");
    let body = increment_body(&resource).to_string();
    let head = format!(
        "POST {INC} HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&body.as_bytes()[..10]).await.expect("part of the body");
    let started = Instant::now();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "the JSON envelope: {text}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(stack.http.value(&resource, "likes").await, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_busy_ones_are_kept() {
    let stack = Stack::start(&[("TALLY_HTTP_IDLE_TIMEOUT_MS", "1000")]);
    let addr = stack.gateway.addr("http");
    let request = b"GET /api/v1/health HTTP/1.1\r\nHost: tally\r\n\r\n";
    let mut buf = [0u8; 4096];

    // Busy: a request every 300 ms for 3 s on one connection is never cut.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    for i in 0..10 {
        busy.write_all(request).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        let n = tokio::time::timeout(Duration::from_secs(2), busy.read(&mut buf)).await.expect("answer").expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "request {i}");
        tokio::time::sleep(Duration::from_millis(300)).await; // the client's think time is the point
    }

    // Idle: closed about one idle timeout after its last answer.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(request).await.expect("request");
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    let took = answered.elapsed();
    assert!(closed, "the idle connection is closed");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_above_the_cap_is_closed_at_once() {
    let stack = Stack::start(&[("TALLY_HTTP_MAX_CONNECTIONS", "50"), ("TALLY_HTTP_HEADER_TIMEOUT_MS", "60000")]);
    let addr = stack.gateway.addr("http");
    let request = b"GET /api/v1/health HTTP/1.1\r\nHost: tally\r\n\r\n";
    let mut buf = [0u8; 4096];
    // A client already connected (one slot) ...
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(request).await.expect("request");
    assert!(client.read(&mut buf).await.map(|n| n > 0).unwrap_or(false));
    // ... 49 connections that take every other slot and say nothing ...
    let mut holders = Vec::new();
    for _ in 0..49 {
        holders.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // ... then 200 more: each closed at once.
    let baseline = stack.gateway.rss_bytes();
    for i in 0..200 {
        let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
        let (_, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
        assert!(closed, "connection {i} above the cap was left open");
    }
    assert!(stack.gateway.rss_bytes().saturating_sub(baseline) < 16 * MIB);
    // The connected client is still served, and so is the admin port.
    client.write_all(request).await.expect("request");
    let n = client.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "the existing client is served");
    let metrics = reqwest::get(format!("{}/metrics", stack.gateway.admin_base())).await.expect("scrape");
    let text = metrics.text().await.expect("text");
    let rejected = tally_testkit::prometheus::sum(&text, "tally_gateway_http_connections_rejected_total", &["public"])
        .expect("rejected connections metric");
    assert!(rejected >= 200.0, "{rejected}");
    // Slots come back when connections close (seen asynchronously).
    drop(holders);
    let open = "tally_gateway_http_connections_open";
    metric_reaches(&stack.gateway.admin_base(), open, &["public"], "the holders closed", |n| n <= 1.0).await;
    let resource = unique("after-flood");
    let response = reqwest::Client::new().post(format!("{}{INC}", stack.http.base)).json(&increment_body(&resource));
    assert_eq!(response.send().await.expect("send").status(), 200, "new clients are served once the flood is gone");
}

/// Opens a connection whose request (a head and 1 of its 100 body bytes)
/// holds an in-flight slot until the connection closes.
async fn hold_a_slot(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("POST {INC} HTTP/1.1\r\nHost: tally\r\nContent-Length: 100\r\n\r\n{{");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
}

/// What the server answered on `stream` so far (empty: closed it); `None`
/// while nothing came back (its request still holds its slot).
fn answer(stream: &TcpStream) -> Option<String> {
    let mut buf = [0; 512];
    match stream.try_read(&mut buf) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(err) => Some(format!("error: {err}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_bound_are_shed_with_retry_after() {
    let stack = Stack::start(&[("TALLY_MAX_IN_FLIGHT", "2"), ("TALLY_HTTP_BODY_TIMEOUT_MS", "30000")]);
    let addr = stack.gateway.addr("http");
    let admin = stack.gateway.admin_base();
    const IN_FLIGHT: &str = "tally_gateway_http_requests_in_flight";
    // Two requests whose bodies never finish hold both slots, once the
    // gateway has read their heads.
    let holders = vec![hold_a_slot(addr).await, hold_a_slot(addr).await];
    metric_reaches(&admin, IN_FLIGHT, &[], "the holders' heads read", |n| n == 2.0).await;

    let client = reqwest::Client::new();
    let resource = unique("shed");
    let shed = client.post(format!("{}{INC}", stack.http.base)).json(&increment_body(&resource)).send();
    let shed = shed.await.expect("send");
    assert_eq!(shed.status(), 503, "a third request while two are in flight is shed");
    assert_eq!(retry_after(shed.headers()), Some("1"));
    let body: serde_json::Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    for holder in &holders {
        assert_eq!(answer(holder), None, "the holders keep their slots: shedding the third touched neither");
    }
    assert_eq!(metric(&admin, IN_FLIGHT, &[]).await, 2.0, "the shed request never counted in flight");

    drop(holders);
    metric_reaches(&admin, IN_FLIGHT, &[], "the holders gone", |n| n == 0.0).await;
    let served = client.post(format!("{}{INC}", stack.http.base)).json(&increment_body(&resource)).send();
    assert_eq!(served.await.expect("send").status(), 200, "served again once the slots are free");
    assert_eq!(
        stack.http.value(&resource, "likes").await,
        1,
        "only the served increment was applied, not the shed one"
    );
}

/// Clients that give up mid-write (every `wrk` run ends that way) must not
/// stop the read cache from caching the counter; their requests are counted
/// as status 499.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_writes_do_not_disable_the_read_cache() {
    let stack = Stack::start(&[("TALLY_CACHE_TTL_MS", "60000")]);
    let admin = stack.gateway.admin_base();
    let resource = unique("aborted");
    assert_eq!(stack.http.post(INC, increment_body(&resource)).await.0, 200);

    // The counter hangs: 40 writes are sent, then their clients give up.
    stack.counter.signal("-STOP");
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().expect("client");
    let aborted: Vec<_> = (0..40)
        .map(|_| {
            let request = impatient.post(format!("{}{INC}", stack.http.base)).json(&increment_body(&resource));
            tokio::spawn(async move { request.send().await.is_err() })
        })
        .collect();
    for task in aborted {
        assert!(task.await.expect("task"), "the client gave up before an answer");
    }
    // The gateway sees the closes asynchronously.
    let requests = "tally_gateway_http_requests_total";
    metric_reaches(&admin, requests, &["status=\"499\""], "the cancelled requests recorded as 499", |n| n >= 40.0)
        .await;
    stack.counter.signal("-CONT");

    // The first read fills the cache, the next ones hit it.
    let hits_before = metric(&admin, "tally_gateway_cache_lookups_total", &["hit"]).await;
    let first = stack.http.value(&resource, "likes").await;
    for _ in 0..10 {
        assert_eq!(stack.http.value(&resource, "likes").await, first);
    }
    let hits = metric(&admin, "tally_gateway_cache_lookups_total", &["hit"]).await - hits_before;
    assert!(hits >= 10.0, "reads are cached again after aborted writes: {hits} hits");
    assert!((1..=41).contains(&first), "the value counts the first write and any aborted one applied: {first}");
}

/// Oversized and deeply nested JSON bodies from many clients at once: each
/// refused quickly with the documented error and nothing written, the
/// gateway's memory bounded, and a normal client served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_json_is_refused_within_bounds() {
    let stack = Stack::start(&[]);
    let baseline = stack.gateway.rss_bytes();
    let rss = PeakRss::watch(stack.gateway.pid());
    let resource = unique("nested");
    // Just under 1 MiB of nesting, and 2 MiB of string.
    let depth = (1 << 20) / 2 - 64;
    let nested =
        format!(r#"{{"resource_id":"{resource}","counter_type":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let huge = format!(r#"{{"resource_id":"{}","counter_type":"likes"}}"#, "a".repeat(2 << 20));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let attacks: Vec<_> = (0..40)
        .map(|i| {
            let body = if i % 2 == 0 { nested.clone() } else { huge.clone() };
            let request = client.post(format!("{}{INC}", stack.http.base)).body(body).send();
            tokio::spawn(async move {
                let response = request.await.expect("send");
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.expect("the JSON error envelope");
                (status, body)
            })
        })
        .collect();
    let normal = unique("beside-nested");
    for i in 0..10 {
        let (status, body) = stack.http.post(INC, increment_body(&normal)).await;
        assert_eq!(status, 200, "normal request {i}: {body}");
    }
    for attack in attacks {
        let (status, body) = attack.await.expect("task");
        assert!(matches!(status, 400 | 413), "{status}: {body}");
        assert_eq!(body["status"], "error");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.len() < 400, "the error does not repeat the body: {} bytes", message.len());
    }
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let grown = rss.peak().saturating_sub(baseline);
    assert!(grown < 96 * MIB, "40 hostile bodies grew the gateway by {} MiB", grown / MIB);
    assert_eq!(stack.http.value(&resource, "likes").await, 0, "nothing written");
    assert_eq!(stack.http.value(&normal, "likes").await, 10);
}
