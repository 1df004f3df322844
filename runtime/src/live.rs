//! Live settings: the settings file ([`crate::settings_file`]) re-read while
//! the process runs, as Redis's `CONFIG SET` and Envoy's runtime layer allow
//! tuning without a restart.
//!
//! Each version of the file is checked whole with the startup parser. One
//! that is refused changes nothing: the settings in force stay, and the
//! refusal is logged, counted and shown by the admin port's
//! `/api/v1/system/settings` (which the operator reads for the
//! CounterCluster's status). One that passes is handed to the service,
//! which applies the settings it lists as live; any other setting that
//! changed keeps its startup value until the process restarts, and is
//! reported as pending (the operator rolls the pods for those anyway).

use std::ffi::OsString;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Parser;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::reload::{ReloadError, Reloading, SettingFile};
use crate::settings_file::{self, Entries, SettingsError, Source};

impl SettingsState {
    /// The view of a process started without a settings file.
    pub fn without_file(live: &[&str]) -> SettingsState {
        SettingsState {
            file: None,
            in_force: None,
            refused: None,
            restart_pending: Vec::new(),
            live: live.iter().map(|name| name.to_string()).collect(),
            ignored: Vec::new(),
        }
    }
}

/// One version of the file, parsed.
struct Parsed<C> {
    config: C,
    entries: Entries,
    digest: String,
    ignored: Vec<String>,
}

/// What the admin port shows about the settings file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettingsState {
    /// The file, as `TALLY_SETTINGS_FILE` names it (`None`: no settings
    /// file, every setting comes from the environment).
    pub file: Option<String>,
    /// SHA-256 of the version of the file whose settings are in force.
    pub in_force: Option<String>,
    /// Why the file's latest version was refused; `None` once a version is
    /// applied again.
    pub refused: Option<String>,
    /// Settings the file changed that apply only at the next start.
    pub restart_pending: Vec<String>,
    /// The settings this process applies live.
    pub live: Vec<String>,
    /// Names in the file that are not settings of this program (ignored).
    #[serde(default)]
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `*_settings_reloads_total{result="applied|refused"}`,
/// `*_settings_refused` (1 while the file's latest version is refused) and
/// `*_settings_restart_pending` (settings waiting for a restart).
#[derive(Clone, Default)]
pub struct SettingsMetrics {
    reloads: Family<ResultLabel, Counter>,
    refused: Gauge,
    restart_pending: Gauge,
}

impl SettingsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for result in ["applied", "refused"] {
            let _ = self.reloads.get_or_create(&ResultLabel { result });
        }
        registry.register("settings_reloads", "Versions of the settings file read, by result", self.reloads.clone());
        registry.register(
            "settings_refused",
            "1 while the settings file's latest version is refused (the settings in force stay)",
            self.refused.clone(),
        );
        registry.register(
            "settings_restart_pending",
            "Settings the file changed that apply only at the next start",
            self.restart_pending.clone(),
        );
    }
}

/// The settings file being watched, and what came of each version.
pub struct LiveSettings<C> {
    source: Source,
    live: &'static [&'static str],
    file: Reloading<Parsed<C>, SettingsError>,
    /// What the view shows but the settings file does not say by itself.
    seen: Mutex<Seen>,
    metrics: SettingsMetrics,
}

/// The version in force and what came of the latest reads.
struct Seen {
    in_force: String,
    restart_pending: Vec<String>,
    ignored: Vec<String>,
    problems: Problems,
}

/// Why the file's latest version is not in force: it did not pass, or it
/// could not be read (which clears once it can, even with the same bytes).
#[derive(Default)]
struct Problems {
    invalid: Option<String>,
    unreadable: Option<String>,
}

impl Problems {
    fn refused(&self) -> Option<String> {
        self.unreadable.clone().or_else(|| self.invalid.clone())
    }
}

fn warn_ignored(ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::warn!(ignored = %ignored.join(","), "settings file names settings this program does not have; ignored");
    }
}

/// Settings the file changed between two versions, among `names` (or
/// outside them, with `inside` false).
fn changed(before: &Entries, after: &Entries, names: &[&str], inside: bool) -> Vec<String> {
    let keys = before.keys().chain(after.keys().filter(|k| !before.contains_key(*k)));
    let mut out: Vec<String> = keys
        .filter(|key| names.contains(&key.as_str()) == inside)
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect();
    out.sort();
    out
}

impl<C: Parser + Send + Sync + 'static> LiveSettings<C> {
    /// Watches `source`; `live` names the settings the service applies
    /// while running.
    pub fn new(
        source: Source,
        live: &'static [&'static str],
        metrics: SettingsMetrics,
    ) -> Result<LiveSettings<C>, ReloadError<SettingsError>> {
        let cli: Vec<OsString> = source.cli.clone();
        // From the bytes the process started with: a version written since
        // is the first reload's, refused or applied like any other.
        let file = Reloading::load_from(
            vec![SettingFile::new("TALLY_SETTINGS_FILE", &source.path)],
            vec![source.contents.clone()],
            move |contents: &[Vec<u8>]| {
                let bytes = contents.first().map(Vec::as_slice).unwrap_or_default();
                let entries = settings_file::parse_entries(bytes)?;
                let settings_file::Parsed { config, ignored } = settings_file::parse::<C>(&cli, &entries)?;
                Ok(Parsed { config, entries, digest: settings_file::digest(bytes), ignored })
            },
        )?;
        let seen = Seen {
            in_force: source.digest.clone(),
            restart_pending: Vec::new(),
            ignored: source.ignored.clone(),
            problems: Problems::default(),
        };
        Ok(LiveSettings { source, live, file, seen: Mutex::new(seen), metrics })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the admin port shows.
    pub fn state(&self) -> SettingsState {
        let seen = self.seen();
        SettingsState {
            file: Some(self.source.path.display().to_string()),
            in_force: Some(seen.in_force.clone()),
            refused: seen.problems.refused(),
            restart_pending: seen.restart_pending.clone(),
            live: self.live.iter().map(|name| name.to_string()).collect(),
            ignored: seen.ignored.clone(),
        }
    }

    /// Records a problem (or its end) and sets the gauge.
    fn set_problems(&self, change: impl FnOnce(&mut Problems)) {
        let mut seen = self.seen();
        change(&mut seen.problems);
        self.metrics.refused.set(i64::from(seen.problems.refused().is_some()));
    }

    /// Reads the file again; when a new version passes, hands it to `apply`.
    /// `Ok(false)`: unchanged.
    pub fn reload(&self, apply: &impl Fn(&C)) -> Result<bool, ReloadError<SettingsError>> {
        let before = self.file.current();
        match self.file.reload() {
            Ok(false) => {
                // Readable again with the bytes it had: nothing to apply.
                self.set_problems(|p| p.unreadable = None);
                Ok(false)
            }
            Ok(true) => {
                self.applied(&before.entries, apply);
                Ok(true)
            }
            Err(err) => {
                let message = err.to_string();
                let unreadable = matches!(err, ReloadError::Unreadable { .. });
                let mut reported = false;
                self.set_problems(|p| {
                    let slot = if unreadable { &mut p.unreadable } else { &mut p.invalid };
                    reported = unreadable && slot.as_deref() == Some(message.as_str());
                    *slot = Some(message.clone());
                    if !unreadable {
                        p.unreadable = None;
                    }
                });
                // An unreadable file is told once, not every interval.
                if !reported {
                    self.metrics.reloads.get_or_create(&ResultLabel { result: "refused" }).inc();
                    tracing::warn!(%err, "{}", crate::log_events::SETTINGS_REFUSED);
                }
                Err(err)
            }
        }
    }

    /// Hands the version now read to `apply` and records it; `before`: the
    /// settings of the version applied until now. A panic while applying
    /// (a value the parser let through that a component cannot take) is
    /// reported as a refusal and the watch goes on.
    fn applied(&self, before: &Entries, apply: &impl Fn(&C)) {
        let now = self.file.current();
        let applying = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(&now.config)));
        if applying.is_err() {
            let message = format!("applying version {} failed part way; restart the process", now.digest);
            self.metrics.reloads.get_or_create(&ResultLabel { result: "refused" }).inc();
            tracing::error!(digest = %now.digest, "{}", crate::log_events::SETTINGS_REFUSED);
            self.set_problems(|p| p.invalid = Some(message));
            return;
        }
        let applied = changed(before, &now.entries, self.live, true);
        let mut pending = changed(&self.source.entries, &now.entries, self.live, false);
        pending.retain(|name| !now.ignored.contains(name));
        self.metrics.reloads.get_or_create(&ResultLabel { result: "applied" }).inc();
        self.metrics.restart_pending.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        self.set_problems(|p| *p = Problems::default());
        tracing::info!(
            digest = %now.digest,
            applied = %applied.join(","),
            restart_pending = %pending.join(","),
            "{}",
            crate::log_events::SETTINGS_APPLIED
        );
        warn_ignored(&now.ignored);
        let mut seen = self.seen();
        seen.in_force = now.digest.clone();
        seen.restart_pending = pending;
        seen.ignored = now.ignored.clone();
    }

    /// Re-reads the file at once (a version written since startup), then
    /// every `TALLY_SETTINGS_RELOAD_MS` until the process ends.
    pub async fn watch(self: Arc<Self>, apply: impl Fn(&C)) {
        loop {
            let _ = self.reload(&apply);
            tokio::time::sleep(self.source.reload_every).await;
        }
    }
}

/// What the admin port shows, whether or not there is a settings file.
#[derive(Clone)]
pub struct SettingsView(Arc<dyn Fn() -> SettingsState + Send + Sync>);

impl SettingsView {
    pub fn state(&self) -> SettingsState {
        (self.0)()
    }
}

/// Where the admin ports show the settings.
pub const SETTINGS_PATH: &str = "/api/v1/system/settings";

/// The admin route showing `view` at [`SETTINGS_PATH`].
pub fn router(view: SettingsView) -> axum::Router {
    axum::Router::new().route(SETTINGS_PATH, axum::routing::get(move || async move { axum::Json(view.state()) }))
}

/// Starts watching the settings file the process started with (when it
/// started with one), handing every version that passes to `apply`.
pub fn start<C: Parser + Send + Sync + 'static>(
    source: Option<Source>,
    live: &'static [&'static str],
    metrics: SettingsMetrics,
    apply: impl Fn(&C) + Send + 'static,
) -> Result<SettingsView, ReloadError<SettingsError>> {
    let Some(source) = source else {
        return Ok(SettingsView(Arc::new(move || SettingsState::without_file(live))));
    };
    warn_ignored(&source.ignored);
    let settings = Arc::new(LiveSettings::<C>::new(source, live, metrics)?);
    tokio::spawn(settings.clone().watch(apply));
    Ok(SettingsView(Arc::new(move || settings.state())))
}

/// Applies the live settings every service shares: the log filter and the
/// trace sampling ratio (the first two of [`GATEWAY`] and [`COUNTER`]).
pub fn apply_runtime(args: &crate::rt::RuntimeArgs) {
    if let Err(err) = crate::logging::set_filter(args.log_filter.as_deref()) {
        tracing::warn!(%err, "log filter unchanged");
    }
    crate::telemetry::set_ratio(args.telemetry.sampler_arg);
}

/// The gateway's live settings; the operator changes them without rolling
/// the gateway's pods. Each service checks its list names its own settings.
pub const GATEWAY: &[&str] = &[
    "RUST_LOG",
    "OTEL_TRACES_SAMPLER_ARG",
    "TALLY_POOL_SIZE",
    "TALLY_COALESCE_MAX_OPS",
    "TALLY_COALESCE_MAX_QUEUE",
    "TALLY_COALESCE_MAX_INFLIGHT",
    "TALLY_LB_POLICY",
    "TALLY_BREAKER_FAILURES",
    "TALLY_BREAKER_RECOVERY_MS",
    "TALLY_BREAKER_MAX_RECOVERY_MS",
    "TALLY_BREAKER_HALF_OPEN_PROBES",
    "TALLY_BREAKER_MAX_EJECTION_PERCENT",
    "TALLY_RETRY_ATTEMPTS",
    "TALLY_RETRY_BUDGET_PERCENT",
    "TALLY_RETRY_MIN_PER_SECOND",
    "TALLY_CACHE_TTL_MS",
    "TALLY_CACHE_MAX_ENTRIES",
    "TALLY_MAX_IN_FLIGHT",
    "TALLY_MAX_BODY_BYTES_IN_FLIGHT",
];

/// The counter's live settings.
pub const COUNTER: &[&str] = &[
    "RUST_LOG",
    "OTEL_TRACES_SAMPLER_ARG",
    "TALLY_BATCH_SIZE",
    "TALLY_FLUSH_INTERVAL_MS",
    "TALLY_BUFFER_CAPACITY",
    "TALLY_BUFFER_FULL_POLICY",
    "TALLY_STREAM_WINDOW",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Entries {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn both_services_apply_the_shared_settings_live() {
        assert_eq!(GATEWAY[..2], COUNTER[..2]);
        assert_eq!(GATEWAY[..2], ["RUST_LOG", "OTEL_TRACES_SAMPLER_ARG"]);
    }

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, env = "DEMO_LIVE_SIZE", default_value_t = 1)]
        size: u64,
        #[arg(long, env = "DEMO_LIVE_PORT", default_value_t = 80)]
        port: u64,
    }

    #[test]
    fn versions_are_caught_up_refused_and_applied_with_restart_only_changes_pending() {
        let dir = std::env::temp_dir().join(format!("tally-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("settings.env");
        let startup = b"DEMO_LIVE_SIZE=2\n";
        let source = Source {
            path: path.clone(),
            reload_every: std::time::Duration::from_secs(1),
            cli: vec!["demo".into()],
            contents: startup.to_vec(),
            entries: settings_file::parse_entries(startup).expect("valid"),
            digest: settings_file::digest(startup),
            ignored: Vec::new(),
        };
        // The ConfigMap changed to a broken version after startup: the
        // process keeps its startup settings and says why.
        std::fs::write(&path, "DEMO_LIVE_SIZE=x\n").expect("write");
        let live = LiveSettings::<Demo>::new(source, &["DEMO_LIVE_SIZE"], SettingsMetrics::default()).expect("starts");
        let seen = Mutex::new(Vec::new());
        let apply = |demo: &Demo| seen.lock().expect("lock").push((demo.size, demo.port));
        assert!(live.reload(&apply).is_err(), "the first reload sees the version written since startup");
        assert!(seen.lock().expect("lock").is_empty(), "a refused version is not applied");
        assert!(live.state().refused.is_some_and(|r| r.starts_with("DEMO_LIVE_SIZE")));
        assert_eq!(live.state().in_force, Some(settings_file::digest(startup)));

        std::fs::write(&path, "DEMO_LIVE_SIZE=4\nDEMO_LIVE_PORT=81\n").expect("write");
        assert!(live.reload(&apply).expect("valid"));
        assert_eq!(seen.lock().expect("lock").last(), Some(&(4, 81)));
        let state = live.state();
        assert_eq!((state.refused, state.restart_pending), (None, vec!["DEMO_LIVE_PORT".to_string()]));
        assert_eq!(state.in_force, Some(settings_file::digest(b"DEMO_LIVE_SIZE=4\nDEMO_LIVE_PORT=81\n")));

        // Unreadable for a while, then back with the same bytes: the
        // refusal ends without a new version.
        let kept = dir.join("kept");
        std::fs::rename(&path, &kept).expect("hide");
        assert!(matches!(live.reload(&apply), Err(ReloadError::Unreadable { .. })));
        assert!(live.state().refused.is_some());
        std::fs::rename(&kept, &path).expect("restore");
        assert!(!live.reload(&apply).expect("readable"), "the same version: nothing to apply");
        assert_eq!(live.state().refused, None);

        // A version a component cannot take (it panics applying it) is
        // reported, and the watch goes on.
        std::fs::write(&path, "DEMO_LIVE_SIZE=9\n").expect("write");
        let panicking = |demo: &Demo| assert_ne!(demo.size, 9, "cannot take 9");
        assert!(live.reload(&panicking).expect("parsed"));
        assert!(live.state().refused.is_some_and(|r| r.contains("failed part way")));
        std::fs::write(&path, "DEMO_LIVE_SIZE=5\n").expect("write");
        assert!(live.reload(&apply).expect("valid"));
        assert_eq!((live.state().refused, seen.lock().expect("lock").last().copied()), (None, Some((5, 80))));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn changes_split_into_live_and_restart_only_settings() {
        let before = entries(&[("A", "1"), ("B", "1"), ("C", "1")]);
        let after = entries(&[("A", "2"), ("B", "1"), ("D", "1")]);
        assert_eq!(changed(&before, &after, &["A", "B"], true), vec!["A"]);
        assert_eq!(changed(&before, &after, &["A", "B"], false), vec!["C", "D"], "removed and added count");
        assert!(changed(&before, &before, &["A"], false).is_empty());
    }
}
