//! Every setting of `tally-gateway`: a flag with a `TALLY_*` environment
//! variable of the same name. docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::ServerName;
use tally_runtime::consul::ConsulAccess;
use tally_runtime::http::HttpArgs;
use tally_runtime::reload::SettingFile;
use tally_runtime::rt::RuntimeArgs;
use tally_runtime::tls::{ClientFiles, ListenerTlsArgs, TlsReloadError};

use crate::client::{ClientSettings, UpstreamTls};

/// Why TLS to the counters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("TALLY_COUNTER_TLS_SERVER_NAME {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error(transparent)]
    Files(#[from] TlsReloadError),
}
use crate::client::balance::Policy;
use crate::client::breaker::BreakerSettings;

/// Where the counter endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    /// `TALLY_COUNTER_ENDPOINTS`, fixed at startup.
    Static,
    /// Periodic resolution of `TALLY_DNS_NAME` (a headless Service).
    Dns,
    /// Watch of the counter Service's EndpointSlices.
    Kubernetes,
    /// Passing instances in Consul (blocking queries).
    Consul,
}

/// How API callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Nobody is asked (the default, so the original project's clients work unchanged).
    None,
    /// `Authorization: Bearer <key>` for a key in `TALLY_AUTH_KEYS_FILE`.
    #[value(name = "api_keys")]
    ApiKeys,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "tally-gateway", version, about = "tally's HTTP/JSON gateway")]
pub struct Config {
    /// Public HTTP listen address: the API and `/api/v1/health`.
    #[arg(long, env = "TALLY_LISTEN", default_value = "[::]:8080")]
    pub listen: SocketAddr,

    /// Admin HTTP listen address: probes (`/health`, `/ready`), `/metrics` and the backend view
    /// (`/api/v1/system/backends`, which shows pod addresses). Keep it off the public network.
    #[arg(long, env = "TALLY_ADMIN_LISTEN", default_value = "[::]:8082")]
    pub admin_listen: SocketAddr,

    /// Requests served at once on the public port; more are answered 503 with `Retry-After` at once.
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,

    /// Bytes the bodies of the public requests in flight may hold together; a body that would pass it
    /// is answered 503 with `Retry-After` at once. At least one largest body (1 MiB).
    #[arg(long, env = "TALLY_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    pub max_body_bytes_in_flight: u64,

    /// Time for a request body to arrive complete, in milliseconds; slower bodies get 408.
    #[arg(long, env = "TALLY_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_body_timeout_ms: u64,

    /// Discovery source of counter endpoints: `static`, `dns`, `kubernetes` or `consul`.
    #[arg(long, env = "TALLY_DISCOVERY", value_enum, default_value_t = Discovery::Static)]
    pub discovery: Discovery,

    /// Counter gRPC endpoints, comma separated.
    #[arg(long, env = "TALLY_COUNTER_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:9001")]
    pub counter_endpoints: Vec<String>,

    /// TLS to the counters: PEM CA their certificates must chain to. When set, every counter
    /// connection is TLS (`http://` endpoints are dialled as `https://`).
    #[arg(long, env = "TALLY_COUNTER_TLS_CA_FILE")]
    pub counter_tls_ca_file: Option<PathBuf>,

    /// TLS to the counters: PEM client certificate, for counters that require one (mutual TLS).
    #[arg(long, env = "TALLY_COUNTER_TLS_CERT_FILE", requires_all = ["counter_tls_key_file", "counter_tls_ca_file"])]
    pub counter_tls_cert_file: Option<PathBuf>,

    /// TLS to the counters: PEM private key of `TALLY_COUNTER_TLS_CERT_FILE`.
    #[arg(long, env = "TALLY_COUNTER_TLS_KEY_FILE", requires = "counter_tls_cert_file")]
    pub counter_tls_key_file: Option<PathBuf>,

    /// TLS to the counters: the name their certificates must carry (default: each endpoint's
    /// host; discovered endpoints are IP addresses, so set the Service's DNS name here).
    #[arg(long, env = "TALLY_COUNTER_TLS_SERVER_NAME", requires = "counter_tls_ca_file")]
    pub counter_tls_server_name: Option<String>,

    /// TLS on the public HTTP port (HTTP/1.1 and HTTP/2 by ALPN), optionally requiring client
    /// certificates (`TALLY_TLS_*`).
    #[command(flatten)]
    pub tls: ListenerTlsArgs,

    /// `dns` discovery: `host:port` to resolve, e.g. `tally-counter-headless.default.svc.cluster.local:9001`.
    #[arg(long, env = "TALLY_DNS_NAME")]
    pub dns_name: Option<String>,

    /// `dns` discovery: how often the name is resolved again, in milliseconds.
    #[arg(long, env = "TALLY_DNS_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub dns_interval_ms: u64,

    /// `kubernetes` discovery: namespace of the counter Service (default: the client's, e.g. the pod's own).
    #[arg(long, env = "TALLY_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,

    /// `kubernetes` discovery: name of the counter Service whose EndpointSlices are watched.
    #[arg(long, env = "TALLY_K8S_SERVICE", default_value = "tally-counter")]
    pub k8s_service: String,

    /// `kubernetes` discovery: name of the gRPC port in the EndpointSlices.
    #[arg(long, env = "TALLY_K8S_PORT_NAME", default_value = "grpc")]
    pub k8s_port_name: String,

    /// `consul` discovery: the Consul agent's HTTP address.
    #[arg(long, env = "TALLY_CONSUL_ADDR", default_value = "http://127.0.0.1:8500")]
    pub consul_addr: String,

    /// `consul` discovery: Consul's CA and ACL token (`TALLY_CONSUL_CA_FILE`, `TALLY_CONSUL_TOKEN`).
    #[command(flatten)]
    pub consul_access: ConsulAccess,

    /// `consul` discovery: the counters' service name.
    #[arg(long, env = "TALLY_CONSUL_SERVICE", default_value = "counter-service")]
    pub consul_service: String,

    /// `consul` discovery: only instances with this tag.
    #[arg(long, env = "TALLY_CONSUL_TAG")]
    pub consul_tag: Option<String>,

    /// `consul` discovery: longest blocking-query wait, in seconds.
    #[arg(long, env = "TALLY_CONSUL_WAIT_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub consul_wait_s: u64,

    /// HTTP/2 connections kept to each counter endpoint.
    #[arg(long, env = "TALLY_POOL_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub pool_size: u64,

    /// HTTP/2 PING interval on idle and busy connections, in milliseconds.
    #[arg(long, env = "TALLY_KEEPALIVE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub keepalive_ms: u64,

    /// Limit on establishing a connection to a counter, in milliseconds.
    #[arg(long, env = "TALLY_CONNECT_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub connect_timeout_ms: u64,

    /// Limit on one call to a counter, in milliseconds.
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// How often each endpoint's grpc.health.v1 status is checked, in milliseconds.
    #[arg(long, env = "TALLY_HEALTH_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub health_interval_ms: u64,

    /// Coalesce concurrent single increments into BatchIncrement calls.
    #[arg(long, env = "TALLY_COALESCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub coalesce: bool,

    /// Most increments coalesced into one call.
    #[arg(long, env = "TALLY_COALESCE_MAX_OPS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub coalesce_max_ops: u64,

    /// Increments waiting for a coalesced call at most; more are answered 503 at once.
    #[arg(long, env = "TALLY_COALESCE_MAX_QUEUE", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub coalesce_max_queue: u64,

    /// Coalesced calls of each kind (increments, reads) in flight at once per counter endpoint
    /// (fewer, larger batches cost the counters less).
    #[arg(long, env = "TALLY_COALESCE_MAX_INFLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub coalesce_max_inflight: u64,

    /// Balancing policy: `round_robin`, `least_request` (power of two choices over calls in
    /// flight; `least_conn` is accepted for it) or `weighted` (endpoint weights, `http://h:p;weight=N`).
    #[arg(long, env = "TALLY_LB_POLICY", value_enum, default_value_t = Policy::RoundRobin)]
    pub lb_policy: Policy,

    /// Circuit breaker: consecutive failures that open an endpoint's breaker.
    #[arg(long, env = "TALLY_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_failures: u32,

    /// Circuit breaker: first recovery time, in milliseconds; doubles with each reopening.
    #[arg(long, env = "TALLY_BREAKER_RECOVERY_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub breaker_recovery_ms: u64,

    /// Circuit breaker: longest recovery time, in milliseconds.
    #[arg(long, env = "TALLY_BREAKER_MAX_RECOVERY_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub breaker_max_recovery_ms: u64,

    /// Circuit breaker: calls let through while half-open.
    #[arg(long, env = "TALLY_BREAKER_HALF_OPEN_PROBES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub breaker_half_open_probes: u32,

    /// Circuit breaker: most endpoints (percent) ejected at once.
    #[arg(long, env = "TALLY_BREAKER_MAX_EJECTION_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub breaker_max_ejection_percent: u32,

    /// Attempts per call to the counters, the first included (1 = no retries). Writes are
    /// resent only when provably not applied, or when they carry idempotency keys.
    #[arg(long, env = "TALLY_RETRY_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub retry_attempts: u32,

    /// Retry budget: retries allowed as a percentage of recent calls (0 to 1000).
    #[arg(long, env = "TALLY_RETRY_BUDGET_PERCENT", default_value_t = 20.0, value_parser = percent)]
    pub retry_budget_percent: f32,

    /// Retry budget: retries always allowed per second.
    #[arg(long, env = "TALLY_RETRY_MIN_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub retry_min_per_second: u32,

    /// Read cache time-to-live, in milliseconds (0 turns the cache off; at most a day).
    #[arg(long, env = "TALLY_CACHE_TTL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub cache_ttl_ms: u64,

    /// Read cache size, in counters.
    #[arg(long, env = "TALLY_CACHE_MAX_ENTRIES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub cache_max_entries: u64,

    /// Who may call the API: `none` (anyone who reaches the port) or `api_keys` (a Bearer key
    /// from `TALLY_AUTH_KEYS_FILE`, with its scopes, resource prefix and rate).
    #[arg(long, env = "TALLY_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// `api_keys`: the YAML file of keys (SHA-256 digests, never the keys), re-read when it changes.
    #[arg(long, env = "TALLY_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<std::path::PathBuf>,

    /// `api_keys`: how often the keys file is checked for changes, in milliseconds.
    #[arg(long, env = "TALLY_AUTH_RELOAD_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub auth_reload_ms: u64,

    /// On SIGTERM/SIGINT: time allowed for in-flight requests, in milliseconds.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Serving on while reporting itself stopping (`TALLY_SHUTDOWN_DELAY_MS`).
    #[command(flatten)]
    pub shutdown_delay: tally_runtime::signal::ShutdownDelayArgs,

    /// Follow the sampled flag of callers' `traceparent` headers. Off: the gateway's own sampler
    /// decides (a client sending `-01` cannot have every request traced); turn on when the
    /// gateway only serves trusted, already-sampled callers (e.g. behind a tracing mesh).
    #[arg(long, env = "TALLY_TRACE_TRUST_CALLER", default_value_t = false, action = clap::ArgAction::Set)]
    pub trace_trust_caller: bool,

    /// Connection limits of both HTTP listeners (`TALLY_HTTP_*`).
    #[command(flatten)]
    pub http: HttpArgs,

    /// Worker threads and log format (`TALLY_WORKER_THREADS`, `TALLY_LOG_FORMAT`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A percentage from 0 to 1000 (not NaN, not infinite).
fn percent(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(value) if (0.0..=1000.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a percentage from 0 to 1000")),
    }
}

impl Config {
    /// The defaults, from the one place they are defined (the `clap`
    /// attributes above): for unit tests, with no command line.
    #[cfg(test)]
    pub fn defaults() -> Config {
        Config::parse_from(["tally-gateway"])
    }

    /// TLS to the counters as configured, loaded now; `None`: plain text.
    pub fn upstream_tls(&self) -> Result<Option<UpstreamTls>, UpstreamTlsError> {
        let Some(ca) = &self.counter_tls_ca_file else { return Ok(None) };
        let identity =
            self.counter_tls_cert_file.as_ref().zip(self.counter_tls_key_file.as_ref()).map(|(cert, key)| {
                (
                    SettingFile::new("TALLY_COUNTER_TLS_CERT_FILE", cert),
                    SettingFile::new("TALLY_COUNTER_TLS_KEY_FILE", key),
                )
            });
        let files = ClientFiles { ca: Some(SettingFile::new("TALLY_COUNTER_TLS_CA_FILE", ca)), identity };
        let server_name = match &self.counter_tls_server_name {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|_| UpstreamTlsError::ServerName(name.clone()))?)
            }
            None => None,
        };
        let config = tally_runtime::tls::client(files, tally_runtime::tls::ALPN_H2)?;
        Ok(Some(UpstreamTls { config: Arc::new(config), server_name }))
    }

    pub fn client(&self) -> ClientSettings {
        ClientSettings {
            pool_size: self.pool_size as usize,
            keepalive: Duration::from_millis(self.keepalive_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            health_interval: Duration::from_millis(self.health_interval_ms),
            coalesce: self.coalesce,
            coalesce_max_ops: self.coalesce_max_ops as usize,
            coalesce_max_inflight: self.coalesce_max_inflight as usize,
            coalesce_max_queue: self.coalesce_max_queue as usize,
            retry_attempts: self.retry_attempts,
            retry_budget_percent: self.retry_budget_percent,
            retry_min_per_second: self.retry_min_per_second,
            policy: self.lb_policy,
            breaker: BreakerSettings {
                failure_threshold: self.breaker_failures,
                recovery: Duration::from_millis(self.breaker_recovery_ms),
                max_recovery: Duration::from_millis(self.breaker_max_recovery_ms.max(self.breaker_recovery_ms)),
                half_open_probes: self.breaker_half_open_probes,
            },
            max_ejection_percent: self.breaker_max_ejection_percent,
            workers: Vec::new(),
            tls: None,
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
            tally_runtime::live::GATEWAY,
            "| live in `tally-gateway`",
        );
    }

    #[test]
    fn defaults_follow_the_plan() {
        let config = Config::try_parse_from(["tally-gateway"]).expect("defaults parse");
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.counter_endpoints, vec!["http://127.0.0.1:9001"]);
        assert_eq!(config.pool_size, 20);
        assert_eq!(config.keepalive_ms, 30_000);
        assert_eq!(config.cache_ttl_ms, 5000);
        assert_eq!(config.cache_max_entries, 10_000);
        assert!(config.coalesce);
    }

    #[test]
    fn policy_names_are_the_documented_ones() {
        for name in ["round_robin", "least_request", "weighted"] {
            let config = Config::try_parse_from(["tally-gateway", "--lb-policy", name]).expect(name);
            assert_eq!(config.lb_policy.name(), name);
        }
        let plan = Config::try_parse_from(["tally-gateway", "--lb-policy", "least_conn"]).expect("the plan's name");
        assert_eq!(plan.lb_policy, Policy::LeastRequest, "least_conn is the least-request policy");
    }

    #[test]
    fn endpoint_list_and_switches() {
        let config = Config::try_parse_from([
            "tally-gateway",
            "--counter-endpoints",
            "http://a:1,http://b:2",
            "--coalesce",
            "false",
        ])
        .expect("parse");
        assert_eq!(config.counter_endpoints, vec!["http://a:1", "http://b:2"]);
        assert!(!config.coalesce);
        assert!(Config::try_parse_from(["tally-gateway", "--pool-size", "0"]).is_err());
        // Values the budget and the cache would panic on never get past the parser.
        for (flag, value) in [
            ("--retry-budget-percent", "NaN"),
            ("--retry-budget-percent", "-1"),
            ("--retry-budget-percent", "inf"),
            ("--retry-min-per-second", "2147483647"),
            ("--cache-ttl-ms", "99999999999999"),
        ] {
            assert!(Config::try_parse_from(["tally-gateway", flag, value]).is_err(), "{flag} {value}");
        }
    }
}
