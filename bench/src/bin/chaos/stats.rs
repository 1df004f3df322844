//! What the clients saw, counted as they go: one [`Tally`] of request
//! outcomes per client kind (and one for the clean phase), plus the figures
//! only one kind has. Outcomes are kept by kind (status code, timeout, …)
//! rather than as ok/failed alone, so a failing run's report says *what*
//! went wrong without re-running it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How one HTTP request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A complete response with this status (a 200 with a body that is not
    /// the success envelope is [`Outcome::BadBody`]).
    Status(u16),
    /// A 200 whose body was not `{"status":"success",…}`.
    BadBody,
    /// An error answer with `Retry-After`: the gateway's word that nothing
    /// of the request was written (shed, or refused unrun by every counter
    /// tried), so the bounds count it as not applied.
    Refused(u16),
    /// The client's own time limit passed first.
    Timeout,
    /// The TCP connection could not be made.
    Connect,
    /// Any other transport failure (reset, closed mid-response, …).
    Transport,
}

impl Outcome {
    pub fn from_error(err: &reqwest::Error) -> Outcome {
        if err.is_timeout() {
            Outcome::Timeout
        } else if err.is_connect() {
            Outcome::Connect
        } else {
            Outcome::Transport
        }
    }

    pub fn is_ok(self) -> bool {
        self == Outcome::Status(200)
    }

    pub fn label(self) -> String {
        match self {
            Outcome::Status(code) => code.to_string(),
            Outcome::BadBody => "200-bad-body".into(),
            Outcome::Refused(code) => format!("{code}+retry-after"),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect-error".into(),
            Outcome::Transport => "transport-error".into(),
        }
    }
}

/// Outcomes of one kind of request.
#[derive(Default)]
pub struct Tally {
    outcomes: Mutex<BTreeMap<Outcome, u64>>,
}

impl Tally {
    pub fn record(&self, outcome: Outcome) {
        *self.lock().entry(outcome).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Outcome, u64>> {
        self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> BTreeMap<Outcome, u64> {
        self.lock().clone()
    }

    pub fn requests(&self) -> u64 {
        self.lock().values().sum()
    }

    /// Requests answered 200 with the success envelope.
    pub fn ok(&self) -> u64 {
        self.lock().get(&Outcome::Status(200)).copied().unwrap_or(0)
    }

    pub fn failed(&self) -> u64 {
        self.requests() - self.ok()
    }

    /// Failed requests the gateway said were not applied.
    pub fn refused(&self) -> u64 {
        self.count(|o| matches!(o, Outcome::Refused(_)))
    }

    /// Requests that ended in one of `outcomes`.
    pub fn count(&self, pred: impl Fn(Outcome) -> bool) -> u64 {
        self.lock().iter().filter(|(o, _)| pred(**o)).map(|(_, n)| n).sum()
    }

    /// `200: 1234, 503: 5, timeout: 2` (for the report).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.snapshot().iter().map(|(o, n)| format!("{}: {n}", o.label())).collect();
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }
}

/// Slow clients: connections that never finish their request head.
#[derive(Default)]
pub struct SlowStats {
    pub started: AtomicU64,
    /// Closed by the gateway within the header timeout plus the margin.
    pub closed_in_time: AtomicU64,
    /// Closed, but later than that.
    pub closed_late: AtomicU64,
    /// Still open when the client gave up on it.
    pub never_closed: AtomicU64,
    /// The gateway did not accept the connection at all.
    pub connect_failed: AtomicU64,
    /// Fastest close, in ms (0 until one closed).
    pub min_close_ms: AtomicU64,
    pub max_close_ms: AtomicU64,
}

impl SlowStats {
    pub fn closed_after(&self, ms: u64) {
        self.max_close_ms.fetch_max(ms, Ordering::Relaxed);
        let _ = self
            .min_close_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |min| (min == 0 || ms < min).then_some(ms.max(1)));
    }
}

/// Everything the load tasks count.
#[derive(Default)]
pub struct Stats {
    /// Every attempt of the keyed writers (retries included).
    pub keyed: Tally,
    /// Logical keyed increments that got their 200.
    pub keyed_completed: AtomicU64,
    /// Logical keyed increments given up after the retry limit.
    pub keyed_abandoned: AtomicU64,
    /// 200s marked `idempotent-replayed`: an earlier attempt had been applied.
    pub keyed_replayed: AtomicU64,
    pub plain: Tally,
    pub abort: Tally,
    pub reads: Tally,
    pub slow: SlowStats,
    /// Every request started during the clean phase, whatever its kind.
    pub clean: Tally,
    /// When the writers' failed requests ended, for the report's count of
    /// failures after each kind of fault.
    pub writer_failures: FailureTimes,
}

/// At most this many failure times are kept (the tallies count them all):
/// a run where everything fails must not grow without bound.
const FAILURE_TIMES_KEPT: usize = 100_000;

/// When failed requests ended, in order, up to [`FAILURE_TIMES_KEPT`].
#[derive(Default)]
pub struct FailureTimes {
    times: Mutex<Vec<Instant>>,
}

impl FailureTimes {
    pub fn record(&self) {
        let mut times = self.times.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if times.len() < FAILURE_TIMES_KEPT {
            times.push(Instant::now());
        }
    }

    /// The times kept, as offsets from `origin`.
    pub fn since(&self, origin: Instant) -> Vec<Duration> {
        let times = self.times.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        times.iter().map(|t| t.saturating_duration_since(origin)).collect()
    }
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
