//! `tally-chaos` (`make chaos`): a bounded soak with random faults that
//! checks correctness at the end.
//!
//! It starts a real stack on loopback (redis-server with an fsync-always
//! AOF, two counters, a gateway), drives HTTP load through the gateway
//! while killing, pausing and restarting processes at random, then stops the
//! faults, waits for the stack to recover, runs a clean phase in which every
//! request must succeed, and checks what Redis stored against what the
//! clients were told. Exits 1 when any check fails; writes a Markdown report.
//!
//!   tally-chaos --seconds 60 --seed 42
//!
//! Phases: faults (`--seconds`) → recovery (bounded) → clean
//! (`--clean-seconds`) → stop (keyed retries finish, bounded) → settle →
//! read Redis → checks. Every wait has a bound, so the run ends by itself.

mod checks;
mod faults;
mod load;
mod memory;
mod report;
mod slow;
mod stack;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::checks::{Figures, Stored};
use crate::load::{KEYED_GIVE_UP, Load, Phase, Resources};
use crate::memory::Memory;
use crate::report::{elapsed, utc_clock};
use crate::stack::{Stack, StoreKind};

const MAX_SECONDS: u64 = 600;
const MAX_CLEAN_SECONDS: u64 = 120;
/// For the gateway to see both counters healthy at the start.
const READY_BOUND: Duration = Duration::from_secs(30);
/// For both endpoints to be healthy with closed breakers after the faults.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// For the fault injector to finish the fault in progress at the end.
const FAULTS_END_BOUND: Duration = Duration::from_secs(60);
/// For the clients to stop: a keyed increment in progress may retry this long.
const LOAD_STOP_BOUND: Duration = KEYED_GIVE_UP.saturating_add(Duration::from_secs(20));
/// For the stored values to stop changing (writes the gateway gave up on may
/// still land shortly after).
const SETTLE_BOUND: Duration = Duration::from_secs(15);

#[derive(Debug, Parser)]
#[command(name = "tally-chaos", about = "Soak the local stack with random faults, then check the counts")]
struct Args {
    /// Length of the fault phase, in seconds (at most 600).
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Seed of the fault schedule (default: random; printed so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the clean phase after recovery, in seconds (1..=120).
    #[arg(long, default_value_t = 20)]
    clean_seconds: u64,
    /// Bound on the peak resident memory of the gateway and of each counter, in MiB.
    #[arg(long, default_value_t = 256)]
    max_rss_mib: u64,
    /// Where the Markdown report is written.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// Directory of the tally-counter and tally-gateway binaries
    /// (default: the workspace's target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The counters' store: one redis-server, a Redis Cluster of three
    /// masters whose slots the faults move while they are written, or such
    /// a cluster with a replica per master whose masters the faults crash.
    #[arg(long, value_enum, default_value = "redis")]
    store: StoreKind,
}

fn main() {
    let args = Args::parse();
    let seconds = args.seconds.min(MAX_SECONDS);
    if seconds != args.seconds {
        println!("chaos: --seconds capped at {MAX_SECONDS}");
    }
    let clean_seconds = args.clean_seconds.clamp(1, MAX_CLEAN_SECONDS);
    let seed = args.seed.unwrap_or_else(rand::random);
    let run_id = format!("{}-{:04x}", report::utc_stamp(), seed & 0xffff);
    let bin_dir = args.bin_dir.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    println!(
        "chaos: seed {seed} (repeat with --seed {seed}); store {:?}; faults {seconds} s, clean phase {clean_seconds} s",
        args.store
    );

    let stack = Arc::new(Stack::start(&bin_dir, &run_id, args.store));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let plan = Plan { seconds, clean_seconds, seed, run_id, max_rss_mib: args.max_rss_mib };
    let (text, pass) = runtime.block_on(soak(stack.clone(), plan));
    runtime.shutdown_timeout(Duration::from_secs(5));
    stack.shutdown();

    println!("\n{text}");
    let written = std::fs::create_dir_all(&args.out_dir).and_then(|()| {
        let path = args.out_dir.join(format!("chaos-{}.md", report::utc_stamp()));
        std::fs::write(&path, &text).map(|()| path)
    });
    match written {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("chaos: cannot write the report under {}: {e}", args.out_dir.display()),
    }
    std::process::exit(if pass { 0 } else { 1 });
}

struct Plan {
    seconds: u64,
    clean_seconds: u64,
    seed: u64,
    run_id: String,
    max_rss_mib: u64,
}

/// The whole run; returns the report and whether every check passed.
async fn soak(stack: Arc<Stack>, plan: Plan) -> (String, bool) {
    let started = Instant::now();
    let started_utc = report::utc_iso();
    let say = |what: &str| println!("[{} {}] {what}", elapsed(started.elapsed()), utc_clock());
    let admin = stack.gateway_admin.clone();
    assert!(all_healthy_within(&admin, READY_BOUND).await, "the gateway did not see both counters healthy");
    say("stack up; load and faults start");

    let load = Arc::new(Load::new(stack.gateway_http, &plan.run_id));
    let memory = Arc::new(Memory::default());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(memory::sampler(stack.clone(), memory.clone(), stop_sampling.clone()));
    let mut tasks = load::spawn(&load, plan.seed);

    let until = Instant::now() + Duration::from_secs(plan.seconds);
    let fault_log = Arc::new(Mutex::new(Vec::new()));
    let injector = {
        let (stack, log, seed, resources) = (stack.clone(), fault_log.clone(), plan.seed, load.resources.clone());
        tokio::task::spawn_blocking(move || faults::run(&stack, &resources, seed, started, until, &log))
    };
    tokio::time::sleep_until(until.into()).await;
    load.set_phase(Phase::Recovery);
    say("fault phase over; finishing the fault in progress");
    let faults_finished = matches!(tokio::time::timeout(FAULTS_END_BOUND, injector).await, Ok(Ok(())));

    say("waiting for both endpoints healthy with closed breakers");
    let recovering = Instant::now();
    let recovery = all_healthy_within(&admin, RECOVERY_BOUND).await.then(|| recovering.elapsed());
    match recovery {
        Some(d) => say(&format!("recovered after {:.1} s; clean phase", d.as_secs_f64())),
        None => say("NOT recovered within the bound; clean phase anyway"),
    }
    load.set_phase(Phase::Clean);
    tokio::time::sleep(Duration::from_secs(plan.clean_seconds)).await;
    load.set_phase(Phase::Stop);
    say("stopping the load");
    let joined = tokio::time::timeout(LOAD_STOP_BOUND, async {
        for task in &mut tasks {
            let _ = task.await;
        }
    })
    .await;
    let load_stopped = joined.is_ok();
    for task in &tasks {
        task.abort();
    }

    say("waiting for the stored values to settle");
    let stored = settled(stack.clone(), &load.resources).await;
    stop_sampling.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = sampler.await;
    memory.sample(&stack);
    let dead_at_end = stack.pids().into_iter().filter(|&(_, pid)| !memory::alive(pid)).map(|(name, _)| name).collect();

    let faults = fault_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let writer_failures_after = faults::failures_after(&faults, &load.stats.writer_failures.since(started));
    let figures = Figures {
        store: stack.store_kind(),
        seconds: plan.seconds,
        clean_seconds: plan.clean_seconds,
        seed: plan.seed,
        run_id: plan.run_id,
        started_utc,
        wall: started.elapsed(),
        faults,
        faults_finished,
        recovery,
        load_stopped,
        load: &load,
        stored,
        peaks_kib: memory.peaks_kib(),
        max_rss_mib: plan.max_rss_mib,
        exits: memory.exits(),
        writer_failures_after,
        dead_at_end,
    };
    let checks = checks::evaluate(&figures);
    let pass = checks.iter().all(|c| c.pass);
    (report::render(&figures, &checks), pass)
}

/// Polls the gateway's backend view until both endpoints are healthy with
/// closed breakers (true) or `bound` passes (false).
async fn all_healthy_within(admin: &str, bound: Duration) -> bool {
    let client = reqwest::Client::builder().no_proxy().build().unwrap_or_else(|e| panic!("HTTP client: {e}"));
    let url = format!("{admin}/api/v1/system/backends");
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        let view = async {
            let response = client.get(&url).timeout(Duration::from_secs(1)).send().await.ok()?;
            response.json::<serde_json::Value>().await.ok()
        };
        if let Some(view) = view.await
            && let Some(endpoints) = view["data"]["endpoints"].as_array()
            && endpoints.len() == 2
            && endpoints.iter().all(|e| e["healthy"] == true && e["breaker"] == "closed")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Reads the three counters until two reads a second apart agree (or the
/// bound passes: then the last read).
async fn settled(stack: Arc<Stack>, resources: &Resources) -> Stored {
    let names = [resources.keyed.clone(), resources.plain.clone(), resources.abort.clone()];
    let read = || {
        let (names, stack) = (names.clone(), stack.clone());
        tokio::task::spawn_blocking(move || names.map(|name| stack.read_count(&name)))
    };
    let deadline = Instant::now() + SETTLE_BOUND;
    let mut last = read().await.unwrap_or([None; 3]);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = read().await.unwrap_or([None; 3]);
        if now == last && now.iter().all(Option::is_some) {
            break;
        }
        last = now;
    }
    Stored { keyed: last[0], plain: last[1], abort: last[2] }
}
