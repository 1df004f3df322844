//! Every setting of `tally-counter`: a flag with a `TALLY_*` environment
//! variable of the same name (12-factor; the operator sets these).
//! docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::buffer::{BufferFullPolicy, BufferSettings};
use crate::commit::CommitSettings;
use crate::grpc_serve::GrpcServing;
use crate::incoming::ConnectionLimits;
use crate::store::{ReplicaWait, StoreError, StoreOptions, StoreTimeouts, StoreTls};
use tally_runtime::consul::ConsulAccess;
use tally_runtime::http::HttpArgs;
use tally_runtime::reload::SettingFile;
use tally_runtime::rt::RuntimeArgs;
use tally_runtime::tls::{ClientFiles, ListenerTlsArgs};

/// An HTTP/2 PING unanswered this long closes the connection (dead peer).
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest gRPC request head (metadata), in bytes.
const GRPC_MAX_HEADER_BYTES: u32 = 16 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(name = "tally-counter", version, about = "tally's gRPC counter service")]
pub struct Config {
    /// gRPC listen address (CounterService, grpc.health.v1, reflection).
    #[arg(long, env = "TALLY_LISTEN", default_value = "[::]:9001")]
    pub listen: SocketAddr,

    /// HTTP side port for /health, /ready and /metrics.
    #[arg(long, env = "TALLY_ADMIN_LISTEN", default_value = "[::]:8081")]
    pub admin_listen: SocketAddr,

    /// `memory`, `redis://[:password@]host:port[/db]`, `rediss://…` (TLS), or
    /// `redis+cluster://[:password@]h1:p1,h2:p2,…`.
    #[arg(long, env = "TALLY_STORE", default_value = "memory", hide_env_values = true)]
    pub store: String,

    /// `rediss://`: PEM file of the certificate authority the server's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, env = "TALLY_STORE_TLS_CA_FILE")]
    pub store_tls_ca_file: Option<PathBuf>,

    /// `rediss://`: PEM client certificate, for servers that require one (`tls-auth-clients yes`).
    #[arg(long, env = "TALLY_STORE_TLS_CERT_FILE", requires = "store_tls_key_file")]
    pub store_tls_cert_file: Option<PathBuf>,

    /// `rediss://`: PEM private key of `TALLY_STORE_TLS_CERT_FILE`.
    #[arg(long, env = "TALLY_STORE_TLS_KEY_FILE", requires = "store_tls_cert_file")]
    pub store_tls_key_file: Option<PathBuf>,

    /// Limit on establishing one store connection, in milliseconds.
    #[arg(long, env = "TALLY_STORE_CONNECT_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub store_connect_timeout_ms: u64,

    /// Limit on one store round trip, in milliseconds; a hung store fails requests after this.
    #[arg(long, env = "TALLY_STORE_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub store_timeout_ms: u64,

    /// Replicas that must confirm every write before it is acknowledged (Redis `WAIT` after each
    /// flush); a write the master applied but too few replicas confirmed answers UNAVAILABLE,
    /// outcome unknown. 0: acknowledged once the master applied it.
    #[arg(long, env = "TALLY_STORE_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub store_wait_replicas: u32,

    /// How long a write waits for `TALLY_STORE_WAIT_REPLICAS` replicas, in milliseconds; at most half of `TALLY_STORE_TIMEOUT_MS`.
    #[arg(long, env = "TALLY_STORE_WAIT_TIMEOUT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub store_wait_timeout_ms: u64,

    /// Most operations one group-commit flush carries.
    #[arg(long, env = "TALLY_COMMIT_MAX_OPS", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub commit_max_ops: u64,

    /// Group-commit flushes in flight at once (pipelined on the store connection).
    #[arg(long, env = "TALLY_COMMIT_MAX_INFLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub commit_max_inflight: u64,

    /// Operations waiting for (or in) a group commit at most; a request that does not fit is
    /// refused at once with UNAVAILABLE (nothing applied). At least one full batch (1,000).
    #[arg(long, env = "TALLY_COMMIT_MAX_QUEUE", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    pub commit_max_queue: u64,

    /// How long an idempotency key is remembered per counter, in seconds (Redis keeps one small key per idempotent write for this long).
    #[arg(long, env = "TALLY_IDEMPOTENCY_RETENTION_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub idempotency_retention_s: u64,

    /// Async writes: flush the write-behind buffer once this many operations are buffered.
    #[arg(long, env = "TALLY_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,

    /// Async writes: flush the write-behind buffer at least this often, in milliseconds.
    #[arg(long, env = "TALLY_FLUSH_INTERVAL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub flush_interval_ms: u64,

    /// Async writes: most distinct counters held in the write-behind buffer.
    #[arg(long, env = "TALLY_BUFFER_CAPACITY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub buffer_capacity: u64,

    /// Async writes: life of the per-flush marker keys that make a resent flush apply once, in
    /// seconds; a flush whose outcome is unknown is resent for at most half of it.
    #[arg(long, env = "TALLY_BATCH_MARKER_TTL_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub batch_marker_ttl_s: u64,

    /// Async writes when the buffer is full: `sync` applies them synchronously, `reject` answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "TALLY_BUFFER_FULL_POLICY", value_enum, default_value_t = BufferFullPolicy::Sync)]
    pub buffer_full_policy: BufferFullPolicy,

    /// StreamIncrements: requests of one stream applied concurrently.
    #[arg(long, env = "TALLY_STREAM_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub stream_window: u64,

    /// Concurrent gRPC calls accepted per HTTP/2 connection.
    #[arg(long, env = "TALLY_MAX_CONCURRENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_concurrent_streams: u32,

    /// Largest gRPC message accepted, in bytes (a full 1000-operation batch is under 350 KiB).
    #[arg(long, env = "TALLY_GRPC_MAX_MESSAGE_BYTES", default_value_t = 524_288, value_parser = clap::value_parser!(u64).range(4_096..=4_194_304))]
    pub grpc_max_message_bytes: u64,

    /// Most open gRPC connections; more are closed at once.
    #[arg(long, env = "TALLY_GRPC_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub grpc_max_connections: u64,

    /// Time for a new gRPC connection to send its HTTP/2 preface, in milliseconds.
    #[arg(long, env = "TALLY_GRPC_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub grpc_handshake_timeout_ms: u64,

    /// A gRPC connection with no call open this long is sent a GOAWAY and closed, in
    /// milliseconds (also a new connection's wait for its first call).
    #[arg(long, env = "TALLY_GRPC_IDLE_TIMEOUT_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub grpc_idle_timeout_ms: u64,

    /// HTTP/2 PING interval towards clients, in milliseconds (0 turns it off).
    #[arg(long, env = "TALLY_HTTP2_KEEPALIVE_MS", default_value_t = 30_000)]
    pub http2_keepalive_ms: u64,

    /// How often the store is probed for readiness and grpc.health.v1, in milliseconds.
    #[arg(long, env = "TALLY_HEALTH_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub health_interval_ms: u64,

    /// On SIGTERM/SIGINT: time allowed to finish requests and drain the write-behind buffer, in milliseconds.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT_MS", default_value_t = 25_000)]
    pub shutdown_timeout_ms: u64,

    /// Serving on while reporting itself stopping (`TALLY_SHUTDOWN_DELAY_MS`).
    #[command(flatten)]
    pub shutdown_delay: tally_runtime::signal::ShutdownDelayArgs,

    /// Consul agent to register with (e.g. `http://127.0.0.1:8500`); unset = no registration.
    #[arg(long, env = "TALLY_CONSUL_ADDR")]
    pub consul_addr: Option<String>,

    /// Service name registered in Consul.
    #[arg(long, env = "TALLY_CONSUL_SERVICE", default_value = "counter-service")]
    pub consul_service: String,

    /// Address registered in Consul (default: the gRPC listen IP; required when that is unspecified, e.g. `[::]`).
    #[arg(long, env = "TALLY_CONSUL_SERVICE_ADDRESS")]
    pub consul_service_address: Option<String>,

    /// Tags registered in Consul, comma separated.
    #[arg(long, env = "TALLY_CONSUL_TAGS", value_delimiter = ',', default_value = "v2,optimized")]
    pub consul_tags: Vec<String>,

    /// Interval of Consul's gRPC health check, in seconds.
    #[arg(long, env = "TALLY_CONSUL_CHECK_INTERVAL_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub consul_check_interval_s: u64,

    /// Consul removes the registration after its check was critical this long, in seconds.
    #[arg(long, env = "TALLY_CONSUL_DEREGISTER_AFTER_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub consul_deregister_after_s: u64,

    /// Consul's CA and ACL token (`TALLY_CONSUL_CA_FILE`, `TALLY_CONSUL_TOKEN`).
    #[command(flatten)]
    pub consul_access: ConsulAccess,

    /// TLS on the gRPC listener, and client certificates it requires (`TALLY_TLS_*`).
    #[command(flatten)]
    pub tls: ListenerTlsArgs,

    /// Connection limits of the admin HTTP listener (`TALLY_HTTP_*`).
    #[command(flatten)]
    pub http: HttpArgs,

    /// Worker threads and log format (`TALLY_WORKER_THREADS`, `TALLY_LOG_FORMAT`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Config {
    /// Timeouts and TLS material for the store; a TLS file that cannot be
    /// read is an error naming its setting.
    pub fn store_options(&self) -> Result<StoreOptions, StoreError> {
        let read = |setting: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, StoreError> {
            path.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| StoreError::config(format!("{setting} {}: {e}", p.display()))))
                .transpose()
        };
        // Checked the way every other TLS file is, so a file that is not a
        // certificate, or a key that does not match, names its setting.
        if self.store_tls_ca_file.is_some() || self.store_tls_cert_file.is_some() {
            let ca = self.store_tls_ca_file.as_ref().map(|ca| SettingFile::new("TALLY_STORE_TLS_CA_FILE", ca));
            let identity =
                self.store_tls_cert_file.as_ref().zip(self.store_tls_key_file.as_ref()).map(|(cert, key)| {
                    (
                        SettingFile::new("TALLY_STORE_TLS_CERT_FILE", cert),
                        SettingFile::new("TALLY_STORE_TLS_KEY_FILE", key),
                    )
                });
            tally_runtime::tls::client(ClientFiles { ca, identity }, &[])
                .map_err(|err| StoreError::config(err.to_string()))?;
        }
        let ca = read("TALLY_STORE_TLS_CA_FILE", &self.store_tls_ca_file)?;
        let cert = read("TALLY_STORE_TLS_CERT_FILE", &self.store_tls_cert_file)?;
        let key = read("TALLY_STORE_TLS_KEY_FILE", &self.store_tls_key_file)?;
        let timeouts = self.store_timeouts();
        let wait = ReplicaWait::from_settings(self.store_wait_replicas, self.store_wait_timeout_ms, timeouts.response)?;
        Ok(StoreOptions { timeouts, tls: StoreTls { ca, client: cert.zip(key) }, wait })
    }

    pub fn store_timeouts(&self) -> StoreTimeouts {
        StoreTimeouts {
            connect: Duration::from_millis(self.store_connect_timeout_ms),
            response: Duration::from_millis(self.store_timeout_ms),
        }
    }

    pub fn commit(&self) -> CommitSettings {
        CommitSettings {
            max_ops: self.commit_max_ops as usize,
            max_inflight: self.commit_max_inflight as usize,
            max_queue: self.commit_max_queue as usize,
            idempotency_retention: Duration::from_secs(self.idempotency_retention_s),
        }
    }

    pub fn buffer(&self) -> BufferSettings {
        BufferSettings {
            batch_size: self.batch_size as usize,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            capacity: self.buffer_capacity as usize,
            marker_ttl: Duration::from_secs(self.batch_marker_ttl_s),
            full_policy: self.buffer_full_policy,
        }
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.grpc_max_connections as usize,
            handshake_timeout: Duration::from_millis(self.grpc_handshake_timeout_ms),
        }
    }

    pub fn grpc_serving(&self) -> GrpcServing {
        GrpcServing {
            keepalive_interval: (self.http2_keepalive_ms > 0).then(|| Duration::from_millis(self.http2_keepalive_ms)),
            keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: GRPC_MAX_HEADER_BYTES,
            idle_timeout: Duration::from_millis(self.grpc_idle_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_documented_with_its_default_and_the_live_ones_listed() {
        let command = <Config as clap::CommandFactory>::command();
        tally_testkit::docs::assert_service_settings_documented(
            &command,
            tally_runtime::live::COUNTER,
            "| live in `tally-counter`",
        );
    }

    #[test]
    fn defaults_follow_the_plan() {
        let config = Config::try_parse_from(["tally-counter"]).expect("defaults parse");
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.admin_listen.port(), 8081);
        assert_eq!(config.store, "memory");
        assert_eq!(config.buffer().batch_size, 100);
        assert_eq!(config.buffer().flush_interval, Duration::from_millis(100));
    }

    #[test]
    fn waiting_for_replicas_is_off_by_default_and_must_fit_in_a_store_round_trip() {
        let options = |args: &[&str]| {
            let config = Config::try_parse_from([&["tally-counter"], args].concat()).expect("parses");
            config.store_options()
        };
        assert_eq!(options(&[]).expect("defaults").wait, None);
        let wait = options(&["--store-wait-replicas", "1"]).expect("valid").wait.expect("waits");
        assert_eq!((wait.replicas, wait.timeout), (1, Duration::from_millis(100)));
        let err = options(&["--store-wait-replicas", "1", "--store-wait-timeout-ms", "600"]).expect_err("too long");
        assert!(err.to_string().contains("TALLY_STORE_WAIT_TIMEOUT_MS"), "{err}");
        assert!(Config::try_parse_from(["tally-counter", "--store-wait-replicas", "17"]).is_err());
    }

    #[test]
    fn rejects_out_of_range_tunables() {
        assert!(Config::try_parse_from(["tally-counter", "--batch-size", "0"]).is_err());
        assert!(Config::try_parse_from(["tally-counter", "--commit-max-inflight", "1000"]).is_err());
    }
}
