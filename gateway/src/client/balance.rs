//! Choice of endpoint per call: pure functions over the
//! usable endpoints, unit-tested for their distributions.
//!
//! Why not `tower::balance::p2c` or tonic's balanced channel: both choose
//! among services by *readiness*, and a tonic `Channel` is always ready (it
//! buffers), so they would keep routing to an endpoint that is dead, hung or
//! ejected by its breaker — the failure balancing must avoid. Choosing here
//! lets one decision see health, warm-up, the breaker's half-open probe
//! slots and the endpoint a retry must avoid, and keeps each input testable.

/// How the gateway spreads calls over healthy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Policy {
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer
    /// calls in flight (adapts to slow or overloaded counters). Also
    /// accepted as `least_conn`, the seed plan's name for it: over pooled
    /// HTTP/2 connections, calls in flight are what "least connections"
    /// can mean.
    #[value(alias = "least_conn")]
    LeastRequest,
    /// At random, in proportion to each endpoint's weight.
    Weighted,
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Weighted => "weighted",
        }
    }
}

/// What the policy knows about one usable endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub index: usize,
    pub in_flight: usize,
    pub weight: u32,
}

/// The endpoints to try, best first: the policy's choice, then the others
/// (so a caller whose first choice just became unavailable has a fallback).
/// `ticket` is a per-call sequence number: the round-robin position and the
/// seed of the random choices.
pub fn order(policy: Policy, candidates: &[Candidate], ticket: u64) -> Vec<usize> {
    let n = candidates.len();
    if n == 0 {
        return Vec::new();
    }
    let first = match policy {
        Policy::RoundRobin => (ticket % n as u64) as usize,
        Policy::LeastRequest => {
            let r = splitmix64(ticket);
            let a = (r % n as u64) as usize;
            let b = ((r >> 32) % n as u64) as usize;
            if candidates[b].in_flight < candidates[a].in_flight { b } else { a }
        }
        Policy::Weighted => {
            let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                (ticket % n as u64) as usize
            } else {
                let mut point = splitmix64(ticket) % total;
                candidates
                    .iter()
                    .position(|c| {
                        let w = u64::from(c.weight);
                        if point < w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            }
        }
    };
    (0..n).map(|offset| candidates[(first + offset) % n].index).collect()
}

/// A well-mixed 64-bit hash of the ticket (SplitMix64), enough randomness
/// for balancing without a random-number generator on the hot path.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(in_flight: &[usize], weights: &[u32]) -> Vec<Candidate> {
        in_flight
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(index, (&in_flight, &weight))| Candidate { index, in_flight, weight })
            .collect()
    }

    fn shares(policy: Policy, c: &[Candidate], calls: u64) -> Vec<f64> {
        let mut counts = vec![0u64; c.len()];
        for ticket in 0..calls {
            counts[order(policy, c, ticket)[0]] += 1;
        }
        counts.iter().map(|&k| k as f64 / calls as f64).collect()
    }

    #[test]
    fn round_robin_is_even_and_lists_every_endpoint() {
        let c = candidates(&[0, 0, 0], &[1, 1, 1]);
        assert_eq!(order(Policy::RoundRobin, &c, 4), vec![1, 2, 0]);
        for share in shares(Policy::RoundRobin, &c, 3000) {
            assert!((share - 1.0 / 3.0).abs() < 1e-9);
        }
    }

    #[test]
    fn weighted_follows_weights_within_two_percent() {
        let c = candidates(&[0, 0, 0], &[1, 3, 6]);
        let s = shares(Policy::Weighted, &c, 100_000);
        for (share, want) in s.iter().zip([0.1, 0.3, 0.6]) {
            assert!((share - want).abs() < 0.02, "{s:?}");
        }
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = candidates(&[50, 0, 0], &[1, 1, 1]);
        let s = shares(Policy::LeastRequest, &c, 30_000);
        // Endpoint 0 wins only when both choices land on it: 1/9 of the time.
        assert!((s[0] - 1.0 / 9.0).abs() < 0.02, "{s:?}");
        let even = shares(Policy::LeastRequest, &candidates(&[0, 0, 0], &[1, 1, 1]), 30_000);
        for share in even {
            assert!((share - 1.0 / 3.0).abs() < 0.03, "idle endpoints share evenly");
        }
    }

    #[test]
    fn no_candidates_no_choice() {
        assert!(order(Policy::Weighted, &[], 1).is_empty());
    }
}
