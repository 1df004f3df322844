//! The public port's bound on requests in flight: beyond it a request is
//! shed with 503 at once, never queued.
//!
//! Why not a `tokio::sync::Semaphore`: nothing ever waits here, and a
//! semaphore's release takes its waiter list's mutex every time. Shared by
//! every worker, that mutex and the permit count were cache lines moving
//! between cores on each request. The gate is one counter: entering is a
//! compare-and-swap, leaving a decrement.
//!
//! The count is exported as `tally_gateway_http_requests_in_flight`, read
//! when scraped (the per-pod metric the operator's docs suggest for
//! scaling the gateways through prometheus-adapter).

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

/// Admits up to `cap` requests at once; the cap changes live.
#[derive(Debug)]
pub struct InFlightGate {
    taken: AtomicUsize,
    cap: AtomicUsize,
}

/// One admitted request; leaves the gate when dropped.
#[must_use = "the request is admitted only while its pass is held"]
pub struct Pass<'a>(&'a InFlightGate);

impl InFlightGate {
    pub fn new(cap: usize) -> InFlightGate {
        InFlightGate { taken: AtomicUsize::new(0), cap: AtomicUsize::new(cap) }
    }

    /// A new cap. Raised, it admits more at once; lowered, the requests in
    /// flight finish and new ones are admitted once fewer than `cap` remain.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }

    /// A pass, unless `cap` requests are in flight.
    pub fn try_enter(&self) -> Option<Pass<'_>> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.cap.load(Ordering::Acquire) {
                return None;
            }
            match self.taken.compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Pass(self)),
                Err(now) => taken = now,
            }
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Collector for InFlightGate {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Public requests being served now (TALLY_MAX_IN_FLIGHT bounds them)";
        let gauge = ConstGauge::new(i64::try_from(self.in_flight()).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor("http_requests_in_flight", help, None, MetricType::Gauge)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_again_once_a_pass_is_dropped() {
        let gate = InFlightGate::new(2);
        let first = gate.try_enter().expect("room");
        let _second = gate.try_enter().expect("room");
        assert!(gate.try_enter().is_none(), "the third is shed");
        drop(first);
        assert!(gate.try_enter().is_some(), "a freed place admits again");
        assert_eq!(gate.in_flight(), 1, "the pass of the last call was dropped at once");
    }

    #[test]
    fn a_lowered_cap_lets_those_in_flight_finish_and_admits_below_it() {
        let gate = InFlightGate::new(3);
        let passes: Vec<_> = (0..3).map(|_| gate.try_enter().expect("room")).collect();
        gate.set_cap(1);
        assert_eq!(gate.in_flight(), 3, "nothing in flight is cut off");
        let mut passes = passes.into_iter();
        drop(passes.next());
        assert!(gate.try_enter().is_none(), "two in flight, cap 1");
        drop(passes.next());
        assert!(gate.try_enter().is_none(), "one in flight, cap 1");
        drop(passes.next());
        let only = gate.try_enter().expect("none in flight");
        gate.set_cap(2);
        assert!(gate.try_enter().is_some(), "a raised cap admits at once");
        drop(only);
    }

    #[test]
    fn no_more_than_the_cap_are_ever_admitted_across_threads() {
        let gate = InFlightGate::new(3);
        // Counted apart from the gate: a pass handed out uncounted shows here.
        let (holders, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(pass) = gate.try_enter() {
                            peak.fetch_max(holders.fetch_add(1, Ordering::AcqRel) + 1, Ordering::AcqRel);
                            holders.fetch_sub(1, Ordering::AcqRel);
                            drop(pass);
                        }
                    }
                });
            }
        });
        let peak = peak.into_inner();
        assert!((1..=3).contains(&peak), "peak {peak} within the cap");
        assert_eq!(gate.in_flight(), 0, "every pass left");
    }

    #[test]
    fn the_count_is_scraped_as_a_gauge() {
        let gate = std::sync::Arc::new(InFlightGate::new(4));
        let mut registry = prometheus_client::registry::Registry::with_prefix("tally_gateway");
        registry.register_collector(Box::new(gate.clone()));
        let (_one, _two) = (gate.try_enter(), gate.try_enter());
        let text = tally_runtime::metrics::render(&registry);
        assert!(text.contains("# TYPE tally_gateway_http_requests_in_flight gauge"), "{text}");
        assert!(text.contains("\ntally_gateway_http_requests_in_flight 2\n"), "{text}");
    }
}
