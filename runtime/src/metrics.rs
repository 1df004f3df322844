//! Prometheus helpers: the histogram shapes both services use, and the text
//! exposition.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Latency buckets from 50 µs to ~6.5 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The upper bounds of [`latency_histogram`]'s buckets (without +Inf).
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 18)
}

/// Size buckets from 1 to 4096 (operations per batch and the like).
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// The Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
