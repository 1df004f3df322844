//! Settings as ConfigMaps: each component's `TALLY_*`/`OTEL_*` variables
//! live in one ConfigMap the pods load with `envFrom`, and the pod template
//! carries a hash of it, so changing a tunable rolls exactly the Deployment
//! whose settings changed (a ConfigMap edit alone would not restart pods).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, EnvFromSource, EnvVar, EnvVarSource, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, SleepAction,
};
use kube::ResourceExt;

use super::owned_meta;
use crate::crd::{CounterCluster, LogFormat};

/// The pod-template annotation holding the settings' hash.
pub const HASH_ANNOTATION: &str = "tally.dev/config-hash";

pub type Settings = BTreeMap<String, String>;

pub fn name(cc: &CounterCluster, component: &str) -> String {
    format!("{}-{component}-config", cc.name_any())
}

/// Tracing and logging settings shared by both services.
pub fn telemetry(cc: &CounterCluster, service_name: &str) -> Settings {
    let t = &cc.spec.telemetry;
    let mut settings = Settings::from([
        ("OTEL_SERVICE_NAME".to_string(), service_name.to_string()),
        ("OTEL_TRACES_SAMPLER".to_string(), "parentbased_traceidratio".to_string()),
        ("OTEL_TRACES_SAMPLER_ARG".to_string(), t.sampling_ratio.to_string()),
        ("RUST_LOG".to_string(), t.log_level.clone()),
        (
            "TALLY_LOG_FORMAT".to_string(),
            match t.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }
            .to_string(),
        ),
    ]);
    if let Some(endpoint) = &t.otlp_endpoint {
        settings.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
    }
    settings
}

pub fn config_map(cc: &CounterCluster, component: &str, settings: Settings) -> ConfigMap {
    ConfigMap { metadata: owned_meta(cc, name(cc, component), component), data: Some(settings), ..ConfigMap::default() }
}

/// SHA-256 of the settings, hex: stable across operator versions, so an
/// operator upgrade alone does not restart every pod.
pub fn hash(settings: &Settings) -> String {
    let mut bytes = Vec::new();
    for (key, value) in settings {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Pod-template annotations: Prometheus scrape hints for `metrics_port`,
/// and the settings' hash, whose change rolls the Deployment.
pub fn pod_annotations(metrics_port: i32, settings: &Settings) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), metrics_port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (HASH_ANNOTATION.to_string(), hash(settings)),
    ])
}

/// Seconds a terminating pod goes on serving before it gets SIGTERM (a
/// `preStop` sleep): the endpoint controllers, kube-proxy and the gateways'
/// discovery need a moment to stop sending it new requests, and a listener
/// closed before then would refuse some.
pub const PRE_STOP_SLEEP_S: i64 = 5;

/// Seconds Kubernetes allows from the start of termination to SIGKILL: the
/// `preStop` sleep plus more than the service's own drain budget, so
/// SIGKILL never cuts a drain short.
pub fn grace_period(shutdown_timeout_ms: i32) -> i64 {
    PRE_STOP_SLEEP_S + i64::from(shutdown_timeout_ms.max(0).unsigned_abs().div_ceil(1000)) + 15
}

/// The `preStop` sleep (the kubelet's own sleep action: the images have no shell).
pub fn pre_stop() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: PRE_STOP_SLEEP_S }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// `envFrom` the component's ConfigMap.
pub fn env_from(cc: &CounterCluster, component: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: name(cc, component), optional: Some(false) }),
        ..EnvFromSource::default()
    }]
}

/// The pod's own name and namespace (downward API), which the services
/// report as trace resource attributes.
pub fn pod_identity() -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    vec![field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn the_hash_changes_with_any_setting_and_only_then() {
        let a = Settings::from([("TALLY_BATCH_SIZE".to_string(), "100".to_string())]);
        let mut b = a.clone();
        assert_eq!(hash(&a), hash(&b));
        b.insert("TALLY_BATCH_SIZE".into(), "101".into());
        assert_ne!(hash(&a), hash(&b));
        // Key/value boundaries count: "ab"="c" is not "a"="bc".
        let ab = Settings::from([("ab".to_string(), "c".to_string())]);
        let a_bc = Settings::from([("a".to_string(), "bc".to_string())]);
        assert_ne!(hash(&ab), hash(&a_bc));
        assert_eq!(hash(&a).len(), 64);
    }

    #[test]
    fn telemetry_settings_follow_the_spec() {
        let off = sample(serde_json::json!({"store": {"managed": true}}));
        let settings = telemetry(&off, "tally-counter");
        assert!(!settings.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"), "no endpoint, no export");
        assert_eq!(settings["OTEL_TRACES_SAMPLER_ARG"], "0.1");
        assert_eq!(settings["TALLY_LOG_FORMAT"], "json");
        let on = sample(serde_json::json!({
            "store": {"managed": true},
            "telemetry": {"otlpEndpoint": "http://jaeger:4317", "samplingRatio": 1.0, "logFormat": "text", "logLevel": "debug"},
        }));
        let settings = telemetry(&on, "tally-gateway");
        assert_eq!(settings["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger:4317");
        assert_eq!(settings["OTEL_TRACES_SAMPLER_ARG"], "1");
        assert_eq!(settings["OTEL_SERVICE_NAME"], "tally-gateway");
        assert_eq!((settings["TALLY_LOG_FORMAT"].as_str(), settings["RUST_LOG"].as_str()), ("text", "debug"));
    }
}
