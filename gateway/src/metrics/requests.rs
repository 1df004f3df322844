//! The per-request HTTP series (`http_requests_total` by route, method and
//! status; `http_request_duration_seconds` by route), kept per worker
//! thread and summed when scraped.
//!
//! Why not prometheus-client's `Family` of counters and histograms: every
//! request then takes the family's lock, the histogram's write lock and
//! bumps counters that every worker shares, each a cache line moved between
//! cores. Leaving those out together with the in-flight bound's semaphore
//! (since replaced by [`crate::api::InFlightGate`]) saved up to 2.7 % of the
//! server CPU per increment in turns
//! (docs/bench/ab-2026-11-30-shared-writes-upper-bound.md). Here a request
//! touches only its worker's shard, whose lock no other thread takes but a
//! scrape.
//!
//! As prometheus-client does for an empty family, a family with no series
//! yet is not exported.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

use super::{HttpLabels, RouteLabel};

/// Shards: one per worker thread (workers beyond this share), and shard 0
/// for requests served off the workers (tests, single-runtime setups).
const SHARDS: usize = 17;

type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// One worker's series: a latency histogram per route, method and status,
/// whose count is also that series' `http_requests_total` (one map lookup
/// per request; the per-route histograms are summed when scraped). Aligned
/// so two shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Map<HttpLabels, Durations>>);

/// A latency histogram: per-bucket (not cumulative) counts.
#[derive(Clone, Debug)]
struct Durations {
    sum: f64,
    count: u64,
    buckets: Vec<u64>,
}

/// Adds `part` to the histogram of `key` in `totals`.
fn sum_into<K: Ord>(totals: &mut BTreeMap<K, Durations>, key: K, part: &Durations) {
    let total =
        totals.entry(key).or_insert_with(|| Durations { sum: 0.0, count: 0, buckets: vec![0; part.buckets.len()] });
    total.sum += part.sum;
    total.count += part.count;
    total.buckets.iter_mut().zip(&part.buckets).for_each(|(total, part)| *total += part);
}

/// The HTTP request series of one listener (registered as a collector).
#[derive(Debug)]
pub struct RequestMetrics {
    shards: Box<[Shard]>,
    /// Upper bounds of the latency buckets, the last one `f64::MAX` (+Inf).
    bounds: Box<[f64]>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shard")
    }
}

impl RequestMetrics {
    pub fn new() -> RequestMetrics {
        let bounds = tally_runtime::metrics::latency_buckets().chain(std::iter::once(f64::MAX)).collect();
        RequestMetrics { shards: (0..SHARDS).map(|_| Shard::default()).collect(), bounds }
    }

    /// Records one answered (or cancelled) request.
    pub fn record(&self, labels: HttpLabels, elapsed: Duration) {
        let shard = match tally_runtime::workers::current() {
            Some(worker) => 1 + worker % (SHARDS - 1),
            None => 0,
        };
        let seconds = elapsed.as_secs_f64();
        let bucket = self.bounds.iter().position(|bound| seconds <= *bound).unwrap_or(self.bounds.len() - 1);
        let mut series = self.shards[shard].0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let durations = series.entry(labels).or_insert_with(|| Durations {
            sum: 0.0,
            count: 0,
            buckets: vec![0; self.bounds.len()],
        });
        durations.sum += seconds;
        durations.count += 1;
        durations.buckets[bucket] += 1;
    }

    /// Every shard's series summed, in label order: by route, method and
    /// status, and by route alone.
    fn totals(&self) -> (BTreeMap<HttpLabels, Durations>, BTreeMap<&'static str, Durations>) {
        let mut by_labels = BTreeMap::new();
        for shard in &self.shards {
            let series = shard.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (labels, part) in series.iter() {
                sum_into(&mut by_labels, labels.clone(), part);
            }
        }
        let mut by_route = BTreeMap::new();
        for (labels, part) in &by_labels {
            sum_into(&mut by_route, labels.route, part);
        }
        (by_labels, by_route)
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics::new()
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (requests, durations) = self.totals();
        if requests.is_empty() {
            return Ok(()); // nothing recorded, so no durations either
        }
        let mut family = encoder.encode_descriptor(
            "http_requests",
            "HTTP requests by route, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (labels, histogram) in &requests {
            family.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&histogram.count, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration_seconds",
            "HTTP request latency.",
            None,
            MetricType::Histogram,
        )?;
        for (route, histogram) in &durations {
            let buckets: Vec<(f64, u64)> = self.bounds.iter().copied().zip(histogram.buckets.iter().copied()).collect();
            family.encode_family(&RouteLabel { route })?.encode_histogram::<NoLabelSet>(
                histogram.sum,
                histogram.count,
                &buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
