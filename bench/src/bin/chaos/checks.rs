//! The invariants a run is judged by, computed from what the clients counted
//! and what Redis stored. Each is a bound that holds whatever the faults
//! did, so a FAIL is a finding (or a harness bug), never bad luck:
//! - keyed: stored == logical increments acknowledged (idempotency keys
//!   make retries exact; abandoned ones widen it to a range);
//! - unkeyed: acknowledged ≤ stored ≤ acknowledged + failed, less the
//!   failures answered with `Retry-After` (no ack lost, nothing applied
//!   twice, nothing applied that the gateway said was not);
//! - every slow client cut in time, reads only 200/503, no 500 anywhere;
//! - recovery once faults stop, then not a single error in the clean phase;
//! - bounded memory; no process died that no fault killed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::faults::Fault;
use crate::load::Load;
use crate::slow::CLOSE_MARGIN;
use crate::stack::{HEADER_TIMEOUT, StoreKind};
use crate::stats::{Outcome, Tally, get};

/// Values read from Redis at the end (None: could not be read).
pub struct Stored {
    pub keyed: Option<i64>,
    pub plain: Option<i64>,
    pub abort: Option<i64>,
}

/// Everything measured in a run.
pub struct Figures<'a> {
    pub store: StoreKind,
    pub seconds: u64,
    pub clean_seconds: u64,
    pub seed: u64,
    pub run_id: String,
    pub started_utc: String,
    pub wall: Duration,
    pub faults: Vec<Fault>,
    /// The fault injector ended without panicking.
    pub faults_finished: bool,
    /// Time from the end of the faults until both endpoints were healthy
    /// with closed breakers; None when that did not happen within the bound.
    pub recovery: Option<Duration>,
    /// Whether every client task ended within its bound after the stop.
    pub load_stopped: bool,
    pub load: &'a Load,
    pub stored: Stored,
    pub peaks_kib: BTreeMap<&'static str, u64>,
    pub max_rss_mib: u64,
    pub exits: Vec<String>,
    /// The writers' failures by the fault that last began before each
    /// ([`crate::faults::failures_after`]).
    pub writer_failures_after: BTreeMap<Option<crate::faults::Kind>, u64>,
    pub dead_at_end: Vec<&'static str>,
}

pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

fn check(name: impl Into<String>, pass: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), pass, detail: detail.into() }
}

/// `acknowledged ≤ stored ≤ acknowledged + failed − refused`: a failure
/// answered with `Retry-After` must not have been applied.
fn unkeyed(name: &str, tally: &Tally, stored: Option<i64>) -> Check {
    let (ack, failed, refused) = (tally.ok() as i64, tally.failed() as i64, tally.refused() as i64);
    let most = ack + failed - refused;
    match stored {
        None => check(name, false, "stored value could not be read"),
        Some(s) => check(
            name,
            ack <= s && s <= most && tally.requests() > 0,
            format!(
                "acknowledged {ack} ≤ stored {s} ≤ acknowledged + failed {} − refused with Retry-After {refused} = {most}",
                ack + failed
            ),
        ),
    }
}

pub fn evaluate(f: &Figures) -> Vec<Check> {
    let stats = &f.load.stats;
    let mut checks = Vec::new();

    let (done, abandoned) = (get(&stats.keyed_completed) as i64, get(&stats.keyed_abandoned) as i64);
    checks.push(match f.stored.keyed {
        None => check("keyed: stored == acknowledged", false, "stored value could not be read"),
        Some(s) if abandoned == 0 => check(
            "keyed: stored == acknowledged",
            s == done && f.load_stopped && done > 0,
            format!("stored {s}, acknowledged logical increments {done}"),
        ),
        Some(s) => check(
            "keyed: stored == acknowledged",
            done <= s && s <= done + abandoned && f.load_stopped,
            format!("{abandoned} abandoned: acknowledged {done} ≤ stored {s} ≤ {}", done + abandoned),
        ),
    });
    checks.push(unkeyed("unkeyed: ack ≤ stored ≤ ack + failed − refused", &stats.plain, f.stored.plain));
    checks.push(unkeyed("aborting: ack ≤ stored ≤ ack + failed − refused", &stats.abort, f.stored.abort));

    let slow = &stats.slow;
    let (started, in_time) = (get(&slow.started), get(&slow.closed_in_time));
    checks.push(check(
        format!("slow clients closed within {} ms", (HEADER_TIMEOUT + CLOSE_MARGIN).as_millis()),
        started > 0 && in_time == started,
        format!(
            "{in_time} of {started} in time (header timeout {} ms + margin {} ms); late {}, never {}, \
             connect failed {}; closed after {}–{} ms",
            HEADER_TIMEOUT.as_millis(),
            CLOSE_MARGIN.as_millis(),
            get(&slow.closed_late),
            get(&slow.never_closed),
            get(&slow.connect_failed),
            get(&slow.min_close_ms),
            get(&slow.max_close_ms)
        ),
    ));

    let bad_reads = stats.reads.count(|o| !matches!(o, Outcome::Status(200 | 503)));
    checks.push(check(
        "reads answered 200 or 503 only",
        bad_reads == 0 && stats.reads.requests() > 0,
        format!("{bad_reads} of {} otherwise ({})", stats.reads.requests(), stats.reads.summary()),
    ));
    let is_500 = |o: Outcome| o == Outcome::Status(500);
    let five_hundreds: u64 =
        [&stats.keyed, &stats.plain, &stats.abort, &stats.reads].iter().map(|t| t.count(is_500)).sum();
    checks.push(check("no HTTP 500 on any request", five_hundreds == 0, format!("{five_hundreds} answered 500")));

    let errors: Vec<String> =
        f.faults.iter().filter_map(|x| x.error.as_ref().map(|e| format!("{} of {}: {e}", x.kind, x.target))).collect();
    checks.push(check(
        "faults injected and undone",
        f.faults_finished && !f.faults.is_empty() && errors.is_empty(),
        if errors.is_empty() { format!("{} faults", f.faults.len()) } else { errors.join("; ") },
    ));
    checks.push(check(
        "recovered after faults (both endpoints healthy, breakers closed)",
        f.recovery.is_some(),
        match f.recovery {
            Some(d) => format!("after {:.1} s", d.as_secs_f64()),
            None => "not within the bound".into(),
        },
    ));
    checks.push(check(
        "clean phase: every request 200",
        stats.clean.requests() > 0 && stats.clean.failed() == 0,
        format!("{} errors of {} ({})", stats.clean.failed(), stats.clean.requests(), stats.clean.summary()),
    ));
    checks.push(check("load stopped within its bound", f.load_stopped, ""));

    for name in ["gateway", "counter-a", "counter-b"] {
        let peak = f.peaks_kib.get(name).copied();
        checks.push(check(
            format!("{name} peak RSS ≤ {} MiB", f.max_rss_mib),
            peak.is_some_and(|kib| kib <= f.max_rss_mib * 1024),
            peak.map_or("never sampled".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
        ));
    }
    let mut gone = f.exits.clone();
    gone.extend(f.dead_at_end.iter().map(|name| format!("{name} not running at the end")));
    checks.push(check(
        "no process died on its own",
        gone.is_empty(),
        if gone.is_empty() { "all alive".to_string() } else { gone.join("; ") },
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(outcomes: &[(Outcome, u64)]) -> Tally {
        let tally = Tally::default();
        for &(outcome, n) in outcomes {
            (0..n).for_each(|_| tally.record(outcome));
        }
        tally
    }

    #[test]
    fn a_failure_answered_retry_after_must_not_have_been_applied() {
        let seen = tally(&[(Outcome::Status(200), 10), (Outcome::Status(503), 2), (Outcome::Refused(503), 3)]);
        let pass = |stored| unkeyed("t", &seen, Some(stored)).pass;
        assert!(!pass(9), "an acknowledged increment lost");
        assert!(pass(10) && pass(12), "the two of unknown outcome may or may not be applied");
        assert!(!pass(13), "one of the refused ones was applied");
        assert!(!unkeyed("t", &seen, None).pass);
    }
}
