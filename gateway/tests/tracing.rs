//! End-to-end traces: real redis-server → tally-counter → tally-gateway,
//! exporting over OTLP/gRPC to an in-process receiver (**a test double for
//! Jaeger**, `tally_testkit::OtlpReceiver`). A request's `traceparent`
//! continues through the gateway, the gRPC call and the store flush; a
//! coalesced call keeps every request's trace through span links.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::unique;
use common::{RedisServer, start_counter, start_gateway};
use tally_testkit::{OtlpReceiver, ReceivedSpan};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Every process exports here, flushing every 100 ms. The default sampler
/// (parent-based, ratio 0.1) is kept, and the gateway trusts its callers
/// here: sampled callers must be followed.
fn traced(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("TALLY_TRACE_TRUST_CALLER", "true".into()),
    ]
}

fn as_env<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn traceparent(n: u64) -> (String, String, String) {
    let trace = format!("{:032x}", 0x4bf9_2f35_77b3_4da6_u128 << 64 | u128::from(n) << 8 | 0x36);
    let parent = format!("{:016x}", 0x00f0_67aa_0ba9_0000_u64 | n);
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

async fn increment(client: &reqwest::Client, base: &str, header: &str, resource: &str) -> u16 {
    client
        .post(format!("{base}/api/v1/counter/increment"))
        .header("traceparent", header)
        .json(&serde_json::json!({"resource_id": resource, "counter_type": "likes"}))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

fn find<'a>(spans: &'a [ReceivedSpan], trace: &str, service: &str, kind: i32, name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.trace_id == trace && s.service == service && s.kind == kind && s.name == name)
}

#[tokio::test]
async fn one_request_is_one_trace_from_the_gateway_through_the_counter_to_the_store() {
    let receiver = OtlpReceiver::start().await;
    let env = traced(&receiver);
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &as_env(&env));
    // JSON logs with the access log on: its line must name the trace.
    let mut gateway_env = as_env(&env);
    gateway_env.extend([("TALLY_LOG_FORMAT", "json"), ("RUST_LOG", "info,tally_gateway::api=debug")]);
    let gateway = start_gateway(&counter.grpc_endpoint(), &gateway_env);
    let (header, trace, caller) = traceparent(1);
    let status = increment(&reqwest::Client::new(), &gateway.http_base(), &header, &unique("traced")).await;
    assert_eq!(status, 200);

    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.trace_id == trace && s.name == "BATCH HINCRBY")
                && spans.iter().any(|s| s.trace_id == trace && s.service == "tally-gateway" && s.kind == SERVER)
        })
        .await;
    let in_trace: Vec<String> = spans.iter().filter(|s| s.trace_id == trace).map(|s| s.name.clone()).collect();
    let missing = |what: &str| format!("no {what} in trace {trace}: {in_trace:?}");

    let http = find(&spans, &trace, "tally-gateway", SERVER, "POST /api/v1/counter/increment")
        .unwrap_or_else(|| panic!("{}", missing("gateway HTTP server span")));
    assert_eq!(http.parent_span_id, caller, "continues the caller's span");
    assert_eq!(http.attributes["http.route"], "/api/v1/counter/increment");
    assert_eq!(http.attributes["http.request.method"], "POST");
    assert_eq!(http.attributes["http.response.status_code"], "200");

    let batch = find(&spans, &trace, "tally-gateway", 1, "coalesce BatchIncrement")
        .unwrap_or_else(|| panic!("{}", missing("coalesced batch span")));
    assert_eq!(batch.parent_span_id, http.span_id);
    assert!(batch.links.contains(&(trace.clone(), http.span_id.clone())), "the batch links the request");
    assert!(http.links.contains(&(trace.clone(), batch.span_id.clone())), "the request links the batch");

    let call = find(&spans, &trace, "tally-gateway", CLIENT, "tally.counter.v1.CounterService/BatchIncrement")
        .unwrap_or_else(|| panic!("{}", missing("gateway gRPC client span")));
    assert_eq!(call.parent_span_id, batch.span_id);
    assert_eq!(call.attributes["rpc.system"], "grpc");
    assert_eq!(call.attributes["rpc.method"], "BatchIncrement");
    assert_eq!(call.attributes["rpc.grpc.status_code"], "0");

    let served = find(&spans, &trace, "tally-counter", SERVER, "tally.counter.v1.CounterService/BatchIncrement")
        .unwrap_or_else(|| panic!("{}", missing("counter gRPC server span")));
    assert_eq!(served.parent_span_id, call.span_id, "the counter continues the gateway's call");

    let flush = find(&spans, &trace, "tally-counter", CLIENT, "BATCH HINCRBY")
        .unwrap_or_else(|| panic!("{}", missing("store flush span")));
    assert_eq!(flush.parent_span_id, served.span_id);
    assert_eq!(flush.attributes["db.system.name"], "redis");
    assert!(flush.links.contains(&(trace.clone(), served.span_id.clone())), "the flush links the request");
    assert!(!spans.iter().any(|s| s.name.contains("grpc.health")), "health checks are not traced");

    let access = gateway.wait_for_log("the access log line", |l| l.contains(r#""message":"request""#));
    let line: serde_json::Value = serde_json::from_str(&access).expect("a JSON log line");
    assert_eq!(line["span"]["trace_id"], trace.as_str(), "the log line names its trace: {access}");
    assert_eq!(line["fields"]["status"], 200);

    // A read the cache misses: its coalesced batch has a span of its own
    // kind, and, being traced, goes as a unary BatchGet under it.
    let (header, trace, _) = traceparent(2);
    let url = format!("{}/api/v1/counter/{}/likes", gateway.http_base(), unique("traced-read"));
    let read = reqwest::Client::new().get(url).header("traceparent", &header).send().await.expect("send");
    assert_eq!(read.status().as_u16(), 200);
    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            let named = |name: &str| spans.iter().any(|s| s.trace_id == trace && s.name == name);
            named("tally.counter.v1.CounterService/BatchGet") && named("coalesce BatchGet")
        })
        .await;
    let batch = find(&spans, &trace, "tally-gateway", 1, "coalesce BatchGet").expect("the read batch's span");
    let call = find(&spans, &trace, "tally-gateway", CLIENT, "tally.counter.v1.CounterService/BatchGet")
        .expect("the read batch's call");
    assert_eq!(call.parent_span_id, batch.span_id);
}

#[tokio::test]
async fn coalesced_requests_keep_their_own_traces_linked_to_the_shared_call() {
    let receiver = OtlpReceiver::start().await;
    let env = traced(&receiver);
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &as_env(&env));
    // One batch in flight at a time: concurrent requests queue and share the next.
    let mut gateway_env = as_env(&env);
    gateway_env.push(("TALLY_COALESCE_MAX_INFLIGHT", "1"));
    let gateway = start_gateway(&counter.grpc_endpoint(), &gateway_env);
    let base = gateway.http_base();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let resource = unique("coalesced");
    let requests: Vec<(String, String, String)> = (100..160).map(traceparent).collect();
    let statuses = futures_util::future::join_all(
        requests.iter().map(|(header, _, _)| increment(&client, &base, header, &resource)),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let traces: Vec<String> = requests.iter().map(|(_, trace, _)| trace.clone()).collect();
    let server_spans = |spans: &[ReceivedSpan]| -> HashMap<String, ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.service == "tally-gateway" && s.kind == SERVER && traces.contains(&s.trace_id))
            .map(|s| (s.trace_id.clone(), s.clone()))
            .collect()
    };
    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            let servers = server_spans(spans);
            servers.len() == traces.len()
                && servers.values().all(|s| s.links.iter().any(|(_, id)| spans.iter().any(|b| &b.span_id == id)))
        })
        .await;
    let servers = server_spans(&spans);
    assert_eq!(servers.len(), traces.len(), "every request has its own trace with its server span");
    let batches: HashMap<&str, &ReceivedSpan> =
        spans.iter().filter(|s| s.name == "coalesce BatchIncrement").map(|s| (s.span_id.as_str(), s)).collect();
    for (trace, server) in &servers {
        let (_, batch_id) = server.links.first().unwrap_or_else(|| panic!("request in {trace} links no batch"));
        let batch = batches.get(batch_id.as_str()).unwrap_or_else(|| panic!("linked batch {batch_id} not exported"));
        assert!(batch.links.contains(&(trace.clone(), server.span_id.clone())), "the batch links back to {trace}");
    }
    let largest = batches.values().map(|b| b.links.len()).max().unwrap_or(0);
    assert!(largest > 1, "60 concurrent requests with one call in flight were coalesced (largest batch {largest})");
}

#[tokio::test]
async fn an_unsampled_caller_is_not_traced_anywhere() {
    let receiver = OtlpReceiver::start().await;
    let env = traced(&receiver);
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &as_env(&env));
    let gateway = start_gateway(&counter.grpc_endpoint(), &as_env(&env));
    let client = reqwest::Client::new();
    let resource = unique("unsampled");
    let (sampled, _, _) = traceparent(7);
    let (unsampled_header, unsampled_trace, _) = traceparent(8);
    let unsampled = unsampled_header.replace("-01", "-00");
    assert_eq!(increment(&client, &gateway.http_base(), &unsampled, &resource).await, 200);
    // An unsampled async write too: its write-behind flush must not start a trace.
    let accepted = client
        .post(format!("{}/api/v1/counter/batch-increment", gateway.http_base()))
        .header("traceparent", &unsampled)
        .json(&serde_json::json!({"operations": [{"resource_id": resource, "counter_type": "views"}], "async": true}))
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(accepted.as_u16(), 202);
    // Read back from Redis once flushed, so the flush (and any span of it)
    // happened before what follows.
    let mut flushed = false;
    for _ in 0..100 {
        if redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "views"]) == "1" {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // no event says a flush happened
    }
    assert!(flushed, "the async write was applied");
    assert_eq!(increment(&client, &gateway.http_base(), &sampled, &resource).await, 200);
    let (_, sampled_trace, _) = traceparent(7);

    // Each process exports in order: once both have exported the sampled
    // request's spans, anything the earlier request produced has arrived.
    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.trace_id == sampled_trace && s.name == "BATCH HINCRBY")
                && spans.iter().any(|s| s.trace_id == sampled_trace && s.service == "tally-gateway" && s.kind == SERVER)
        })
        .await;
    assert!(spans.iter().any(|s| s.trace_id == sampled_trace), "the sampled request is traced");
    assert!(!spans.iter().any(|s| s.trace_id == unsampled_trace), "nothing of the unsampled request is exported");
    let strays: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id != sampled_trace).collect();
    assert!(strays.is_empty(), "no trace starts downstream of an unsampled request: {strays:?}");
}

#[tokio::test]
async fn spans_still_queued_at_shutdown_are_exported_before_the_process_exits() {
    let receiver = OtlpReceiver::start().await;
    // A ten-minute export interval: only the shutdown flush can deliver.
    let endpoint = receiver.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ];
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &env);
    let gateway = start_gateway(&counter.grpc_endpoint(), &env);
    let (header, trace, _) = traceparent(9);
    assert_eq!(increment(&reqwest::Client::new(), &gateway.http_base(), &header, &unique("flush")).await, 200);
    assert!(receiver.spans().is_empty(), "nothing exported before shutdown");
    // Off the test's runtime thread: the receiver must keep serving meanwhile.
    let (status, _) = tokio::task::spawn_blocking(move || gateway.terminate()).await.expect("terminate");
    assert!(status.success(), "{status:?}");
    // The exporter's call returned before the process exited, so the spans are here already.
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.trace_id == trace && s.service == "tally-gateway" && s.kind == SERVER),
        "the gateway flushed its queued spans on SIGTERM: {spans:?}"
    );
}

/// By default the gateway does not follow a caller's sampled flag: a client
/// sending `-01` on every request cannot have them all traced (600 spans for
/// 200 requests). A gateway told to trust its callers is the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_callers_sampled_flag_is_not_followed() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    // A 1 % ratio. The callers' trace ids all have tiny low bits: a ratio
    // drawn from them would pass every time, so the edge must draw its own.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ];
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &env);
    let edge = start_gateway(&counter.grpc_endpoint(), &env);
    let mut trusting_env = env.to_vec();
    trusting_env.push(("TALLY_TRACE_TRUST_CALLER", "true"));
    let trusting = start_gateway(&counter.grpc_endpoint(), &trusting_env);
    let client = reqwest::Client::new();
    let resource = unique("untrusted");
    let mut edge_traces = Vec::new();
    for n in 100..300 {
        let (header, trace, _) = traceparent(n);
        assert_eq!(increment(&client, &edge.http_base(), &header, &resource).await, 200);
        edge_traces.push(trace);
    }
    let (header, control, _) = traceparent(99);
    assert_eq!(increment(&client, &trusting.http_base(), &header, &resource).await, 200);
    receiver
        .wait_until(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.trace_id == control && s.service == "tally-gateway" && s.kind == SERVER)
        })
        .await;
    // The edge gateway's shutdown flushes whatever it still queued.
    let (status, _) = tokio::task::spawn_blocking(move || edge.terminate()).await.expect("terminate");
    assert!(status.success(), "{status:?}");
    let spans = receiver.spans();
    let traced: std::collections::HashSet<&String> =
        spans.iter().filter(|s| edge_traces.contains(&s.trace_id)).map(|s| &s.trace_id).collect();
    // About 2 of 200 at 1 %; more than 20 is (far) beyond chance.
    assert!(traced.len() <= 20, "{} of 200 requests traced: the caller's -01 or trace id decided", traced.len());
}

#[tokio::test]
async fn spans_are_exported_to_an_https_collector_trusted_through_its_ca() {
    let certs = tally_testkit::TestCerts::generate("tally-otlp-tls");
    let receiver = OtlpReceiver::start_tls(&certs).await;
    assert!(receiver.endpoint().starts_with("https://"));
    let mut env = traced(&receiver);
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", certs.ca.to_string_lossy().to_string()));
    let counter = start_counter("memory", &as_env(&env));
    let gateway = start_gateway(&counter.grpc_endpoint(), &as_env(&env));
    let (header, trace, _) = traceparent(7);
    assert_eq!(increment(&reqwest::Client::new(), &gateway.http_base(), &header, &unique("tls-traced")).await, 200);
    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            ["tally-gateway", "tally-counter"]
                .iter()
                .all(|svc| spans.iter().any(|s| s.trace_id == trace && s.service == *svc))
        })
        .await;
    for service in ["tally-gateway", "tally-counter"] {
        assert!(
            spans.iter().any(|s| s.trace_id == trace && s.service == service),
            "{service}'s spans arrived over TLS"
        );
    }
}
