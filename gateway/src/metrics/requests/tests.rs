use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tally_runtime::metrics::{latency_histogram, render};
use tally_runtime::workers::Workers;

use super::*;

const INCREMENT: &str = "/api/v1/counter/increment";
const GET: &str = "/api/v1/counter/{resource_id}/{counter_type}";

/// What each worker (and the test's own thread) records: the same mix of
/// routes, statuses and latencies, from 10 µs (below the first bound) to
/// 20 s (above the last), two of them exactly on a bound (50 and 100 µs:
/// a bucket holds what is at or under its bound).
fn requests() -> Vec<(HttpLabels, Duration)> {
    let mut requests = Vec::new();
    for (i, micros) in [10, 50, 60, 100, 240, 3_000, 70_000, 900_000, 20_000_000].into_iter().enumerate() {
        let status = if i % 3 == 0 { 400 } else { 200 };
        requests.push((HttpLabels { route: INCREMENT, method: "POST", status }, Duration::from_micros(micros)));
        requests.push((HttpLabels { route: GET, method: "GET", status: 200 }, Duration::from_micros(micros * 2)));
    }
    requests
}

/// The exposition's lines, sorted (the order of series within a family is
/// not part of the format), each `_sum` rounded to nanoseconds: summed
/// per worker, then across workers, its last digits differ.
fn lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("_sum{") {
            Some(_) => {
                let (series, sum) = line.rsplit_once(' ').expect("a sample");
                format!("{series} {:.9}", sum.parse::<f64>().expect("a number"))
            }
            None => line.to_owned(),
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn scraped_as_prometheus_client_families_of_every_worker_together() {
    let metrics = Arc::new(RequestMetrics::new());
    let workers = Workers::start(2, "metrics-test").expect("workers");
    for handle in workers.handles() {
        let metrics = metrics.clone();
        handle
            .spawn(async move {
                for (labels, elapsed) in requests() {
                    metrics.record(labels, elapsed);
                }
            })
            .await
            .expect("recorded on the worker");
    }
    for (labels, elapsed) in requests() {
        metrics.record(labels, elapsed);
    }
    let used: Vec<bool> = metrics.shards.iter().map(|shard| !shard.0.lock().expect("unpoisoned").is_empty()).collect();
    assert_eq!(used[..3], [true, true, true], "off the workers, worker 0, worker 1: a shard each");
    assert!(used[3..].iter().all(|used| !used), "no other shard used");

    // The same requests into prometheus-client's own families.
    let counts: Family<HttpLabels, Counter> = Family::default();
    let durations: Family<RouteLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(latency_histogram);
    for _ in 0..3 {
        for (labels, elapsed) in requests() {
            durations.get_or_create(&RouteLabel { route: labels.route }).observe(elapsed.as_secs_f64());
            counts.get_or_create(&labels).inc();
        }
    }
    let mut expected = Registry::with_prefix("tally_gateway");
    expected.register("http_requests", "HTTP requests by route, method and status", counts);
    expected.register("http_request_duration_seconds", "HTTP request latency", durations);
    let mut sharded = Registry::with_prefix("tally_gateway");
    sharded.register_collector(Box::new(metrics));

    let (sharded, expected) = (render(&sharded), render(&expected));
    assert_eq!(lines(&sharded), lines(&expected));
    assert!(
        sharded.contains(
            r#"tally_gateway_http_requests_total{route="/api/v1/counter/increment",method="POST",status="400"} 9"#
        ),
        "{sharded}"
    );
    assert!(
        sharded.contains(r#"http_request_duration_seconds_bucket{le="+Inf",route="/api/v1/counter/increment"} 27"#)
    );
}

#[test]
fn nothing_recorded_is_exported_as_prometheus_client_exports_empty_families() {
    let mut sharded = Registry::default();
    sharded.register_collector(Box::new(RequestMetrics::new()));
    let mut expected = Registry::default();
    expected.register("http_requests", "HTTP requests", Family::<HttpLabels, Counter>::default());
    let durations: Family<RouteLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(latency_histogram);
    expected.register("http_request_duration_seconds", "HTTP request latency", durations);
    assert_eq!(render(&sharded), render(&expected));
    assert_eq!(render(&sharded), "# EOF\n", "no family without series");
}
