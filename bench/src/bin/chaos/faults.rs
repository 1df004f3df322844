//! The fault injector: one random fault every 3–8 s until the fault phase
//! ends, from an RNG seeded with the run's seed, so the same seed replays
//! the same schedule (the same kinds, targets, gaps and durations; the load
//! around it is timing-dependent and cannot be replayed exactly).
//!
//! Faults run one at a time and each one ends with the stack whole again
//! (restarted, resumed, or the slot's move finished), so the phase after
//! it starts from a full stack. It runs on its own thread: process starts
//! and slot moves block for up to a few seconds.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::load::Resources;
use crate::report::{elapsed, utc_clock};
use crate::stack::{Stack, StoreKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `kill -9` of a counter, restarted on the same ports after 1–3 s.
    CounterKill,
    /// SIGTERM of a counter, as a rolling update stops a pod: NOT_SERVING
    /// for its shutdown delay while still serving, then it drains and exits
    /// (an exit other than 0 fails the fault); restarted on the same ports
    /// after 1–3 s.
    CounterTerm,
    /// SIGSTOP of a counter for 1–4 s, then SIGCONT.
    CounterStop,
    /// redis-server killed and started again on the same port and AOF after 1–2 s.
    RedisRestart,
    /// SIGSTOP of redis-server for 1–3 s, then SIGCONT.
    RedisStop,
    /// A Redis Cluster resharding of one resource's slot to another
    /// master, its keys moved a batch at a time while it is written.
    Reshard,
    /// SIGSTOP of the master serving one resource's slot for 1–3 s, then SIGCONT.
    MasterStop,
    /// `kill -9` of the master serving one resource's slot; its replica
    /// takes over; the old master is started again 1–3 s later and rejoins
    /// as the new one's replica.
    MasterCrash,
}

/// The faults of a run on one redis-server.
const ON_REDIS: [Kind; 5] =
    [Kind::CounterKill, Kind::CounterTerm, Kind::CounterStop, Kind::RedisRestart, Kind::RedisStop];
/// The faults of a run on a Redis Cluster (its masters are not restarted:
/// without replicas a killed master's slots are down, which the standalone
/// run's Redis restarts already cover).
const ON_CLUSTER: [Kind; 5] =
    [Kind::CounterKill, Kind::CounterTerm, Kind::CounterStop, Kind::Reshard, Kind::MasterStop];
/// The faults of a run on a Redis Cluster with replicas: masters crash too.
const ON_REPLICATED_CLUSTER: [Kind; 6] =
    [Kind::CounterKill, Kind::CounterTerm, Kind::CounterStop, Kind::Reshard, Kind::MasterStop, Kind::MasterCrash];

/// The kinds of fault a run on `store` draws from.
pub fn kinds(store: StoreKind) -> &'static [Kind] {
    match store {
        StoreKind::Redis => &ON_REDIS,
        StoreKind::Cluster => &ON_CLUSTER,
        StoreKind::ClusterReplicated => &ON_REPLICATED_CLUSTER,
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::CounterKill => "counter kill -9 + restart",
            Kind::CounterTerm => "counter SIGTERM + restart",
            Kind::CounterStop => "counter SIGSTOP/SIGCONT",
            Kind::RedisRestart => "redis kill -9 + restart",
            Kind::RedisStop => "redis SIGSTOP/SIGCONT",
            Kind::Reshard => "slot moved to another master",
            Kind::MasterStop => "master SIGSTOP/SIGCONT",
            Kind::MasterCrash => "master kill -9, failover, back as replica",
        })
    }
}

/// One injected fault, for the log and the report.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Since the start of the run.
    pub at: Duration,
    pub wall: String,
    pub kind: Kind,
    pub target: &'static str,
    /// How long the process was down or paused.
    pub hold: Duration,
    /// Set when a step failed (a signal not delivered, a restart that did not come up).
    pub error: Option<String>,
}

/// The writers' failures (offsets from the start of the run, in order)
/// counted against the fault that last began before each: a fault, its
/// aftermath and the gap after it, until the next begins or the run ends.
/// Those before the first fault count under `None`.
pub fn failures_after(faults: &[Fault], failures: &[Duration]) -> BTreeMap<Option<Kind>, u64> {
    let mut counts = BTreeMap::new();
    for &failed_at in failures {
        let began_before = faults.partition_point(|fault| fault.at <= failed_at);
        let kind = began_before.checked_sub(1).map(|last| faults[last].kind);
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

/// Injects faults from now until `until`, adding each to `log` (shared, so
/// what was done survives a panic here). A fault in progress at `until` is
/// finished (the process restarted or resumed, the slot moved).
pub fn run(stack: &Stack, resources: &Resources, seed: u64, started: Instant, until: Instant, log: &Mutex<Vec<Fault>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds = kinds(stack.store_kind());
    let resources = resources.labelled();
    loop {
        let gap = Duration::from_millis(rng.random_range(3000..=8000));
        if Instant::now() + gap >= until {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            return;
        }
        std::thread::sleep(gap);
        let kind = kinds[rng.random_range(0..kinds.len())];
        let counter = rng.random_range(0..2usize);
        let (label, resource) = resources[rng.random_range(0..resources.len())];
        let hold = Duration::from_millis(match kind {
            Kind::CounterKill | Kind::CounterTerm => rng.random_range(1000..=3000),
            Kind::CounterStop => rng.random_range(1000..=4000),
            Kind::RedisRestart => rng.random_range(1000..=2000),
            Kind::RedisStop | Kind::MasterStop | Kind::MasterCrash => rng.random_range(1000..=3000),
            Kind::Reshard => 0, // as long as the keys take to move
        });
        let target = match kind {
            Kind::CounterKill | Kind::CounterTerm | Kind::CounterStop => stack.counters[counter].name,
            Kind::RedisRestart | Kind::RedisStop => "redis",
            Kind::Reshard | Kind::MasterStop | Kind::MasterCrash => label,
        };
        let at = started.elapsed();
        let wall = utc_clock();
        println!("[{} {wall}] fault: {kind} of {target} for {:.1} s", elapsed(at), hold.as_secs_f64());
        let began = Instant::now();
        let result = inject(stack, kind, counter, resource, hold);
        let hold = if kind == Kind::Reshard { began.elapsed() } else { hold };
        let error = match result {
            Ok(Some(detail)) => {
                println!("[{} {}] {kind} of {target}: {detail}", elapsed(started.elapsed()), utc_clock());
                None
            }
            Ok(None) => None,
            Err(err) => {
                println!("[{} {}] fault FAILED: {kind} of {target}: {err}", elapsed(started.elapsed()), utc_clock());
                Some(err)
            }
        };
        log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Fault { at, wall, kind, target, hold, error });
    }
}

/// One fault, start to end; every step is attempted even when an earlier
/// one failed, so a paused process is always resumed. Some faults say what
/// they did (a slot's move: from which master to which).
fn inject(stack: &Stack, kind: Kind, counter: usize, resource: &str, hold: Duration) -> Result<Option<String>, String> {
    match kind {
        Kind::CounterKill => {
            let killed = stack.kill_counter(counter);
            std::thread::sleep(hold);
            let started = stack.start_counter(counter);
            killed.and(started).map(|_| None)
        }
        Kind::CounterTerm => {
            let stopped = stack.terminate_counter(counter);
            std::thread::sleep(hold);
            let started = stack.start_counter(counter);
            stopped.and(started).map(|_| None)
        }
        Kind::CounterStop => {
            let stopped = stack.signal_counter(counter, "-STOP");
            std::thread::sleep(hold);
            let resumed = stack.signal_counter(counter, "-CONT");
            stopped.and(resumed).map(|_| None)
        }
        Kind::RedisRestart => {
            let killed = stack.kill_redis();
            std::thread::sleep(hold);
            let started = stack.start_redis();
            killed.and(started).map(|_| None)
        }
        Kind::RedisStop => {
            let stopped = stack.signal_redis("-STOP");
            std::thread::sleep(hold);
            let resumed = stack.signal_redis("-CONT");
            stopped.and(resumed).map(|_| None)
        }
        Kind::Reshard => stack.reshard(resource).map(Some),
        Kind::MasterStop => stack.pause_master_of(resource, hold).map(|_| None),
        Kind::MasterCrash => stack.crash_master_of(resource, hold).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(at_ms: u64, kind: Kind) -> Fault {
        let at = Duration::from_millis(at_ms);
        Fault { at, wall: String::new(), kind, target: "x", hold: Duration::ZERO, error: None }
    }

    #[test]
    fn each_failure_counts_against_the_fault_that_last_began_before_it() {
        let faults = [fault(1000, Kind::CounterKill), fault(5000, Kind::CounterTerm), fault(9000, Kind::CounterKill)];
        let failures: Vec<Duration> = [500, 1000, 4999, 8000, 9500, 20_000].map(Duration::from_millis).to_vec();
        let counts = failures_after(&faults, &failures);
        let expected = BTreeMap::from([(None, 1), (Some(Kind::CounterKill), 4), (Some(Kind::CounterTerm), 1)]);
        assert_eq!(counts, expected);
    }
}
