//! How every binary starts: the runtime settings they share, and the one
//! `main` they share.
//!
//! The gateway and the counter serve thread-per-core ([`crate::workers`]):
//! `TALLY_WORKER_THREADS` is their number of workers (default: one per core
//! the cgroup CPU quota allows), and the runtime `main` runs on is a single
//! control thread ([`run_control`]: accepting, probes, discovery, health
//! checks, trace export, shutdown). The operator runs on a work-stealing
//! runtime of that many threads ([`run`]).

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::logging::{self, LogFormat};
use crate::telemetry::{self, TelemetryArgs};

/// Settings shared by every tally binary (flattened into each one's config).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Async runtime worker threads (default: one per core the process may use, which follows
    /// the cgroup CPU quota, i.e. the pod's CPU limit).
    #[arg(long, env = "TALLY_WORKER_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub worker_threads: Option<u64>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, `tracing` directives such as `info` or `warn,tally_gateway=debug` (default: `info`).
    #[arg(long, env = "RUST_LOG")]
    pub log_filter: Option<String>,

    /// The settings file and how often it is re-read (`TALLY_SETTINGS_*`).
    #[command(flatten)]
    pub settings: crate::settings_file::SettingsFileArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The worker threads to run: `TALLY_WORKER_THREADS`, else one per core the
/// process may use (std's count follows the cgroup CPU quota).
pub fn worker_threads(args: &RuntimeArgs) -> usize {
    match args.worker_threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Builds a work-stealing runtime of [`worker_threads`], sets up logging and
/// trace export, runs `service` to completion and flushes the queued spans;
/// the exit code says whether it failed.
pub fn run<F, E>(args: &RuntimeArgs, name: &str, service: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().worker_threads(worker_threads(args));
    run_on(builder, args, name, service)
}

/// As [`run`], on one control thread: for a service whose requests are
/// served by its own [`crate::workers`].
pub fn run_control<F, E>(args: &RuntimeArgs, name: &str, service: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    run_on(builder, args, name, service)
}

fn run_on<F, E>(mut builder: tokio::runtime::Builder, args: &RuntimeArgs, name: &str, service: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = runtime.enter();
    let (tracing, layer) = match telemetry::build(&args.telemetry, name, env!("CARGO_PKG_VERSION")) {
        Ok(Some((tracing, layer))) => (Some(tracing), Some(layer)),
        Ok(None) => (None, None),
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(args.log_format, args.log_filter.as_deref(), layer);
    if let Some(endpoint) = &args.telemetry.otlp_endpoint {
        let endpoint = crate::redact::userinfo(endpoint);
        tracing::info!(%endpoint, sampler = ?args.telemetry.sampler, ratio = args.telemetry.sampler_arg, "exporting traces over OTLP/gRPC");
    }
    let code = match runtime.block_on(service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "{name} failed");
            ExitCode::FAILURE
        }
    };
    // The flush runs beside the runtime, which drives the exporter's
    // connection meanwhile (on a single control thread nothing else would).
    if let Some(tracing) = tracing {
        let _ = runtime.block_on(tokio::task::spawn_blocking(move || tracing.shutdown()));
    }
    code
}
