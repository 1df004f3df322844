//! The operational surface: grpc.health.v1, server reflection (grpcurl), and
//! the admin port's /health, /ready and /metrics.

mod common;

use std::net::SocketAddr;

use common::{Backend, Stack, unique};
use tally_proto::v1::{GetResourceRequest, IncrementRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// A plain HTTP/1.0 GET, returning (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect admin port");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_admin_endpoints() {
    let stack = Stack::start(Backend::Memory, &[]);
    let channel = tonic::transport::Endpoint::from_shared(stack.counter.grpc_endpoint()).expect("endpoint");
    let channel = channel.connect().await.expect("connect");

    // grpc.health.v1: the server as a whole and the counter service.
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "tally.counter.v1.CounterService"] {
        let mut watch = health.watch(HealthCheckRequest { service: service.into() }).await.expect("watch").into_inner();
        let mut status = None;
        while let Some(update) = watch.next().await {
            status = Some(update.expect("update").status);
            if status == Some(ServingStatus::Serving as i32) {
                break;
            }
        }
        assert_eq!(status, Some(ServingStatus::Serving as i32), "service {service:?}");
    }

    // Reflection lists the API, so `grpcurl list` works.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let Some(Ok(response)) = responses.next().await else { panic!("no reflection response") };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tally.counter.v1.CounterService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    // Some traffic, then the admin port.
    let mut client = stack.client().await;
    let resource = unique("admin");
    for _ in 0..5 {
        let request = IncrementRequest {
            resource_id: resource.clone(),
            counter_type: "likes".into(),
            delta: None,
            ..Default::default()
        };
        client.increment(request).await.expect("increment");
    }
    let bad = IncrementRequest {
        resource_id: String::new(),
        counter_type: "likes".into(),
        delta: None,
        ..Default::default()
    };
    assert!(client.increment(bad).await.is_err());
    // A keyed increment goes the ordered way, a listing reads the resource.
    let keyed = IncrementRequest {
        resource_id: resource.clone(),
        counter_type: "likes".into(),
        idempotency_key: unique("key"),
        ..Default::default()
    };
    client.increment(keyed).await.expect("keyed increment");
    let listing = client.get_resource(GetResourceRequest { resource_id: resource.clone() }).await.expect("listing");
    assert_eq!(listing.into_inner().counters.len(), 1);

    assert_eq!(http_get(stack.counter.addr("admin"), "/health").await, (200, r#"{"status":"healthy"}"#.to_string()));
    assert_eq!(http_get(stack.counter.addr("admin"), "/ready").await.0, 200);
    let (status, metrics) = http_get(stack.counter.addr("admin"), "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"tally_counter_grpc_requests_total{method="Increment",code="OK"} 6"#,
        r#"tally_counter_grpc_requests_total{method="Increment",code="InvalidArgument"} 1"#,
        "tally_counter_grpc_request_duration_seconds_bucket",
        "tally_counter_commit_batch_operations_count",
        "tally_counter_store_up 1",
        r#"tally_counter_store_duration_seconds_count{op="incr"} 5"#,
        r#"tally_counter_store_duration_seconds_count{op="ordered"} 1"#,
        r#"tally_counter_store_duration_seconds_count{op="list"} 1"#,
        "tally_counter_buffer_keys 0",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    }
}

/// grpcio's own reflection client (PyPI `grpcio-reflection`), which speaks
/// only `grpc.reflection.v1alpha` — as older grpcurl, grpcui and Postman
/// builds do — lists the API and resolves the counter service's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcios_v1alpha_reflection_client_lists_and_describes_the_api() {
    let has_grpcio = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection.v1alpha.reflection_pb2_grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpcio {
        let message =
            "python3 with grpcio and grpcio-reflection is not installed (scripts/install-test-deps.sh installs them)";
        assert!(std::env::var_os("TALLY_REQUIRE_TOOLS").is_none(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let stack = Stack::start(Backend::Memory, &[]);
    let target = stack.counter.addr("grpc").to_string();
    let script = r#"
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(sys.argv[1]))
asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tally.counter.v1.CounterService")]
for answer in stub.ServerReflectionInfo(iter(asks), timeout=10):
    if answer.HasField("list_services_response"):
        for service in answer.list_services_response.service:
            print("service", service.name)
    elif answer.HasField("file_descriptor_response"):
        print("files", len(answer.file_descriptor_response.file_descriptor_proto))
    else:
        print("error", answer.error_response.error_message)
"#;
    let output = tokio::process::Command::new("python3").args(["-c", script, &target]).output().await.expect("python3");
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    for service in ["tally.counter.v1.CounterService", "grpc.health.v1.Health"] {
        assert!(text.lines().any(|l| l == format!("service {service}")), "{service} not listed over v1alpha:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("files ") && l != "files 0"), "no file descriptor:\n{text}");
    assert!(!text.contains("error "), "{text}");
}
