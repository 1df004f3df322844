//! The `CounterCluster` custom resource (`tally.dev/v1alpha1`): everything
//! needed to run a tally deployment, with every tunable of the services,
//! their validated ranges (schema) and relations (CEL rules), and defaults
//! equal to the services' own defaults (each struct's `Default`, which
//! schemars writes into the schema, so the CRD and the code cannot disagree).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod security;

mod autoscaling;

mod gateway;

pub use autoscaling::{AutoscalingSpec, PodsMetricSpec};
pub use gateway::{GatewaySpec, LbPolicy, ListenerSpec};
pub use security::{AuthSpec, StoreTlsSpec, TlsSpec};

/// A tally deployment: counters, gateways, the store, discovery, telemetry.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "CounterCluster",
    namespaced,
    status = "CounterClusterStatus",
    // Not `cc`: Cluster API's ClusterClass has that short name.
    shortname = "tcc",
    category = "tally",
    cel,
    // Every derived name must stay valid: `<name>-gateway` is a Service (a
    // DNS-1035 label, at most 63), `<name>-redis` a StatefulSet (at most 52,
    // or its pods' controller-revision-hash label overflows), and the name
    // is a label value (at most 63).
    validation = Rule::new(
        "self.metadata.name.size() <= 46 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ).message(
        "metadata.name must be at most 46 lowercase letters, digits or '-', starting with a letter and not ending with '-' (the names derived from it must be valid Service and StatefulSet names)"
    ),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Counters","type":"integer","jsonPath":".status.counterReadyReplicas"}"#,
    printcolumn = r#"{"name":"Wanted","type":"integer","jsonPath":".spec.counter.replicas"}"#,
    printcolumn = r#"{"name":"Gateways","type":"integer","jsonPath":".status.gatewayReadyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.store.managed) && self.store.managed) || self.counter.storeWaitReplicas == 0")
    .message("counter.storeWaitReplicas needs a Redis with replicas; the managed Redis has none"))]
pub struct CounterClusterSpec {
    /// Pull policy for both images.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.storeWaitReplicas == 0 || self.storeWaitTimeoutMs * 2 <= self.storeTimeoutMs")
        .message("storeWaitTimeoutMs must be at most half of storeTimeoutMs: a write waits for its replicas within one store call"))]
    pub counter: CounterSpec,
    // The relations between fields, as CEL rules on the object holding them.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.breakerMaxRecoveryMs >= self.breakerRecoveryMs")
        .message("breakerMaxRecoveryMs must be at least breakerRecoveryMs"))]
    #[x_kube(validation = Rule::new("self.requestTimeoutMs >= self.connectTimeoutMs")
        .message("requestTimeoutMs must be at least connectTimeoutMs"))]
    pub gateway: GatewaySpec,
    pub store: StoreSpec,
    #[serde(default)]
    pub discovery: DiscoverySpec,
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// API keys for the gateways' public API (`TALLY_AUTH=api_keys`); unset:
    /// anyone who reaches the gateway Service may call it (the default, for
    /// the original project's clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS between gateways and counters (mutual) and on the gateways'
    /// public port; unset: plain text inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("has(self.counterSecret) == has(self.gatewayClientSecret)")
        .message("counterSecret and gatewayClientSecret go together: TLS between gateways and counters is mutual"))]
    pub tls: Option<TlsSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// The counter service: gRPC, group commit into the store, write-behind buffer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CounterSpec {
    /// Counter image; unset: the image of the operator's own release
    /// (`ghcr.io/tally-dev/tally-counter:<operator version>`), so an
    /// operator upgrade rolls the counters too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Counter pods; the gateways balance over all ready ones. Ignored with `autoscaling`.
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Scale the counters with a HorizontalPodAutoscaler instead of `replicas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Requests and limits of the counter container.
    pub resources: ResourceRequirements,
    /// Store connect timeout, ms (`TALLY_STORE_CONNECT_TIMEOUT_MS`).
    #[schemars(range(min = 1, max = 60000))]
    pub store_connect_timeout_ms: i32,
    /// Store call timeout, ms (`TALLY_STORE_TIMEOUT_MS`).
    #[schemars(range(min = 1, max = 60000))]
    pub store_timeout_ms: i32,
    /// Redis replicas that must confirm every write before it is acknowledged
    /// (`TALLY_STORE_WAIT_REPLICAS`); 0: acknowledged once the master applied it.
    #[schemars(range(min = 0, max = 16))]
    pub store_wait_replicas: i32,
    /// How long a write waits for `storeWaitReplicas` replicas, ms
    /// (`TALLY_STORE_WAIT_TIMEOUT_MS`); at most half of `storeTimeoutMs`.
    #[schemars(range(min = 1, max = 60000))]
    pub store_wait_timeout_ms: i32,
    /// Most operations in one group commit (`TALLY_COMMIT_MAX_OPS`).
    #[schemars(range(min = 1, max = 100000))]
    pub commit_max_ops: i32,
    /// Group commits in flight at once (`TALLY_COMMIT_MAX_INFLIGHT`).
    #[schemars(range(min = 1, max = 256))]
    pub commit_max_inflight: i32,
    /// Async writes: flush once this many operations are buffered (`TALLY_BATCH_SIZE`).
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: i32,
    /// Async writes: flush at least this often, ms (`TALLY_FLUSH_INTERVAL_MS`).
    #[schemars(range(min = 1, max = 60000))]
    pub flush_interval_ms: i32,
    /// Most distinct counters buffered (`TALLY_BUFFER_CAPACITY`).
    #[schemars(range(min = 1, max = 10000000))]
    pub buffer_capacity: i32,
    /// What an async write does when the buffer is full (`TALLY_BUFFER_FULL_POLICY`).
    pub buffer_full_policy: BufferFullPolicy,
    /// How long idempotency keys are remembered, s (`TALLY_IDEMPOTENCY_RETENTION_S`).
    #[schemars(range(min = 1, max = 604800))]
    pub idempotency_retention_s: i32,
    /// Operations waiting for (or in) a group commit at most; a request that does not fit is refused at once (`TALLY_COMMIT_MAX_QUEUE`).
    #[schemars(range(min = 1000, max = 10000000))]
    pub commit_max_queue: i32,
    /// Life of write-behind batch markers in Redis, s; unconfirmed flushes are resent for half of
    /// it (`TALLY_BATCH_MARKER_TTL_S`).
    #[schemars(range(min = 60, max = 86400))]
    pub batch_marker_ttl_s: i32,
    /// Largest gRPC message, bytes (`TALLY_GRPC_MAX_MESSAGE_BYTES`).
    #[schemars(range(min = 4096, max = 4194304))]
    pub grpc_max_message_bytes: i32,
    /// Most open gRPC connections (`TALLY_GRPC_MAX_CONNECTIONS`).
    #[schemars(range(min = 1, max = 1000000))]
    pub grpc_max_connections: i32,
    /// Time for a new gRPC connection's HTTP/2 preface, ms (`TALLY_GRPC_HANDSHAKE_TIMEOUT_MS`).
    #[schemars(range(min = 100, max = 600000))]
    pub grpc_handshake_timeout_ms: i32,
    /// A gRPC connection with no call open this long is sent a GOAWAY and closed, ms
    /// (`TALLY_GRPC_IDLE_TIMEOUT_MS`).
    #[schemars(range(min = 1000, max = 86400000))]
    pub grpc_idle_timeout_ms: i32,
    /// HTTP/2 keep-alive ping interval, ms (`TALLY_HTTP2_KEEPALIVE_MS`).
    #[schemars(range(min = 1000, max = 3600000))]
    pub keepalive_ms: i32,
    /// Drain budget on SIGTERM, ms (`TALLY_SHUTDOWN_TIMEOUT_MS`); the pod's
    /// grace period is a 5 s `preStop` sleep plus this plus 15 s.
    #[schemars(range(min = 1000, max = 600000))]
    pub shutdown_timeout_ms: i32,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BufferFullPolicy {
    /// Write synchronously instead (slower, never refused).
    #[default]
    Sync,
    /// Refuse with 429 / RESOURCE_EXHAUSTED.
    Reject,
}

/// Where counters live: a Redis URL, a Secret holding it, or a managed
/// single-node Redis for trying tally out. Exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.url) ? 1 : 0) + (has(self.urlSecret) ? 1 : 0) + (has(self.managed) && self.managed ? 1 : 0) == 1"
).message("set exactly one of url, urlSecret or managed: true"))]
#[x_kube(validation = Rule::new("!has(self.url) || !self.url.matches('^[a-z+]+://[^/@]*:[^/@]*@')")
    .message("store.url may not carry a password (it would be readable by anyone who can read the CounterCluster): put the URL in urlSecret"))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.url) || self.url.startsWith('rediss')")
    .message("store.tls needs a rediss:// or rediss+cluster:// url"))]
#[x_kube(validation = Rule::new("!has(self.tls) || !(has(self.managed) && self.managed)")
    .message("store.tls is for your own Redis; the managed Redis is reached in plain text inside the namespace"))]
pub struct StoreSpec {
    /// `redis://…`, `rediss://…` (TLS), `redis+cluster://…` or `rediss+cluster://…` (a Cluster over TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(redis|rediss|redis\+cluster|rediss\+cluster)://"))]
    pub url: Option<String>,
    /// A Secret key holding the URL (passwords belong here, not in `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKeyRef>,
    /// Run a single-node Redis StatefulSet (for trying it out, not production).
    #[serde(default)]
    pub managed: bool,
    /// TLS material for a `rediss://` store beyond the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StoreTlsSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'consul' || has(self.consulAddress)")
    .message("mode consul needs consulAddress"))]
pub struct DiscoverySpec {
    /// How gateways find counters (`TALLY_DISCOVERY`): EndpointSlices of the
    /// counter Service, its DNS name, or Consul (counters self-register).
    #[serde(default)]
    pub mode: DiscoveryMode,
    /// Consul agent address when `mode: consul`, e.g. `http://consul.consul.svc:8500` or `https://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub consul_address: Option<String>,
    /// `https://` Consul: a Secret whose `ca.crt` Consul's certificate must chain to
    /// (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_ca_secret: Option<String>,
    /// The Secret key holding Consul's ACL token (`TALLY_CONSUL_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_token_secret: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMode {
    #[default]
    Kubernetes,
    Dns,
    Consul,
}

/// Traces, logs. Metrics are always on (`/metrics`, scrape annotations).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TelemetrySpec {
    /// OTLP/gRPC endpoint traces go to (`OTEL_EXPORTER_OTLP_ENDPOINT`),
    /// e.g. `http://jaeger.tally.svc:4317` or `https://…`; unset exports nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// `https://` collector: a Secret whose `ca.crt` the collector's certificate must chain to
    /// (default: the system's roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_ca_secret: Option<String>,
    /// Share of new traces sampled; a sampled caller is followed by the counters, and by the
    /// gateways only with `gateway.traceTrustCaller` (`OTEL_TRACES_SAMPLER_ARG`, parent-based
    /// ratio sampler).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: f64,
    /// `json` or `text` (`TALLY_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG`), e.g. `info` or `info,tally_gateway=debug`.
    #[schemars(length(min = 1, max = 512))]
    pub log_level: String,
    /// Also make a prometheus-operator PodMonitor for the counters' and
    /// gateways' `/metrics` (prometheus-operator ignores the `prometheus.io/*`
    /// annotations the pods carry; needs the monitoring.coreos.com CRDs).
    pub pod_monitor: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub counter_ready_replicas: i32,
    #[serde(default)]
    pub gateway_ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// Ready, Progressing, Degraded: one of each (a map keyed by `type`,
    /// so server-side apply merges them by type).
    #[serde(default)]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// Requests (and a memory limit: CPU limits only throttle a latency service).
fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), quantity(cpu)), ("memory".into(), quantity(memory))])),
        limits: Some(BTreeMap::from([("memory".into(), quantity(memory_limit))])),
        ..ResourceRequirements::default()
    }
}

impl Default for CounterSpec {
    fn default() -> Self {
        CounterSpec {
            autoscaling: None,
            image: None,
            replicas: 2,
            resources: resources("250m", "128Mi", "512Mi"),
            store_connect_timeout_ms: 500,
            store_timeout_ms: 1000,
            store_wait_replicas: 0,
            store_wait_timeout_ms: 100,
            commit_max_ops: 2048,
            commit_max_inflight: 4,
            batch_size: 100,
            flush_interval_ms: 100,
            buffer_capacity: 100_000,
            buffer_full_policy: BufferFullPolicy::Sync,
            idempotency_retention_s: 600,
            commit_max_queue: 65_536,
            batch_marker_ttl_s: 600,
            grpc_max_message_bytes: 524_288,
            grpc_max_connections: 1024,
            grpc_handshake_timeout_ms: 10_000,
            grpc_idle_timeout_ms: 300_000,
            keepalive_ms: 30_000,
            shutdown_timeout_ms: 25_000,
        }
    }
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        TelemetrySpec {
            otlp_endpoint: None,
            otlp_ca_secret: None,
            pod_monitor: false,
            sampling_ratio: 0.1,
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}

/// The image of `component` (`tally-counter`, `tally-gateway`) when the
/// spec names none: the operator's own release, decided at reconcile time
/// (not a schema default, which the API server would persist into every
/// object and so freeze at creation).
pub fn default_image(component: &str) -> String {
    format!("ghcr.io/tally-dev/{component}:{}", env!("CARGO_PKG_VERSION"))
}

/// The CRD as YAML, as committed under `deploy/crds/` and in the chart.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&CounterCluster::crd()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
