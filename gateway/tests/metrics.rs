//! `/metrics` of both services after a short load: valid Prometheus text
//! exposition, every metric documented in `docs/observability.md` present
//! and every one exported documented, and values that agree with the traffic sent. The Grafana dashboard only
//! uses documented metrics.

mod common;

use std::collections::BTreeSet;

use common::{Stack, unique};
use tally_testkit::prometheus::{Sample, parse};

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

/// Metric names in the metric tables of `docs/observability.md` (rows
/// starting ``| `tally_…` |``), by prefix.
fn documented(prefix: &str) -> BTreeSet<String> {
    let docs = include_str!("../../docs/observability.md");
    docs.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The family name a documented name is typed under (`_total` is the sample suffix of counters).
fn family(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// The families of `typed` (one service's exposition) with `prefix` that no
/// row of `docs/observability.md` documents.
fn undocumented<'a>(typed: &'a BTreeSet<String>, prefix: &str) -> Vec<&'a String> {
    let known: BTreeSet<String> = documented(prefix).iter().map(|n| family(n).to_string()).collect();
    typed.iter().filter(|f| f.starts_with(prefix) && !known.contains(*f)).collect()
}

#[tokio::test]
async fn metrics_parse_match_the_docs_and_count_the_traffic() {
    let stack = Stack::start(&[]);
    let resource = unique("metrics");
    for _ in 0..50 {
        let (status, _) = stack
            .http
            .post("/api/v1/counter/increment", serde_json::json!({"resource_id": resource, "counter_type": "likes"}))
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = stack.http.get(&format!("/api/v1/counter/{resource}/likes")).await;
    assert_eq!(status, 200);
    let (status, _) = stack.http.get(&format!("/api/v1/counter/{resource}/likes")).await;
    assert_eq!(status, 200);
    let (status, _) = stack.http.post("/api/v1/counter/increment", serde_json::json!({"resource_id": ""})).await;
    assert_eq!(status, 400);

    let text = reqwest::get(format!("{}/metrics", stack.gateway.admin_base()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let (gateway, typed) = parse(&text).unwrap_or_else(|e| panic!("gateway /metrics: {e}"));
    let missing: Vec<String> =
        documented("tally_gateway_").into_iter().filter(|n| !typed.contains(family(n))).collect();
    assert!(missing.is_empty(), "documented in docs/observability.md, not exported by the gateway: {missing:?}");
    let unknown = undocumented(&typed, "tally_gateway_");
    assert!(unknown.is_empty(), "exported by the gateway, not in docs/observability.md: {unknown:?}");
    let increments = [("route", "/api/v1/counter/increment"), ("method", "POST")];
    assert_eq!(
        value(&gateway, "tally_gateway_http_requests_total", &[increments[0], increments[1], ("status", "200")]),
        50.0
    );
    assert_eq!(value(&gateway, "tally_gateway_http_requests_total", &[increments[0], ("status", "400")]), 1.0);
    assert_eq!(value(&gateway, "tally_gateway_http_request_duration_seconds_count", &increments[..1]), 51.0);
    assert_eq!(value(&gateway, "tally_gateway_cache_lookups_total", &[("result", "hit")]), 1.0, "second read is a hit");
    assert!(value(&gateway, "tally_gateway_endpoint_picks_total", &[]) >= 1.0);
    assert_eq!(value(&gateway, "tally_gateway_endpoint_healthy", &[]), 1.0);
    assert_eq!(value(&gateway, "tally_gateway_endpoint_breaker_state", &[]), 0.0, "closed");
    let coalesced = value(&gateway, "tally_gateway_coalesced_operations_sum", &[]);
    assert_eq!(coalesced, 50.0, "every single increment went through the coalescer");

    let admin = stack.counter.addr("admin");
    let text = reqwest::get(format!("http://{admin}/metrics")).await.expect("scrape").text().await.expect("body");
    let (counter, typed) = parse(&text).unwrap_or_else(|e| panic!("counter /metrics: {e}"));
    let missing: Vec<String> =
        documented("tally_counter_").into_iter().filter(|n| !typed.contains(family(n))).collect();
    assert!(missing.is_empty(), "documented in docs/observability.md, not exported by the counter: {missing:?}");
    let unknown = undocumented(&typed, "tally_counter_");
    assert!(unknown.is_empty(), "exported by the counter, not in docs/observability.md: {unknown:?}");
    let calls = value(&counter, "tally_counter_grpc_requests_total", &[("method", "BatchIncrement"), ("code", "OK")]);
    assert_eq!(calls, value(&gateway, "tally_gateway_upstream_requests_total", &[("method", "BatchIncrement")]));
    assert_eq!(value(&counter, "tally_counter_commit_batch_operations_sum", &[]), 50.0, "50 operations committed");
    assert_eq!(value(&counter, "tally_counter_store_up", &[]), 1.0);
    assert_eq!(value(&counter, "tally_counter_store_errors_total", &[]), 0.0);
}

#[test]
fn the_dashboard_uses_only_documented_metrics() {
    let dashboard = include_str!("../../deploy/grafana/tally-dashboard.json");
    let mut known = documented("tally_");
    known.extend(documented("tally_").iter().map(|n| family(n).to_string()));
    let mut used = BTreeSet::new();
    for (i, _) in dashboard.match_indices("tally_") {
        let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !["tally_gateway_", "tally_counter_", "tally_operator_"].iter().any(|p| name.starts_with(p)) {
            continue; // e.g. a `tally_(gateway|counter)_.*` selector
        }
        let base =
            ["_bucket", "_sum", "_count"].iter().fold(name.clone(), |n, s| n.strip_suffix(s).unwrap_or(&n).to_string());
        used.insert(base);
    }
    assert!(used.len() >= 10, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !known.contains(*n)).collect();
    assert!(unknown.is_empty(), "dashboard metrics missing from docs/observability.md: {unknown:?}");
}
