//! The `CounterCluster` custom resource (`tally.dev/v1alpha1`): everything
//! needed to run a tally deployment, with the services' tunables, their
//! validated ranges and defaults equal to the services' own defaults.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tally deployment: counters, gateways, the store, discovery and every tunable.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "CounterCluster",
    namespaced,
    status = "CounterClusterStatus",
    shortname = "cc",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Counters","type":"integer","jsonPath":".status.counterReadyReplicas"}"#,
    printcolumn = r#"{"name":"Gateways","type":"integer","jsonPath":".status.gatewayReadyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CounterClusterSpec {
    #[serde(default)]
    pub counter: CounterSpec,
    #[serde(default)]
    pub gateway: GatewaySpec,
    pub store: StoreSpec,
    #[serde(default)]
    pub discovery: DiscoverySpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterSpec {
    #[serde(default = "default_counter_image")]
    pub image: String,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Async writes: flush once this many operations are buffered (`TALLY_BATCH_SIZE`).
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: u32,
    /// Async writes: flush at least this often, ms (`TALLY_FLUSH_INTERVAL_MS`).
    #[serde(default = "default_flush_interval_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub flush_interval_ms: u32,
    /// Most distinct counters buffered (`TALLY_BUFFER_CAPACITY`).
    #[serde(default = "default_buffer_capacity")]
    #[schemars(range(min = 1, max = 10000000))]
    pub buffer_capacity: u32,
    /// How long idempotency keys are remembered, s (`TALLY_IDEMPOTENCY_RETENTION_S`).
    #[serde(default = "default_idempotency_retention_s")]
    #[schemars(range(min = 1, max = 604800))]
    pub idempotency_retention_s: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default = "default_gateway_image")]
    pub image: String,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// HTTP/2 connections per counter endpoint (`TALLY_POOL_SIZE`).
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 256))]
    pub pool_size: u32,
    /// Read cache TTL, ms; 0 disables (`TALLY_CACHE_TTL_MS`).
    #[serde(default = "default_cache_ttl_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub cache_ttl_ms: u32,
    /// Read cache size (`TALLY_CACHE_MAX_ENTRIES`).
    #[serde(default = "default_cache_max_entries")]
    #[schemars(range(min = 0, max = 10000000))]
    pub cache_max_entries: u32,
    /// `round_robin`, `least_request` or `weighted` (`TALLY_LB_POLICY`).
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Attempts per call, first included (`TALLY_RETRY_ATTEMPTS`).
    #[serde(default = "default_retry_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub retry_attempts: u32,
    /// Consecutive failures that open a breaker (`TALLY_BREAKER_FAILURES`).
    #[serde(default = "default_breaker_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub breaker_failures: u32,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Weighted,
}

/// Where counters live: a Redis URL (or a Secret holding it), or a managed
/// single-node Redis for trying tally out.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreSpec {
    /// `redis://…` or `redis+cluster://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Secret key holding the URL (takes precedence over `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKeyRef>,
    /// Run a single-node Redis StatefulSet (for trying it out, not production).
    #[serde(default)]
    pub managed: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    #[serde(default)]
    pub mode: DiscoveryMode,
    /// Consul agent address when `mode: consul`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_address: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMode {
    #[default]
    Kubernetes,
    Dns,
    Consul,
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
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

fn default_counter_image() -> String {
    "ghcr.io/tally-dev/tally-counter:0.1.0".into()
}
fn default_gateway_image() -> String {
    "ghcr.io/tally-dev/tally-gateway:0.1.0".into()
}
fn default_replicas() -> i32 {
    2
}
fn default_batch_size() -> u32 {
    100
}
fn default_flush_interval_ms() -> u32 {
    100
}
fn default_buffer_capacity() -> u32 {
    100_000
}
fn default_idempotency_retention_s() -> u32 {
    600
}
fn default_pool_size() -> u32 {
    20
}
fn default_cache_ttl_ms() -> u32 {
    5000
}
fn default_cache_max_entries() -> u32 {
    10_000
}
fn default_retry_attempts() -> u32 {
    3
}
fn default_breaker_failures() -> u32 {
    5
}

impl Default for CounterSpec {
    fn default() -> Self {
        CounterSpec {
            image: default_counter_image(),
            replicas: default_replicas(),
            batch_size: default_batch_size(),
            flush_interval_ms: default_flush_interval_ms(),
            buffer_capacity: default_buffer_capacity(),
            idempotency_retention_s: default_idempotency_retention_s(),
        }
    }
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            image: default_gateway_image(),
            replicas: default_replicas(),
            pool_size: default_pool_size(),
            cache_ttl_ms: default_cache_ttl_ms(),
            cache_max_entries: default_cache_max_entries(),
            lb_policy: LbPolicy::default(),
            retry_attempts: default_retry_attempts(),
            breaker_failures: default_breaker_failures(),
        }
    }
}

/// The CRD as YAML, as committed under `deploy/crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&CounterCluster::crd()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_services_defaults() {
        let spec: CounterClusterSpec = serde_json::from_value(serde_json::json!({"store": {"managed": true}})).unwrap();
        assert_eq!(spec.counter.batch_size, 100);
        assert_eq!(spec.counter.flush_interval_ms, 100);
        assert_eq!(spec.counter.buffer_capacity, 100_000);
        assert_eq!(spec.counter.idempotency_retention_s, 600);
        assert_eq!(spec.gateway.pool_size, 20);
        assert_eq!(spec.gateway.cache_ttl_ms, 5000);
        assert_eq!(spec.gateway.cache_max_entries, 10_000);
        assert_eq!(spec.gateway.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(spec.gateway.retry_attempts, 3);
        assert_eq!(spec.discovery.mode, DiscoveryMode::Kubernetes);
    }

    #[test]
    fn the_committed_crds_match_the_rust_types() {
        let committed = include_str!("../../deploy/crds/countercluster.yaml");
        assert_eq!(committed, crd_yaml(), "deploy/crds/countercluster.yaml drifted: run `make crd`");
        let in_chart = include_str!("../../charts/tally-operator/crds/countercluster.yaml");
        assert_eq!(in_chart, crd_yaml(), "the chart's CRD drifted: run `make crd`");
    }

    #[test]
    fn chart_metadata_and_values_parse() {
        for text in [
            include_str!("../../charts/tally-operator/Chart.yaml"),
            include_str!("../../charts/tally-operator/values.yaml"),
        ] {
            let parsed: Result<serde_json::Value, _> = serde_yaml_ng::from_str(text);
            assert!(parsed.is_ok(), "{parsed:?}");
        }
    }
}
