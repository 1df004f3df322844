//! tally's test harness, shared by every crate's integration tests: real
//! `redis-server` processes (standalone, or a real 3-master Redis Cluster)
//! and tally binaries on loopback ports, with readiness awaited on their log
//! lines and cleanup guaranteed when the test binary exits.

mod cluster;
mod consul;
pub mod docs;
mod exit;
mod kubernetes;
mod lease;
mod leftovers;
mod otlp;
mod ports;
mod procs;
pub mod prometheus;
mod replicas;
mod resharding;
pub mod serial;
mod settings;
mod tls;

pub use cluster::RedisCluster;
pub use consul::ConsulDouble;
pub use exit::output_on_exit;
pub use kubernetes::KubernetesDouble;
pub use lease::LeaseDouble;
pub use otlp::{OtlpReceiver, ReceivedSpan};

pub use ports::free_port;
pub use procs::{RedisServer, Service, redis_cli, rss_bytes, workspace_binary};
pub use settings::SettingsFile;
pub use tls::TestCerts;

/// A resource id no other test (or earlier run against a shared cluster) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{seq}", std::process::id())
}

/// A command-line tool the tests use (helm, kubectl, kubernetes-validate):
/// on `PATH`, or in the directory `scripts/install-test-deps.sh` installs
/// into. `None` when missing — and then, under `make test`
/// (`TALLY_REQUIRE_TOOLS=1`, set after installing them), the calling test
/// fails instead of skipping, so a missing install step cannot pass silently.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let cached = std::env::var_os("TALLY_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache/tally-tools")))
        .map(|dir| dir.join("bin").join(name));
    // pip's user scheme puts console scripts here, off PATH on some machines.
    let user_scripts = std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".local/bin").join(name));
    let found = on_path.chain(cached).chain(user_scripts).find(|candidate| candidate.is_file());
    if found.is_none() {
        let message = format!("{name} is not installed (scripts/install-test-deps.sh installs it)");
        assert!(std::env::var_os("TALLY_REQUIRE_TOOLS").is_none(), "{message}");
        eprintln!("SKIPPED: {message}");
    }
    found
}
