//! HTTP/2 on the gateway, with clients nobody on the project wrote: curl
//! with prior knowledge (h2c, as service meshes and ingress controllers talk
//! upstream) and h2load, nghttp2's load generator, multiplexing many
//! concurrent streams on few connections, over h2c and over TLS (ALPN).
//! Every acknowledged increment is stored exactly once.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Stack, start_counter, start_gateway, unique};
use tally_testkit::{RedisServer, TestCerts};

/// Runs h2load with one increment body against `url` and returns its report.
fn h2load(url: &str, resource: &str, requests: usize) -> Option<String> {
    let h2load = tally_testkit::tool("h2load")?;
    let body = std::env::temp_dir().join(format!("{resource}.json"));
    std::fs::write(&body, format!(r#"{{"resource_id":"{resource}","counter_type":"likes"}}"#)).expect("write body");
    // 4 connections x 25 concurrent streams each.
    let output = Command::new(h2load)
        .args(["-n", &requests.to_string(), "-c", "4", "-m", "25", "-t", "1"])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(&body)
        .arg(url)
        .output()
        .expect("run h2load");
    let _ = std::fs::remove_file(&body);
    Some(String::from_utf8_lossy(&output.stdout).to_string())
}

/// Asserts h2load spoke `protocol` and every one of `requests` got a 2xx.
fn assert_all_succeeded(report: &str, protocol: &str, requests: usize) {
    assert!(report.contains(&format!("Application protocol: {protocol}")), "{report}");
    let done = format!("{requests} total, {requests} started, {requests} done, {requests} succeeded, 0 failed");
    assert!(report.contains(&done), "{report}");
    assert!(report.contains(&format!("status codes: {requests} 2xx, 0 3xx, 0 4xx, 0 5xx")), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2c_with_prior_knowledge_to_the_plain_text_port() {
    let stack = Stack::start(&[]);
    let post = unique("h2c");
    let url = format!("{}/api/v1/counter/increment", stack.http.base);
    let body = format!(r#"{{"resource_id":"{post}","counter_type":"likes"}}"#);
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/json", "-d", &body, "-w", "\nversion=%{http_version}", &url])
        .output()
        .expect("curl must be installed (scripts/install-test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("version=2"), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("\"current_value\":1"), "{text}");
    assert_eq!(stack.http.value(&post, "likes").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_multiplexing_h2c_streams_gets_every_increment_stored_once() {
    let stack = Stack::start(&[]);
    let post = unique("h2load");
    let Some(report) = h2load(&format!("{}/api/v1/counter/increment", stack.http.base), &post, 2_000) else {
        return;
    };
    assert_all_succeeded(&report, "h2c", 2_000);
    assert_eq!(stack.http.value(&post, "likes").await, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_tls_negotiates_h2_by_alpn_and_gets_every_increment_stored_once() {
    let certs = TestCerts::generate("tally-h2-tls");
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    let path = |p: &Path| p.to_string_lossy().to_string();
    let (cert, key) = (path(&certs.server_cert), path(&certs.server_key));
    let gateway = start_gateway(
        &counter.grpc_endpoint(),
        &[("TALLY_TLS_CERT_FILE", cert.as_str()), ("TALLY_TLS_KEY_FILE", key.as_str())],
    );
    let post = unique("h2load-tls");
    let Some(report) = h2load(&format!("https://{}/api/v1/counter/increment", gateway.addr("http")), &post, 2_000)
    else {
        return;
    };
    assert_all_succeeded(&report, "h2", 2_000);
    let stored: i64 = redis.cli(&["HGET", &format!("tally:{{{post}}}"), "likes"]).parse().expect("stored value");
    assert_eq!(stored, 2_000);
}
