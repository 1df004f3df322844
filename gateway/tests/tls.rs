//! TLS on real processes with certificates made at test time: mutual TLS
//! from the gateway to the counters (a gateway without a certificate, or
//! with one from another CA, is refused and nothing is written), HTTPS on
//! the gateway with curl over HTTP/1.1 and HTTP/2 (ALPN), a CA rollover
//! done on disk while a load of requests runs with no failed request, and
//! settings that cannot work stopping startup with the setting named.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Http, RedisServer, Service, free_port, metric, start_counter, start_gateway, unique};
use serde_json::json;
use tally_testkit::TestCerts;

fn path(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// A counter on `redis` serving TLS with `certs`' server certificate and
/// requiring client certificates from `certs`' CA.
fn mtls_counter(redis: &RedisServer, certs: &TestCerts) -> Service {
    let (cert, key, ca) = (path(&certs.server_cert), path(&certs.server_key), path(&certs.ca));
    let env = [
        ("TALLY_TLS_CERT_FILE", cert.as_str()),
        ("TALLY_TLS_KEY_FILE", key.as_str()),
        ("TALLY_TLS_CLIENT_CA_FILE", ca.as_str()),
    ];
    start_counter(&redis.url(), &env)
}

/// The gateway's settings for TLS to the counters: trust `ca`, present `client` (cert, key).
fn upstream_env(ca: &Path, client: Option<(&Path, &Path)>) -> Vec<(&'static str, String)> {
    let mut env = vec![("TALLY_COUNTER_TLS_CA_FILE", path(ca))];
    if let Some((cert, key)) = client {
        env.push(("TALLY_COUNTER_TLS_CERT_FILE", path(cert)));
        env.push(("TALLY_COUNTER_TLS_KEY_FILE", path(key)));
    }
    env
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `curl` against the gateway's HTTPS port: (exit code, HTTP version, body).
fn curl(args: &[&str]) -> (i32, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (scripts/install-test-deps.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_counter_and_https_from_curl_over_http1_and_http2() {
    let certs = TestCerts::generate("tally-mtls");
    let redis = RedisServer::start();
    let counter = mtls_counter(&redis, &certs);
    let mut env = upstream_env(&certs.ca, Some((&certs.client_cert, &certs.client_key)));
    env.push(("TALLY_TLS_CERT_FILE", path(&certs.server_cert)));
    env.push(("TALLY_TLS_KEY_FILE", path(&certs.server_key)));
    // Healthy only once a health check went through the mutual TLS handshake.
    let gateway = start_gateway(&counter.grpc_endpoint(), &borrowed(&env));
    let base = format!("https://{}", gateway.addr("http"));
    let resource = unique("https");
    let body = json!({"resource_id": resource, "counter_type": "likes"}).to_string();
    let ca = path(&certs.ca);
    let url = format!("{base}/api/v1/counter/increment");
    for version in ["--http1.1", "--http2"] {
        let (code, out) = curl(&[
            version,
            "--cacert",
            &ca,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-w",
            "\nversion=%{http_version} status=%{http_code}",
            &url,
        ]);
        assert_eq!(code, 0, "{out}");
        let expected = if version == "--http2" { "version=2" } else { "version=1.1" };
        assert!(out.contains(expected) && out.contains("status=200"), "{version}: {out}");
    }
    assert_eq!(redis.cli(&["hget", &format!("tally:{{{resource}}}"), "likes"]), "2", "both stored through mTLS");

    // A client that does not trust the gateway's CA is refused by curl itself.
    let (code, out) = curl(&[&format!("{base}/api/v1/health")]);
    assert_eq!(code, 60, "an unknown CA: {out}");
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let (code, out) = curl(&[&format!("http://{}/api/v1/health", gateway.addr("http"))]);
    assert_ne!(code, 0, "plain HTTP on the HTTPS port: {out}");
    let failures = metric(&gateway.admin_base(), "tally_gateway_http_tls_handshake_failures_total", &[]).await;
    assert!(failures >= 1.0, "the plain-text connection counts as a failed handshake: {failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_refuse_gateways_without_a_certificate_from_their_ca_and_nothing_is_written() {
    let certs = TestCerts::generate("tally-mtls");
    let stranger = TestCerts::generate("tally-mtls-other");
    let redis = RedisServer::start();
    let counter = mtls_counter(&redis, &certs);
    let no_certificate = upstream_env(&certs.ca, None);
    let other_ca = upstream_env(&certs.ca, Some((&stranger.client_cert, &stranger.client_key)));
    for (what, env) in [("no client certificate", no_certificate), ("a certificate from another CA", other_ca)] {
        let before = metric(&counter.admin_base(), "tally_counter_grpc_tls_handshake_failures_total", &[]).await;
        let mut all =
            vec![("TALLY_COUNTER_ENDPOINTS", counter.grpc_endpoint()), ("TALLY_HEALTH_INTERVAL_MS", "100".into())];
        all.extend(env);
        let gateway = Service::start(Path::new(env!("CARGO_BIN_EXE_tally-gateway")), &borrowed(&all));
        // Wait for the counter to have refused this gateway's handshake.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = metric(&counter.admin_base(), "tally_counter_grpc_tls_handshake_failures_total", &[]).await;
            if now > before {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: the counter never refused a handshake");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let resource = unique("refused");
        let http = Http::new(gateway.http_base());
        let (status, body) =
            http.post("/api/v1/counter/increment", json!({"resource_id": resource, "counter_type": "likes"})).await;
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(redis.cli(&["exists", &format!("tally:{{{resource}}}")]), "0", "{what}: nothing written");
    }
}

/// Replaces `to` with `from`'s contents the way Kubernetes updates a
/// Secret volume: write aside, then rename over (readers never see half a file).
fn replace(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).expect("copy");
    std::fs::rename(&aside, to).expect("rename");
}

/// Files a process reads its certificates from, replaced in place.
struct Mounted {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Mounted {
    fn new(dir: &Path, name: &str, cert: &Path, key: &Path, ca: &Path) -> Mounted {
        let mounted = Mounted {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.crt")),
        };
        mounted.set(cert, key);
        replace(ca, &mounted.ca);
        mounted
    }

    fn set(&self, cert: &Path, key: &Path) {
        replace(cert, &self.cert);
        replace(key, &self.key);
    }
}

/// Both CAs in one bundle, as during a CA rollover.
fn bundle(dir: &Path, a: &Path, b: &Path) -> PathBuf {
    let both = dir.join(format!("bundle-{}.crt", unique("b")));
    let text = format!("{}{}", std::fs::read_to_string(a).unwrap(), std::fs::read_to_string(b).unwrap());
    std::fs::write(&both, text).unwrap();
    both
}

/// The leaf certificate a TLS server presents now, as PEM (openssl s_client).
fn presented_certificate(addr: std::net::SocketAddr, ca: &Path, client: (&Path, &Path)) -> String {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-CAfile",
            &path(ca),
            "-cert",
            &path(client.0),
            "-key",
            &path(client.1),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").expect("a certificate in s_client's output");
    let end = text[start..].find("-----END CERTIFICATE-----").expect("end of the certificate") + start;
    text[start..end].split_whitespace().collect()
}

fn pem_body(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap();
    text[..end].split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rollover_on_disk_under_load_fails_no_request() {
    let (old, new) = (TestCerts::generate("tally-rotate-old"), TestCerts::generate("tally-rotate-new"));
    let dir = old.dir.join("mounted");
    std::fs::create_dir_all(&dir).unwrap();
    let counter_files = Mounted::new(&dir, "counter", &old.server_cert, &old.server_key, &old.ca);
    let gateway_files = Mounted::new(&dir, "gateway", &old.client_cert, &old.client_key, &old.ca);
    let redis = RedisServer::start();
    let listener_env = |files: &Mounted, port: u16| {
        vec![
            ("TALLY_LISTEN", format!("127.0.0.1:{port}")),
            ("TALLY_TLS_CERT_FILE", path(&files.cert)),
            ("TALLY_TLS_KEY_FILE", path(&files.key)),
            ("TALLY_TLS_CLIENT_CA_FILE", path(&files.ca)),
            ("TALLY_TLS_RELOAD_MS", "50".into()),
        ]
    };
    let counter = start_counter(&redis.url(), &borrowed(&listener_env(&counter_files, free_port())));
    // A second counter joins after the rollover: the gateway's first
    // connection to it can only use the renewed client configuration.
    let late_port = free_port();
    let endpoints = format!("{},http://127.0.0.1:{late_port}", counter.grpc_endpoint());
    let mut env = upstream_env(&gateway_files.ca, Some((&gateway_files.cert, &gateway_files.key)));
    env.push(("TALLY_TLS_RELOAD_MS", "50".into()));
    let gateway = start_gateway(&endpoints, &borrowed(&env));

    let http = Http::new(gateway.http_base());
    let resource = unique("rotate");
    let stop = Arc::new(AtomicBool::new(false));
    let (acknowledged, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (http, resource, stop) = (http.clone(), resource.clone(), stop.clone());
            let (acknowledged, failed) = (acknowledged.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"resource_id": resource, "counter_type": "likes"});
                    match http.post("/api/v1/counter/increment", body).await {
                        (200, _) => acknowledged.fetch_add(1, Ordering::Relaxed),
                        (status, body) => {
                            eprintln!("failed during rotation: {status} {body}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let reloaded = |service: &Service, what: &str| {
        service.wait_for_log(what, |l| l.contains("TLS certificates reloaded"));
    };
    // Under load before, during and after the rollover.
    let more_acknowledged = |n: u64| {
        let acknowledged = acknowledged.clone();
        async move {
            let target = acknowledged.load(Ordering::Relaxed) + n;
            while acknowledged.load(Ordering::Relaxed) < target {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    more_acknowledged(200).await;
    let served_before = acknowledged.load(Ordering::Relaxed);

    // 1. Both sides trust both CAs.
    let both = bundle(&dir, &old.ca, &new.ca);
    replace(&both, &counter_files.ca);
    replace(&both, &gateway_files.ca);
    reloaded(&counter, "the counter's CA bundle");
    reloaded(&gateway, "the gateway's CA bundle");
    more_acknowledged(100).await;
    // 2. Certificates from the new CA.
    counter_files.set(&new.server_cert, &new.server_key);
    gateway_files.set(&new.client_cert, &new.client_key);
    reloaded(&counter, "the counter's new certificate");
    reloaded(&gateway, "the gateway's new certificate");
    more_acknowledged(100).await;
    // 3. The old CA is no longer trusted.
    replace(&new.ca, &counter_files.ca);
    replace(&new.ca, &gateway_files.ca);
    reloaded(&counter, "the counter's new CA");
    reloaded(&gateway, "the gateway's new CA");

    // New handshakes get the new certificate ...
    let presented = presented_certificate(counter.addr("grpc"), &new.ca, (&new.client_cert, &new.client_key));
    assert_eq!(presented, pem_body(&new.server_cert), "the counter presents its renewed certificate");
    // ... and the gateway's first connection to a counter trusting only the
    // new CA succeeds (it becomes healthy and takes requests).
    let late_files = Mounted::new(&dir, "late", &new.server_cert, &new.server_key, &new.ca);
    let late = start_counter(&redis.url(), &borrowed(&listener_env(&late_files, late_port)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while metric(&late.admin_base(), "tally_counter_grpc_requests_total", &["code=\"OK\""]).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the late counter never got a request over the renewed mTLS");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    more_acknowledged(200).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    eprintln!("acknowledged {acknowledged}, {served_before} before the rollover");
    assert!(acknowledged > served_before, "requests went on during the rollover");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the rollover");
    let stored: u64 = redis.cli(&["hget", &format!("tally:{{{resource}}}"), "likes"]).parse().expect("a number");
    assert_eq!(stored, acknowledged, "stored = acknowledged");
}

#[test]
fn tls_settings_that_cannot_work_stop_startup_with_the_setting_named() {
    let run = |bin: &Path, env: &[(&str, &str)]| {
        let output = Command::new(bin)
            .envs([("TALLY_LISTEN", "127.0.0.1:0"), ("TALLY_ADMIN_LISTEN", "127.0.0.1:0")])
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let gateway = Path::new(env!("CARGO_BIN_EXE_tally-gateway"));
    let (ok, out) = run(gateway, &[("TALLY_COUNTER_ENDPOINTS", "https://127.0.0.1:1")]);
    assert!(!ok && out.contains("TALLY_COUNTER_TLS_CA_FILE"), "https:// without a CA: {out}");
    let (ok, out) = run(gateway, &[("TALLY_COUNTER_TLS_CA_FILE", "/nonexistent/ca.crt")]);
    assert!(!ok && out.contains("TALLY_COUNTER_TLS_CA_FILE /nonexistent/ca.crt"), "{out}");
    let certs = TestCerts::generate("tally-tls-settings");
    let (cert, key) = (path(&certs.server_cert), path(&certs.server_key));
    // A certificate with another certificate's key.
    let (ok, out) =
        run(gateway, &[("TALLY_TLS_CERT_FILE", cert.as_str()), ("TALLY_TLS_KEY_FILE", &path(&certs.client_key))]);
    assert!(!ok && out.contains("TALLY_TLS_KEY_FILE"), "a key that does not match: {out}");
    let counter = common::workspace_binary("tally-counter");
    let (ok, out) = run(&counter, &[("TALLY_TLS_CERT_FILE", key.as_str()), ("TALLY_TLS_KEY_FILE", key.as_str())]);
    assert!(
        !ok && out.contains("TALLY_TLS_CERT_FILE") && out.contains("no PEM certificate"),
        "a key as certificate: {out}"
    );
    let (ok, out) = run(&counter, &[("TALLY_TLS_CLIENT_CA_FILE", cert.as_str())]);
    assert!(
        !ok && (out.contains("TALLY_TLS_CERT_FILE") || out.contains("tls-cert-file")),
        "a client CA without a certificate: {out}"
    );
}
