//! The load: tokio tasks that use the gateway's public HTTP port the way
//! real clients do, each kind counting exactly what the end-of-run checks
//! need (see `checks.rs`):
//! - keyed writers retry one logical increment under one idempotency key
//!   until it is acknowledged, so the stored value must equal the count of
//!   acknowledged logical increments exactly;
//! - plain writers and aborting clients send unkeyed increments, so a
//!   failure may or may not have been applied unless the gateway answered
//!   it with `Retry-After` (nothing written): the stored value must lie
//!   between the acknowledged count and acknowledged + the other failures;
//! - readers check that a read is answered 200 or 503, nothing else.
//!
//! A shared [`Phase`] drives them: aborting and slow clients stop when the
//! faults stop; the others run through recovery and the clean phase, where
//! every request they start must succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::task::JoinHandle;

use crate::stats::{Outcome, Stats, Tally, add};

/// Client-side limit on one write or read (the gateway answers within its
/// own request timeout, 3 s per counter call, well before this).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keyed writer keeps retrying one logical increment.
pub const KEYED_GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Faults = 0,
    Recovery = 1,
    Clean = 2,
    Stop = 3,
}

/// The counters the clients write, one per kind, named after the run.
#[derive(Debug, Clone)]
pub struct Resources {
    pub keyed: String,
    pub plain: String,
    pub abort: String,
}

impl Resources {
    pub fn of(run_id: &str) -> Resources {
        Resources {
            keyed: format!("chaos-keyed-{run_id}"),
            plain: format!("chaos-plain-{run_id}"),
            abort: format!("chaos-abort-{run_id}"),
        }
    }

    /// Each resource with a label for the fault log.
    pub fn labelled(&self) -> [(&'static str, &str); 3] {
        [
            ("the keyed resource", &self.keyed),
            ("the unkeyed resource", &self.plain),
            ("the aborted resource", &self.abort),
        ]
    }
}

pub struct Load {
    pub stats: Stats,
    pub resources: Resources,
    pub http_addr: std::net::SocketAddr,
    phase: AtomicU8,
    client: reqwest::Client,
    /// Separate pool: its connections are torn down by the aborts.
    abort_client: reqwest::Client,
    increment_url: String,
    base: String,
    run_id: String,
}

impl Load {
    pub fn new(http_addr: std::net::SocketAddr, run_id: &str) -> Load {
        let client = || {
            reqwest::Client::builder()
                .no_proxy()
                // Below the gateway's 60 s idle timeout: never reuse a
                // connection the gateway may be closing.
                .pool_idle_timeout(Duration::from_secs(20))
                .build()
                .unwrap_or_else(|e| panic!("HTTP client: {e}"))
        };
        let base = format!("http://{http_addr}");
        Load {
            stats: Stats::default(),
            resources: Resources::of(run_id),
            http_addr,
            phase: AtomicU8::new(Phase::Faults as u8),
            client: client(),
            abort_client: client(),
            increment_url: format!("{base}/api/v1/counter/increment"),
            base,
            run_id: run_id.to_string(),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Faults,
            1 => Phase::Recovery,
            2 => Phase::Clean,
            _ => Phase::Stop,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Counts an outcome for its kind and, when the request started in the
    /// clean phase, for the clean phase too.
    fn record(&self, tally: &Tally, started_in: Phase, outcome: Outcome) {
        tally.record(outcome);
        if started_in == Phase::Clean {
            self.stats.clean.record(outcome);
        }
    }

    /// [`Load::record`] for a writer's request, keeping when a failure ended.
    fn record_write(&self, tally: &Tally, started_in: Phase, outcome: Outcome) {
        self.record(tally, started_in, outcome);
        if !outcome.is_ok() {
            self.stats.writer_failures.record();
        }
    }

    /// One `POST /api/v1/counter/increment` of +1; returns the outcome and
    /// whether the gateway marked it a replay.
    async fn increment(
        &self,
        client: &reqwest::Client,
        resource: &str,
        key: Option<&str>,
        timeout: Duration,
    ) -> (Outcome, bool) {
        let body = serde_json::json!({ "resource_id": resource, "counter_type": "likes", "delta": 1 });
        let mut request = client.post(&self.increment_url).json(&body).timeout(timeout);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        match request.send().await {
            Err(err) => (Outcome::from_error(&err), false),
            Ok(response) => {
                let status = response.status().as_u16();
                let replayed = response.headers().get("idempotent-replayed").is_some();
                let refused = response.headers().contains_key("retry-after");
                match response.bytes().await {
                    Err(err) => (Outcome::from_error(&err), false),
                    Ok(body) if status == 200 => (success_envelope(&body), replayed),
                    Ok(_) if refused => (Outcome::Refused(status), false),
                    Ok(_) => (Outcome::Status(status), false),
                }
            }
        }
    }
}

/// A 200's body must be the success envelope with a value.
fn success_envelope(body: &[u8]) -> Outcome {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let ok = json["status"] == "success" && json["data"]["current_value"].is_i64();
    if ok { Outcome::Status(200) } else { Outcome::BadBody }
}

/// Starts every client task: 5 keyed writers, 5 plain writers, 2 aborting
/// clients, 2 slow clients and 2 readers (16 in all).
pub fn spawn(load: &Arc<Load>, seed: u64) -> Vec<JoinHandle<()>> {
    let rng = |task: u64| StdRng::seed_from_u64(seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut tasks = Vec::new();
    let mut task = 0u64;
    let mut next = || {
        task += 1;
        (task, rng(task))
    };
    for _ in 0..5 {
        let (id, rng) = next();
        tasks.push(tokio::spawn(keyed_writer(load.clone(), id, rng)));
    }
    for _ in 0..5 {
        let (_, rng) = next();
        tasks.push(tokio::spawn(plain_writer(load.clone(), rng)));
    }
    for _ in 0..2 {
        let (_, rng) = next();
        tasks.push(tokio::spawn(aborting_client(load.clone(), rng)));
    }
    for _ in 0..2 {
        let (_, rng) = next();
        tasks.push(tokio::spawn(crate::slow::slow_client(load.clone(), rng)));
    }
    for _ in 0..2 {
        let (_, rng) = next();
        tasks.push(tokio::spawn(reader(load.clone(), rng)));
    }
    tasks
}

/// A short random pause between requests: enough load to matter, not so
/// much that two cores spend the run queueing.
async fn pause(rng: &mut StdRng, ms: std::ops::RangeInclusive<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(ms))).await;
}

/// Logical increments, each under its own idempotency key, each retried
/// until acknowledged (or [`KEYED_GIVE_UP`] passes: then abandoned). A
/// logical increment in progress is finished even after the stop.
async fn keyed_writer(load: Arc<Load>, task: u64, mut rng: StdRng) {
    let stats = &load.stats;
    let mut seq = 0u64;
    while load.phase() != Phase::Stop {
        seq += 1;
        let key = format!("chaos-{}-{task}-{seq}", load.run_id);
        let first = Instant::now();
        loop {
            let phase = load.phase();
            let (outcome, replayed) =
                load.increment(&load.client, &load.resources.keyed, Some(&key), ATTEMPT_TIMEOUT).await;
            load.record_write(&stats.keyed, phase, outcome);
            if outcome.is_ok() {
                add(&stats.keyed_completed);
                if replayed {
                    add(&stats.keyed_replayed);
                }
                break;
            }
            if first.elapsed() >= KEYED_GIVE_UP {
                add(&stats.keyed_abandoned);
                eprintln!("chaos: keyed increment {key} abandoned after {KEYED_GIVE_UP:?} (last: {outcome:?})");
                break;
            }
            pause(&mut rng, 50..=250).await;
        }
        pause(&mut rng, 0..=4).await;
    }
}

/// Unkeyed increments: a 200 is acknowledged, anything else failed (and
/// possibly applied: the gateway may not know).
async fn plain_writer(load: Arc<Load>, mut rng: StdRng) {
    while load.phase() != Phase::Stop {
        let phase = load.phase();
        let (outcome, _) = load.increment(&load.client, &load.resources.plain, None, ATTEMPT_TIMEOUT).await;
        load.record_write(&load.stats.plain, phase, outcome);
        let wait = if outcome.is_ok() { 0..=4 } else { 20..=100 };
        pause(&mut rng, wait).await;
    }
}

/// Unkeyed increments with a 1–5 ms client timeout, so many are cut while
/// the gateway is still working on them. Fault phase only.
async fn aborting_client(load: Arc<Load>, mut rng: StdRng) {
    while load.phase() == Phase::Faults {
        let timeout = Duration::from_millis(rng.random_range(1..=5));
        let (outcome, _) = load.increment(&load.abort_client, &load.resources.abort, None, timeout).await;
        load.record(&load.stats.abort, Phase::Faults, outcome);
        // Each cut connection leaves a TIME_WAIT socket behind: keep the
        // rate well under what the ephemeral port range absorbs.
        pause(&mut rng, 10..=30).await;
    }
}

/// Reads of the three counters now and then: 200 or 503 are the only
/// answers a read may get.
async fn reader(load: Arc<Load>, mut rng: StdRng) {
    let resources = [&load.resources.keyed, &load.resources.plain, &load.resources.abort];
    while load.phase() != Phase::Stop {
        let phase = load.phase();
        let resource = resources[rng.random_range(0..resources.len())];
        let url = format!("{}/api/v1/counter/{resource}/likes", load.base);
        let outcome = match load.client.get(&url).timeout(ATTEMPT_TIMEOUT).send().await {
            Err(err) => Outcome::from_error(&err),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(err) => Outcome::from_error(&err),
                    Ok(body) if status == 200 => success_envelope(&body),
                    Ok(_) => Outcome::Status(status),
                }
            }
        };
        load.record(&load.stats.reads, phase, outcome);
        pause(&mut rng, 50..=250).await;
    }
}
