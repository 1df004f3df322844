//! The public port's bounds on requests in flight and on the bytes of
//! their bodies: beyond either a request is shed with 503 at once, never
//! queued.
//!
//! Why not a `tokio::sync::Semaphore`: nothing ever waits here, and a
//! semaphore's release takes its waiter list's mutex every time. Shared by
//! every worker, that mutex and the permit count were cache lines moving
//! between cores on each request. The gate is one counter: entering is a
//! compare-and-swap, leaving a decrement.
//!
//! Why the body bytes live here too: the request count alone lets clients
//! make the gateway hold `cap` × the largest body at once (4 GiB at the
//! defaults). Each pass reserves its body's bytes before they are read and
//! gives them back when the request ends, so what bodies hold is bounded by
//! one budget, as Envoy's overload manager bounds buffered bytes. Kept beside
//! the request count, the reservation touches a cache line the pass has
//! just taken.
//!
//! The counts are exported as `tally_gateway_http_requests_in_flight` (the
//! per-pod metric the operator's docs suggest for scaling the gateways
//! through prometheus-adapter) and `tally_gateway_http_request_body_bytes`,
//! read when scraped.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

/// Admits up to `cap` requests at once, whose bodies hold at most
/// `body_cap` bytes together; both caps change live.
#[derive(Debug)]
pub struct InFlightGate {
    taken: AtomicUsize,
    cap: AtomicUsize,
    body_bytes: AtomicUsize,
    body_cap: AtomicUsize,
}

/// One admitted request and the body bytes it reserved; leaves the gate,
/// and gives the bytes back, when dropped.
#[must_use = "the request is admitted only while its pass is held"]
pub struct Pass<'a> {
    gate: &'a InFlightGate,
    reserved: usize,
}

impl InFlightGate {
    pub fn new(cap: usize, body_cap: usize) -> InFlightGate {
        InFlightGate {
            taken: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
            body_bytes: AtomicUsize::new(0),
            body_cap: AtomicUsize::new(body_cap),
        }
    }

    /// A new cap. Raised, it admits more at once; lowered, the requests in
    /// flight finish and new ones are admitted once fewer than `cap` remain.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }

    /// A new body budget. Lowered, the bodies held keep their bytes and new
    /// reservations wait for room below it.
    pub fn set_body_cap(&self, body_cap: usize) {
        self.body_cap.store(body_cap, Ordering::Release);
    }

    /// A pass, unless `cap` requests are in flight.
    pub fn try_enter(&self) -> Option<Pass<'_>> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.cap.load(Ordering::Acquire) {
                return None;
            }
            match self.taken.compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Pass { gate: self, reserved: 0 }),
                Err(now) => taken = now,
            }
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Bytes reserved by the bodies of the requests in flight now.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes.load(Ordering::Acquire)
    }
}

impl Pass<'_> {
    /// Reserves `bytes` more of the body budget for this request, held
    /// until the pass is dropped; false (nothing reserved) when the
    /// bodies in flight would then hold more than the budget.
    pub fn reserve_body(&mut self, bytes: usize) -> bool {
        let gate = self.gate;
        let mut held = gate.body_bytes.load(Ordering::Relaxed);
        loop {
            let wanted = held.saturating_add(bytes);
            if wanted > gate.body_cap.load(Ordering::Acquire) {
                return false;
            }
            match gate.body_bytes.compare_exchange_weak(held, wanted, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.reserved += bytes;
                    return true;
                }
                Err(now) => held = now,
            }
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.gate.body_bytes.fetch_sub(self.reserved, Ordering::AcqRel);
        }
        self.gate.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Collector for InFlightGate {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Public requests being served now (TALLY_MAX_IN_FLIGHT bounds them)";
        gauge(&mut encoder, "http_requests_in_flight", help, self.in_flight())?;
        let help = "Bytes the bodies of the public requests being served hold now (TALLY_MAX_BODY_BYTES_IN_FLIGHT bounds them)";
        gauge(&mut encoder, "http_request_body_bytes", help, self.body_bytes())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_again_once_a_pass_is_dropped() {
        let gate = InFlightGate::new(2, 0);
        let first = gate.try_enter().expect("room");
        let _second = gate.try_enter().expect("room");
        assert!(gate.try_enter().is_none(), "the third is shed");
        drop(first);
        assert!(gate.try_enter().is_some(), "a freed place admits again");
        assert_eq!(gate.in_flight(), 1, "the pass of the last call was dropped at once");
    }

    #[test]
    fn a_lowered_cap_lets_those_in_flight_finish_and_admits_below_it() {
        let gate = InFlightGate::new(3, 0);
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
        let gate = InFlightGate::new(3, 0);
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
        let gate = std::sync::Arc::new(InFlightGate::new(4, 100));
        let mut registry = prometheus_client::registry::Registry::with_prefix("tally_gateway");
        registry.register_collector(Box::new(gate.clone()));
        let (mut one, _two) = (gate.try_enter().expect("room"), gate.try_enter());
        assert!(one.reserve_body(42));
        let text = tally_runtime::metrics::render(&registry);
        assert!(text.contains("# TYPE tally_gateway_http_requests_in_flight gauge"), "{text}");
        assert!(text.contains("\ntally_gateway_http_requests_in_flight 2\n"), "{text}");
        assert!(text.contains("# TYPE tally_gateway_http_request_body_bytes gauge"), "{text}");
        assert!(text.contains("\ntally_gateway_http_request_body_bytes 42\n"), "{text}");
    }

    #[test]
    fn bodies_reserve_up_to_the_budget_and_give_it_back_with_their_pass() {
        let gate = InFlightGate::new(10, 100);
        let mut first = gate.try_enter().expect("room");
        assert!(first.reserve_body(60));
        assert!(first.reserve_body(30), "a body read in chunks reserves each");
        let mut second = gate.try_enter().expect("room");
        assert!(!second.reserve_body(11), "90 held, 11 more would pass 100");
        assert_eq!(gate.body_bytes(), 90, "a refused reservation takes nothing");
        assert!(second.reserve_body(10), "exactly the budget fits");
        drop(first);
        assert_eq!(gate.body_bytes(), 10, "the first request's 90 bytes came back");
        assert!(!second.reserve_body(usize::MAX), "no overflow past the budget");
        drop(second);
        assert_eq!((gate.body_bytes(), gate.in_flight()), (0, 0));
    }

    #[test]
    fn a_lowered_body_budget_keeps_what_is_held_and_refuses_above_it() {
        let gate = InFlightGate::new(10, 100);
        let mut held = gate.try_enter().expect("room");
        assert!(held.reserve_body(80));
        gate.set_body_cap(50);
        let mut next = gate.try_enter().expect("room");
        assert!(!next.reserve_body(1), "80 held above the new budget of 50");
        drop(held);
        assert!(next.reserve_body(50), "room again once the held bytes came back");
    }
}
