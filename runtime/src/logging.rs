//! Logging setup for every tally binary: human-readable by default, JSON with
//! `TALLY_LOG_FORMAT=json`, level from `RUST_LOG` (default `info`). With
//! tracing on, request spans carry a `trace_id` field, so each log line
//! written inside a request names its trace (JSON: `span.trace_id`).
//!
//! The level can change while the process runs ([`set_filter`]): `RUST_LOG`
//! in the settings file is re-read like every live setting.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Why a log filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("RUST_LOG {0:?} is not a log filter: {1}")]
    Invalid(String, String),
    #[error("logging is not set up in this process")]
    NotInstalled,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for `directives` (`RUST_LOG` syntax); `None`: `RUST_LOG` from
/// the environment, else `info`.
fn filter(directives: Option<&str>) -> Result<EnvFilter, FilterError> {
    match directives {
        Some(text) => EnvFilter::try_new(text).map_err(|err| FilterError::Invalid(text.into(), err.to_string())),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Checks `directives` without applying them.
pub fn check_filter(directives: &str) -> Result<(), FilterError> {
    filter(Some(directives)).map(drop)
}

/// Replaces the log filter of the running process; `None`: `RUST_LOG` from
/// the environment, else `info` (a filter removed from the settings file).
pub fn set_filter(directives: Option<&str>) -> Result<(), FilterError> {
    let new = filter(directives)?;
    let handle = FILTER.get().ok_or(FilterError::NotInstalled)?;
    handle.reload(new).map_err(|_| FilterError::NotInstalled)
}

/// Installs the global subscriber: the log layer (filtered by `directives`,
/// else `RUST_LOG`) and, when given, the trace layer — which sees tally's own
/// spans at INFO whatever the log filter says, so quieting logs never breaks
/// traces. An invalid `directives` falls back to `info` and says so.
pub fn init(format: LogFormat, directives: Option<&str>, traces: Option<BoxedLayer>) {
    let (initial, refused) = match filter(directives) {
        Ok(filter) => (filter, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let (filter, handle) = reload::Layer::new(initial);
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
    if tracing_subscriber::registry().with(layers).try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
    if let Some(err) = refused {
        tracing::warn!(%err, "logging at info");
    }
}
