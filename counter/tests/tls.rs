//! `rediss://` against a real `redis-server` with TLS, and
//! `rediss+cluster://` against a real three-master Redis Cluster that
//! speaks TLS to its clients and among its nodes (certificates made at test
//! time): increments are stored over TLS with a client certificate; a
//! server certificate from another CA is refused and nothing is written;
//! TLS settings that cannot work stop startup with the setting named.

mod common;

use common::{RedisServer, start_counter, unique};
use tally_proto::v1::IncrementRequest;
use tally_proto::v1::{BatchIncrementRequest, IncrementOperation};
use tally_testkit::{RedisCluster, TestCerts, free_port};

/// A redis-server with a plaintext port (for checking what was stored) and
/// a TLS port that requires client certificates signed by `certs`' CA.
fn tls_redis(certs: &TestCerts) -> (RedisServer, u16) {
    let tls_port = free_port();
    let path = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (port, cert, key, ca) =
        (tls_port.to_string(), path(&certs.server_cert), path(&certs.server_key), path(&certs.ca));
    let extra = [
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
    ];
    (RedisServer::start_on(free_port(), &extra), tls_port)
}

fn increment(resource: &str) -> IncrementRequest {
    IncrementRequest {
        resource_id: resource.into(),
        counter_type: "likes".into(),
        delta: Some(1),
        ..Default::default()
    }
}

/// A counter on `rediss://127.0.0.1:{tls_port}` trusting `trusted.ca` and
/// presenting `trusted`'s client certificate.
fn tls_counter(tls_port: u16, trusted: &TestCerts) -> common::CounterProcess {
    tls_counter_on(&format!("rediss://127.0.0.1:{tls_port}"), trusted)
}

fn tls_counter_on(url: &str, trusted: &TestCerts) -> common::CounterProcess {
    let path = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (ca, cert, key) = (path(&trusted.ca), path(&trusted.client_cert), path(&trusted.client_key));
    let env = [
        ("TALLY_STORE_TLS_CA_FILE", ca.as_str()),
        ("TALLY_STORE_TLS_CERT_FILE", cert.as_str()),
        ("TALLY_STORE_TLS_KEY_FILE", key.as_str()),
    ];
    start_counter(url, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_stored_in_a_redis_cluster_over_tls() {
    let certs = TestCerts::generate("tally-tls-cluster");
    let (cluster, url) = RedisCluster::start_tls(&certs);
    let counter = tls_counter_on(&url, &certs);
    counter.wait_for_log("the cluster over TLS", |l| {
        l.contains(tally_runtime::log_events::STORE_READINESS_CHANGED) && l.contains("up=true")
    });
    let mut client = common::client(&counter).await;
    // Enough resources to land on every master.
    let resources: Vec<String> = (0..30).map(|i| unique(&format!("tls-cluster-{i}"))).collect();
    let operations: Vec<IncrementOperation> = resources.iter().map(|r| common::op(r, "likes", 3)).collect();
    let request = BatchIncrementRequest { operations, ..Default::default() };
    let reply = client.batch_increment(request).await.expect("a batch over TLS").into_inner();
    assert!(reply.results.iter().all(|r| r.error.is_none() && r.current_value == 3), "{reply:?}");
    let mut masters_used = std::collections::BTreeSet::new();
    for resource in &resources {
        let key = format!("tally:{{{resource}}}");
        // Plain-text ports, for checking only: -c follows the cluster's redirects.
        assert_eq!(cluster.nodes[0].cli(&["-c", "hget", &key, "likes"]), "3", "{resource} stored");
        let slot: u16 = cluster.nodes[0].cli(&["cluster", "keyslot", &key]).parse().expect("slot");
        masters_used.insert(slot / 5462);
    }
    assert_eq!(masters_used.len(), 3, "the batch spanned all three masters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_stored_over_tls_with_a_client_certificate() {
    let certs = TestCerts::generate("tally-tls");
    let (redis, tls_port) = tls_redis(&certs);
    let counter = tls_counter(tls_port, &certs);
    // Ready once every worker's TLS connection answered its probe.
    counter.wait_for_log("the store over TLS", |l| {
        l.contains(tally_runtime::log_events::STORE_READINESS_CHANGED) && l.contains("up=true")
    });
    let mut client = common::client(&counter).await;
    let resource = unique("tls");
    let mut answered = Vec::new();
    for _ in 0..2 {
        answered.push(
            client.increment(increment(&resource)).await.expect("an increment over TLS").into_inner().current_value,
        );
    }
    assert_eq!(answered, vec![1, 2]);
    let stored = redis.cli(&["hget", &format!("tally:{{{resource}}}"), "likes"]);
    assert_eq!(stored, "2", "stored in the TLS Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_and_nothing_is_written() {
    let certs = TestCerts::generate("tally-tls");
    let stranger = TestCerts::generate("tally-tls-other");
    let (redis, tls_port) = tls_redis(&certs);
    // Trusts another CA (and presents a certificate the server does not trust either).
    let counter = tls_counter(tls_port, &stranger);
    let mut client = common::client(&counter).await;
    let resource = unique("untrusted");
    for _ in 0..3 {
        let status = client.increment(increment(&resource)).await.expect_err("an untrusted server");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert_eq!(redis.cli(&["exists", &format!("tally:{{{resource}}}")]), "0", "nothing written");
    counter.wait_for_log("a certificate error", |l| l.to_lowercase().contains("certificate"));
}

#[test]
fn tls_settings_that_cannot_work_stop_startup_with_the_setting_named() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tally-counter"));
    let run = |env: &[(&str, &str)]| {
        let output = tally_testkit::output_on_exit(
            std::process::Command::new(bin)
                .envs([("TALLY_LISTEN", "127.0.0.1:0"), ("TALLY_ADMIN_LISTEN", "127.0.0.1:0")])
                .envs(env.iter().copied()),
        );
        (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let (ok, out) = run(&[("TALLY_STORE", "rediss://127.0.0.1:1"), ("TALLY_STORE_TLS_CA_FILE", "/nonexistent/ca.pem")]);
    assert!(!ok && out.contains("TALLY_STORE_TLS_CA_FILE"), "{out}");
    let certs = TestCerts::generate("tally-tls");
    let ca = certs.ca.to_string_lossy().to_string();
    let (ok, out) = run(&[("TALLY_STORE", "redis://127.0.0.1:1"), ("TALLY_STORE_TLS_CA_FILE", ca.as_str())]);
    assert!(!ok && out.contains("rediss://"), "a CA for a plaintext store: {out}");
    let key = certs.client_key.to_string_lossy().to_string();
    let (ok, out) = run(&[("TALLY_STORE", "rediss://127.0.0.1:1"), ("TALLY_STORE_TLS_CA_FILE", key.as_str())]);
    assert!(!ok && out.contains("TALLY_STORE_TLS_CA_FILE") && out.contains("no PEM certificate"), "a key as CA: {out}");
    let server_key = certs.server_key.to_string_lossy().to_string();
    let cert = certs.client_cert.to_string_lossy().to_string();
    let mismatched = [
        ("TALLY_STORE", "rediss://127.0.0.1:1"),
        ("TALLY_STORE_TLS_CERT_FILE", cert.as_str()),
        ("TALLY_STORE_TLS_KEY_FILE", server_key.as_str()),
    ];
    let (ok, out) = run(&mismatched);
    assert!(!ok && out.contains("TALLY_STORE_TLS_KEY_FILE"), "another certificate's key: {out}");
    let (ok, out) = run(&[("TALLY_STORE", "rediss://127.0.0.1:1"), ("TALLY_STORE_TLS_CERT_FILE", ca.as_str())]);
    assert!(
        !ok && out.contains("TALLY_STORE_TLS_KEY_FILE") || out.contains("store-tls-key-file"),
        "a certificate without its key: {out}"
    );
}

/// Over TLS the HTTP/2 preface follows the handshake: a client that
/// completes the (mutual) handshake and then says nothing is cut at the
/// handshake timeout too, as a silent plain-text client is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_handshakes_and_then_says_nothing_is_cut_at_the_handshake_timeout() {
    let certs = TestCerts::generate("tally-tls-silent");
    let path = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (cert, key, ca) = (path(&certs.server_cert), path(&certs.server_key), path(&certs.ca));
    let counter = start_counter(
        "memory",
        &[
            ("TALLY_TLS_CERT_FILE", &cert),
            ("TALLY_TLS_KEY_FILE", &key),
            ("TALLY_TLS_CLIENT_CA_FILE", &ca),
            ("TALLY_GRPC_HANDSHAKE_TIMEOUT_MS", "500"),
        ],
    );
    let addr = counter.addr("grpc").to_string();
    let started = std::time::Instant::now();
    // s_client completes the handshake with a trusted client certificate,
    // then waits on its (never written) stdin; it exits when the server closes.
    let mut client = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr, "-CAfile", &ca])
        .args(["-cert", &path(&certs.client_cert), "-key", &path(&certs.client_key)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let _stdin = client.stdin.take();
    let exited = tokio::time::timeout(std::time::Duration::from_secs(10), client.wait()).await;
    assert!(exited.is_ok(), "the silent TLS connection stayed open");
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(400), "closed after {took:?}, before the timeout");
    let text = reqwest::get(format!("{}/metrics", counter.admin_base())).await.unwrap().text().await.unwrap();
    let value = |name: &str| tally_testkit::prometheus::sum(&text, name, &[]);
    assert_eq!(value("tally_counter_grpc_handshake_timeouts_total"), Some(1.0), "counted as a handshake timeout");
    assert_eq!(
        value("tally_counter_grpc_tls_handshake_failures_total"),
        Some(0.0),
        "the TLS handshake itself succeeded"
    );
}
