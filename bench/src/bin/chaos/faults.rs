//! The fault injector: one random fault every 3–8 s until the fault phase
//! ends, from an RNG seeded with the run's seed, so the same seed replays
//! the same schedule (the same kinds, targets, gaps and durations; the load
//! around it is timing-dependent and cannot be replayed exactly).
//!
//! Faults run one at a time and each one ends with the stack whole again
//! (restarted or resumed), so the phase after it starts from a full stack.
//! It runs on its own thread: process starts block for up to a few seconds.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::report::{elapsed, utc_clock};
use crate::stack::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `kill -9` of a counter, restarted on the same ports after 1–3 s.
    CounterKill,
    /// SIGSTOP of a counter for 1–4 s, then SIGCONT.
    CounterStop,
    /// redis-server killed and started again on the same port and AOF after 1–2 s.
    RedisRestart,
    /// SIGSTOP of redis-server for 1–3 s, then SIGCONT.
    RedisStop,
}

pub const KINDS: [Kind; 4] = [Kind::CounterKill, Kind::CounterStop, Kind::RedisRestart, Kind::RedisStop];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::CounterKill => "counter kill -9 + restart",
            Kind::CounterStop => "counter SIGSTOP/SIGCONT",
            Kind::RedisRestart => "redis kill -9 + restart",
            Kind::RedisStop => "redis SIGSTOP/SIGCONT",
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

/// Injects faults from now until `until`, adding each to `log` (shared, so
/// what was done survives a panic here). A fault in progress at `until` is
/// finished (the process restarted or resumed).
pub fn run(stack: &Stack, seed: u64, started: Instant, until: Instant, log: &Mutex<Vec<Fault>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let gap = Duration::from_millis(rng.random_range(3000..=8000));
        if Instant::now() + gap >= until {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            return;
        }
        std::thread::sleep(gap);
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let counter = rng.random_range(0..2usize);
        let hold = Duration::from_millis(match kind {
            Kind::CounterKill => rng.random_range(1000..=3000),
            Kind::CounterStop => rng.random_range(1000..=4000),
            Kind::RedisRestart => rng.random_range(1000..=2000),
            Kind::RedisStop => rng.random_range(1000..=3000),
        });
        let target = match kind {
            Kind::CounterKill | Kind::CounterStop => stack.counters[counter].name,
            Kind::RedisRestart | Kind::RedisStop => "redis",
        };
        let at = started.elapsed();
        let wall = utc_clock();
        println!("[{} {wall}] fault: {kind} of {target} for {:.1} s", elapsed(at), hold.as_secs_f64());
        let error = inject(stack, kind, counter, hold).err();
        if let Some(err) = &error {
            println!("[{} {}] fault FAILED: {kind} of {target}: {err}", elapsed(started.elapsed()), utc_clock());
        }
        log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Fault { at, wall, kind, target, hold, error });
    }
}

/// One fault, start to end; every step is attempted even when an earlier
/// one failed, so a paused process is always resumed.
fn inject(stack: &Stack, kind: Kind, counter: usize, hold: Duration) -> Result<(), String> {
    match kind {
        Kind::CounterKill => {
            let killed = stack.kill_counter(counter);
            std::thread::sleep(hold);
            let started = stack.start_counter(counter);
            killed.and(started).map(drop)
        }
        Kind::CounterStop => {
            let stopped = stack.signal_counter(counter, "-STOP");
            std::thread::sleep(hold);
            let resumed = stack.signal_counter(counter, "-CONT");
            stopped.and(resumed).map(drop)
        }
        Kind::RedisRestart => {
            let killed = stack.kill_redis();
            std::thread::sleep(hold);
            let started = stack.start_redis();
            killed.and(started).map(drop)
        }
        Kind::RedisStop => {
            let stopped = stack.signal_redis("-STOP");
            std::thread::sleep(hold);
            let resumed = stack.signal_redis("-CONT");
            stopped.and(resumed).map(drop)
        }
    }
}
