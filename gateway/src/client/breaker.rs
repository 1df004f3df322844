//! Per-endpoint circuit breaker, as a small state machine
//! with the clock passed in, so every transition is unit-tested.
//!
//! Closed → Open after `failure_threshold` consecutive failures; Open for a
//! recovery time that doubles with each consecutive ejection (capped, with
//! ±20 % jitter so gateways do not probe in lockstep); then HalfOpen, where
//! at most `half_open_probes` calls go through: a success closes it, a
//! failure opens it again for longer. Whether an endpoint may be ejected at
//! all (the cap on ejected endpoints) is decided by the caller.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub recovery: Duration,
    pub max_recovery: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant, ejections: u32 },
    HalfOpen { probes: u32, ejections: u32 },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

pub struct Breaker {
    settings: Arc<ArcSwap<BreakerSettings>>,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(settings: Arc<ArcSwap<BreakerSettings>>) -> Breaker {
        Breaker { settings, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn settings(&self) -> BreakerSettings {
        **self.settings.load()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> State {
        *self.lock()
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state(), State::Open { .. })
    }

    /// Whether [`Breaker::try_acquire`] would let a call through now (no side effect).
    pub fn admits(&self, now: Instant) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { probes, .. } => probes < self.settings().half_open_probes,
        }
    }

    /// Whether a call may go to this endpoint now; in HalfOpen this takes
    /// one of the probe slots.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until, ejections } if now >= until => {
                *state = State::HalfOpen { probes: 1, ejections };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probes, ejections } if probes < self.settings().half_open_probes => {
                *state = State::HalfOpen { probes: probes + 1, ejections };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Records a successful call. Returns the new state if it changed.
    pub fn on_success(&self) -> Option<State> {
        let mut state = self.lock();
        let next = State::Closed { failures: 0 };
        let changed = !matches!(*state, State::Closed { .. });
        *state = next;
        changed.then_some(next)
    }

    /// Records a failed call; `may_eject` is false when the cap on ejected
    /// endpoints is reached. `jitter` in [0, 1) spreads recovery times.
    /// Returns the new state if it changed.
    pub fn on_failure(&self, now: Instant, may_eject: bool, jitter: f64) -> Option<State> {
        let mut state = self.lock();
        let next = match *state {
            State::Closed { failures } if failures + 1 >= self.settings().failure_threshold && may_eject => {
                self.open(now, 1, jitter)
            }
            State::Closed { failures } => State::Closed { failures: failures + 1 },
            State::HalfOpen { ejections, .. } => self.open(now, ejections + 1, jitter),
            open @ State::Open { .. } => open,
        };
        let changed = next.name() != state.name();
        *state = next;
        changed.then_some(next)
    }

    fn open(&self, now: Instant, ejections: u32, jitter: f64) -> State {
        let factor = 2u32.saturating_pow(ejections.saturating_sub(1).min(16));
        let settings = self.settings();
        let base = settings.recovery.saturating_mul(factor).min(settings.max_recovery);
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        State::Open { until: now + base.mul_f64(spread), ejections }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failure_threshold: 3,
        recovery: Duration::from_secs(1),
        max_recovery: Duration::from_secs(4),
        half_open_probes: 2,
    };

    fn breaker() -> Breaker {
        Breaker::new(Arc::new(ArcSwap::from_pointee(SETTINGS)))
    }

    #[test]
    fn new_thresholds_apply_to_the_next_transition() {
        let shared = Arc::new(ArcSwap::from_pointee(SETTINGS));
        let b = Breaker::new(shared.clone());
        let now = Instant::now();
        b.on_failure(now, true, 0.5);
        shared.store(Arc::new(BreakerSettings { failure_threshold: 10, ..SETTINGS }));
        for _ in 0..8 {
            assert_eq!(b.on_failure(now, true, 0.5), None, "under the raised threshold");
        }
        assert_eq!(b.on_failure(now, true, 0.5).map(|s| s.name()), Some("open"), "the tenth failure opens it");
        shared.store(Arc::new(BreakerSettings { recovery: Duration::from_secs(3), ..SETTINGS }));
        b.try_acquire(now + Duration::from_secs(10));
        b.on_failure(now, true, 0.5);
        let State::Open { until, .. } = b.state() else { panic!("reopened") };
        assert_eq!(until - now, Duration::from_secs(4), "doubled new recovery, capped at max_recovery");
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let now = Instant::now();
        b.on_failure(now, true, 0.5);
        b.on_failure(now, true, 0.5);
        b.on_success();
        b.on_failure(now, true, 0.5);
        b.on_failure(now, true, 0.5);
        assert!(!b.is_open(), "a success resets the count");
        assert_eq!(b.on_failure(now, true, 0.5).map(|s| s.name()), Some("open"));
        assert!(!b.try_acquire(now));
    }

    #[test]
    fn respects_the_ejection_cap() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..10 {
            b.on_failure(now, false, 0.5);
        }
        assert!(!b.is_open());
        assert!(b.try_acquire(now));
    }

    #[test]
    fn half_open_admits_limited_probes_then_closes_or_backs_off() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.on_failure(t0, true, 0.5);
        }
        let State::Open { until, .. } = b.state() else { panic!("open") };
        assert_eq!(until - t0, Duration::from_secs(1));
        assert!(!b.try_acquire(t0 + Duration::from_millis(900)));
        let later = t0 + Duration::from_secs(1);
        assert!(b.try_acquire(later), "first probe");
        assert!(b.try_acquire(later), "second probe");
        assert!(!b.try_acquire(later), "no more than two probes");

        // A failed probe reopens for twice as long.
        b.on_failure(later, true, 0.5);
        let State::Open { until, ejections } = b.state() else { panic!("reopened") };
        assert_eq!((until - later, ejections), (Duration::from_secs(2), 2));

        // … capped at max_recovery, and a successful probe closes it.
        let mut now = until;
        for _ in 0..5 {
            assert!(b.try_acquire(now));
            b.on_failure(now, true, 0.5);
            let State::Open { until, .. } = b.state() else { panic!("open") };
            assert!(until - now <= Duration::from_secs(4));
            now = until;
        }
        assert!(b.try_acquire(now));
        assert_eq!(b.on_success().map(|s| s.name()), Some("closed"));
        assert!(b.try_acquire(now));
    }

    #[test]
    fn jitter_spreads_recovery_by_twenty_percent() {
        let now = Instant::now();
        let times: Vec<Duration> = [0.0, 0.999]
            .iter()
            .map(|&j| {
                let b = breaker();
                for _ in 0..3 {
                    b.on_failure(now, true, j);
                }
                let State::Open { until, .. } = b.state() else { panic!("open") };
                until - now
            })
            .collect();
        assert_eq!(times[0], Duration::from_millis(800));
        assert!(times[1] > Duration::from_millis(1190) && times[1] <= Duration::from_millis(1200));
    }
}
