//! Gateway test harness: real redis-server, tally-counter and tally-gateway
//! processes on loopback ports, and a small JSON-over-HTTP client.
#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
#[allow(unused_imports)]
pub use tally_testkit::free_port;
pub use tally_testkit::{RedisServer, Service, unique, workspace_binary};

pub fn start_counter(store: &str, env: &[(&str, &str)]) -> Service {
    let mut all = vec![("TALLY_STORE", store)];
    all.extend_from_slice(env);
    Service::start(&workspace_binary("tally-counter"), &all)
}

/// Waits until `counter` reports its store up. A gateway that checks health
/// rarely (to keep checks out of a test's way) must find the counter already
/// serving at its first check, or it waits a whole interval for the next.
pub fn wait_store_up(counter: &Service) {
    counter.wait_for_log("the counter's store up", |l| {
        l.contains(tally_runtime::log_events::STORE_READINESS_CHANGED) && l.contains("up=true")
    });
}

pub fn start_gateway(endpoints: &str, env: &[(&str, &str)]) -> Service {
    let mut all = vec![("TALLY_COUNTER_ENDPOINTS", endpoints), ("TALLY_HEALTH_INTERVAL_MS", "100")];
    all.extend_from_slice(env);
    let gateway = Service::start(Path::new(env!("CARGO_BIN_EXE_tally-gateway")), &all);
    // Warm-up: the gateway takes traffic once an endpoint passed its health check.
    gateway.wait_for_log("a healthy counter endpoint", |l| {
        l.contains(tally_runtime::log_events::ENDPOINT_HEALTH_CHANGED)
            && (l.contains("healthy=true") || l.contains(r#""healthy":true"#))
    });
    gateway
}

/// redis-server + tally-counter on it + tally-gateway in front.
pub struct Stack {
    pub redis: RedisServer,
    pub counter: Service,
    pub gateway: Service,
    pub http: Http,
}

impl Stack {
    pub fn start(gateway_env: &[(&str, &str)]) -> Stack {
        let redis = RedisServer::start();
        let counter = start_counter(&redis.url(), &[]);
        let gateway = start_gateway(&counter.grpc_endpoint(), gateway_env);
        let http = Http::new(gateway.http_base());
        Stack { redis, counter, gateway, http }
    }
}

/// A JSON HTTP client bound to one gateway.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: String) -> Http {
        let client = reqwest::Client::builder().pool_max_idle_per_host(200).build().expect("http client");
        Http { base, client }
    }

    /// Sends a request with a raw body; returns the status and the body parsed as JSON.
    pub async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let (status, _, json) = self.exchange(method, path, body).await;
        (status, json)
    }

    /// As [`Http::send`], with the answer's headers.
    pub async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: non-JSON body ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, headers, json)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, Some(body.to_string().into_bytes())).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    /// `current_value` of a counter read through the gateway.
    pub async fn value(&self, resource_id: &str, counter_type: &str) -> i64 {
        let (status, body) = self.get(&format!("/api/v1/counter/{resource_id}/{counter_type}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["current_value"].as_i64().expect("current_value")
    }
}

/// The `Retry-After` header of an answer, if it has a readable one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<&str> {
    headers.get("retry-after").and_then(|v| v.to_str().ok())
}

/// Sum of a gateway metric's samples (scraped from `admin`, the admin base
/// URL) named exactly `name` whose line contains every `filter` (0 when none).
pub async fn metric(admin: &str, name: &str, filters: &[&str]) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics")).await.expect("scrape").text().await.expect("text");
    tally_testkit::prometheus::sum(&text, name, filters).unwrap_or(0.0)
}

/// Scrapes the gateway until `metric` satisfies `reached`, and returns it.
/// The gateway is another process: no event crosses to the test, so it
/// polls, bounded in time (a loaded CI machine may be slow to get there),
/// and panics naming `what` and the last value after 15 s.
pub async fn metric_reaches(
    admin: &str,
    name: &str,
    filters: &[&str],
    what: &str,
    reached: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = metric(admin, name, filters).await;
        if reached(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {name} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await; // the next scrape
    }
}

/// Records the peak RSS of a process until dropped.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> PeakRss {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(tally_testkit::rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        PeakRss { peak, stop }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
