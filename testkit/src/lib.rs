//! tally's test harness, shared by every crate's integration tests: real
//! `redis-server` processes (standalone, or a real 3-master Redis Cluster)
//! and tally binaries on loopback ports, with readiness awaited on their log
//! lines and cleanup guaranteed when the test binary exits.

mod consul;
mod kubernetes;
mod lease;
mod otlp;
mod procs;
mod tls;

pub use consul::ConsulDouble;
pub use kubernetes::KubernetesDouble;
pub use lease::LeaseDouble;
pub use otlp::{OtlpReceiver, ReceivedSpan};

pub use procs::{RedisCluster, RedisServer, Service, free_port, redis_cli, rss_bytes, workspace_binary};
pub use tls::TestCerts;

/// A resource id no other test (or earlier run against a shared cluster) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{seq}", std::process::id())
}
