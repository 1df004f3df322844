//! API keys on real processes: 401 without a known key, 403 outside a key's
//! scopes or resource prefix, 429 over its rate — each with nothing written —
//! idempotency keys scoped per principal, the keys file reloaded while the
//! gateway runs, and no key ever in the gateway's output.

mod common;

use std::time::{Duration, Instant};

use common::{metric, start_counter, start_gateway, unique};
use serde_json::{Value, json};

/// The keys file entry of `key` (its SHA-256, never the key).
fn entry(name: &str, key: &str, scopes: &str, extra: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("  - name: {name}\n    sha256: {hex}\n    scopes: [{scopes}]\n{extra}")
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn send(&self, key: Option<&str>, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("send")
    }

    async fn call(&self, key: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let response = self.send(key, method, path, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    async fn increment(&self, key: &str, resource: &str) -> (u16, Value) {
        let body = json!({"resource_id": resource, "counter_type": "likes"});
        self.call(Some(key), "POST", "/api/v1/counter/increment", Some(body)).await
    }

    /// A counter's value, read with the all-reading key.
    async fn value(&self, resource: &str) -> i64 {
        let (status, body) = self.call(Some(READER), "GET", &format!("/api/v1/counter/{resource}/likes"), None).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["current_value"].as_i64().expect("value")
    }
}

const WRITER: &str = "writer-key-0123456789";
const READER: &str = "reader-key-0123456789";
const LIMITED: &str = "limited-key-0123456789";
const OTHER: &str = "other-writer-key-0123456789";
const LATE: &str = "late-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_write_and_read() {
    let dir = std::env::temp_dir().join(unique("tally-keys"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys.yaml");
    let keys = [
        entry("writer", WRITER, "write", "    resource_prefix: \"post:\"\n"),
        entry("reader", READER, "read", ""),
        entry("limited", LIMITED, "write", "    rate_per_second: 1\n"),
        entry("other", OTHER, "write", ""),
    ];
    std::fs::write(&file, format!("keys:\n{}", keys.concat())).expect("keys file");
    let counter = start_counter("memory", &[]);
    let path = file.to_string_lossy().to_string();
    let env = [("TALLY_AUTH", "api_keys"), ("TALLY_AUTH_KEYS_FILE", path.as_str()), ("TALLY_AUTH_RELOAD_MS", "100")];
    let gateway = start_gateway(&counter.grpc_endpoint(), &env);
    let api = Api { base: gateway.http_base(), client: reqwest::Client::new() };
    let post = format!("post:{}", unique("p"));

    // No key, a malformed header, an unknown key: 401 with the Bearer challenge.
    let response = api.send(None, "GET", &format!("/api/v1/counter/{post}/likes"), None).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_some_and(|v| v.as_bytes().starts_with(b"Bearer")));
    let (status, body) = api.increment("not-a-key", &post).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthenticated")), "{body}");
    // The liveness route needs no key.
    assert_eq!(api.call(None, "GET", "/api/v1/health", None).await.0, 200);

    // Scopes and the resource prefix.
    assert_eq!(api.increment(WRITER, &post).await.0, 200);
    let outside = unique("user");
    let (status, body) = api.increment(WRITER, &outside).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("permission_denied")), "{body}");
    assert_eq!(api.value(&outside).await, 0, "a refused write writes nothing");
    assert_eq!(api.increment(READER, &post).await.0, 403, "no write scope");
    let (status, _) = api.call(Some(WRITER), "GET", &format!("/api/v1/counter/{post}/likes"), None).await;
    assert_eq!(status, 403, "no read scope");
    assert_eq!(api.value(&post).await, 1);
    // One operation outside the prefix refuses the whole batch.
    let batch = json!({"operations": [
        {"resource_id": post, "counter_type": "likes"},
        {"resource_id": outside, "counter_type": "likes"},
    ]});
    let (status, _) = api.call(Some(WRITER), "POST", "/api/v1/counter/batch-increment", Some(batch)).await;
    assert_eq!(status, 403);
    assert_eq!((api.value(&post).await, api.value(&outside).await), (1, 0), "nothing of the batch written");

    // Rate: one operation per second; the next is refused with Retry-After.
    let limited = unique("limited");
    assert_eq!(api.increment(LIMITED, &limited).await.0, 200);
    let body = json!({"resource_id": limited, "counter_type": "likes"});
    let response = api.send(Some(LIMITED), "POST", "/api/v1/counter/increment", Some(body)).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 =
        response.headers()["retry-after"].to_str().ok().and_then(|s| s.parse().ok()).expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(api.value(&limited).await, 1, "the limited request wrote nothing");

    // Idempotency keys belong to their principal: the same key from two
    // principals is two writes; a repeat by one is a replay.
    let shared = format!("post:{}", unique("shared"));
    let keyed = |key: &'static str| {
        let api = &api;
        let body = json!({"resource_id": shared, "counter_type": "likes", "idempotency_key": "order-1"});
        async move { api.call(Some(key), "POST", "/api/v1/counter/increment", Some(body)).await }
    };
    let (first, second) = (keyed(WRITER).await, keyed(OTHER).await);
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(second.1["data"]["current_value"], json!(2), "another principal's key does not suppress this write");
    let again = keyed(WRITER).await;
    assert_eq!((again.0, again.1["data"]["replayed"].clone()), (200, json!(true)), "{}", again.1);
    assert_eq!(api.value(&shared).await, 2);

    // A key added to the file works without a restart.
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str(&entry("late", LATE, "read, write", ""));
    std::fs::write(&file, text).expect("rewrite");
    let deadline = Instant::now() + Duration::from_secs(10);
    let late = unique("late");
    loop {
        let (status, _) = api.increment(LATE, &late).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await; // the reload is on a 100 ms poll
    }
    assert_eq!(api.value(&late).await, 1);

    let admin = gateway.admin_base();
    assert!(metric(&admin, "tally_gateway_auth_refused_total", &["unauthenticated"]).await >= 2.0);
    assert!(metric(&admin, "tally_gateway_auth_refused_total", &["forbidden"]).await >= 4.0);
    assert!(metric(&admin, "tally_gateway_auth_refused_total", &["rate_limited"]).await >= 1.0);
    assert_eq!(metric(&admin, "tally_gateway_auth_keys", &[]).await, 5.0);

    let (status, lines) = gateway.terminate();
    assert!(status.success(), "{status:?}");
    for secret in [WRITER, READER, LIMITED, OTHER, LATE] {
        assert!(!lines.iter().any(|l| l.contains(secret)), "a key appeared in the gateway's output");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_or_broken_keys_file_stops_startup_with_the_setting_named() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tally-gateway"));
    let run = |env: &[(&str, &str)]| {
        let output = std::process::Command::new(bin).envs(env.iter().copied()).output().expect("run");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout),
        )
    };
    let (ok, out) =
        run(&[("TALLY_AUTH", "api_keys"), ("TALLY_LISTEN", "127.0.0.1:0"), ("TALLY_ADMIN_LISTEN", "127.0.0.1:0")]);
    assert!(!ok && out.contains("TALLY_AUTH_KEYS_FILE"), "{out}");
    let dir = std::env::temp_dir().join(unique("tally-badkeys"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys.yaml");
    std::fs::write(&file, "keys:\n  - name: web\n    sha256: nothex\n    scopes: [read]\n").expect("write");
    let path = file.to_string_lossy().to_string();
    let env = [
        ("TALLY_AUTH", "api_keys"),
        ("TALLY_AUTH_KEYS_FILE", path.as_str()),
        ("TALLY_LISTEN", "127.0.0.1:0"),
        ("TALLY_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    let (ok, out) = run(&env);
    assert!(!ok && out.contains("TALLY_AUTH_KEYS_FILE") && out.contains("sha256"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// With API keys on, a request without a key is refused before its body
/// is read: a client with no key cannot make the gateway wait for, and
/// hold, a body. (Read first, this one would get 408 after the 60 s body
/// timeout: its announced body never comes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_key_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(unique("tally-keys"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys.yaml");
    std::fs::write(&file, format!("keys:\n{}", entry("writer", WRITER, "write", ""))).expect("keys file");
    let counter = start_counter("memory", &[]);
    let path = file.to_string_lossy().to_string();
    let env =
        [("TALLY_AUTH", "api_keys"), ("TALLY_AUTH_KEYS_FILE", path.as_str()), ("TALLY_HTTP_BODY_TIMEOUT_MS", "60000")];
    let gateway = start_gateway(&counter.grpc_endpoint(), &env);

    let mut stream = tokio::net::TcpStream::connect(gateway.addr("http")).await.expect("connect");
    let head = "POST /api/v1/counter/increment HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n\
                Content-Length: 900000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer)).await;
    let n = read.expect("answered before the body timeout").expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
