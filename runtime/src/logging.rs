//! Logging setup for every tally binary: human-readable by default, JSON with
//! `TALLY_LOG_FORMAT=json`, level from `RUST_LOG` (default `info`). With
//! tracing on, request spans carry a `trace_id` field, so each log line
//! written inside a request names its trace (JSON: `span.trace_id`).

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber: the log layer (filtered by `RUST_LOG`)
/// and, when given, the trace layer — which sees tally's own spans at INFO
/// whatever `RUST_LOG` says, so quieting logs never breaks traces.
pub fn init(format: LogFormat, traces: Option<BoxedLayer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs: BoxedLayer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    if let Some(traces) = traces {
        let ours = Targets::new()
            .with_target("tally_gateway", LevelFilter::INFO)
            .with_target("tally_counter", LevelFilter::INFO)
            .with_target("tally_operator", LevelFilter::INFO)
            .with_target("tally_runtime", LevelFilter::INFO);
        layers.push(traces.with_filter(ours).boxed());
    }
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layers).try_init();
}
