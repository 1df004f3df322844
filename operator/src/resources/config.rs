//! Settings as ConfigMaps: each component's `TALLY_*`/`OTEL_*` settings
//! live in one ConfigMap as a settings file (`settings.env`, `KEY=value`
//! lines), mounted whole (no `subPath`) at [`SETTINGS_FILE`], so the kubelet
//! updates it in place and the services re-read it
//! ([`tally_runtime::live`]). The pod template carries a hash of the
//! settings that only a restart applies: changing one of those rolls
//! exactly the Deployment whose settings changed, while a live setting
//! (pool size, batch size, breaker thresholds, …) changes the ConfigMap
//! alone and the running pods take it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EnvVar, EnvVarSource, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    SleepAction, Volume, VolumeMount,
};
use kube::ResourceExt;

use super::owned_meta;
use crate::crd::{CounterCluster, LogFormat};

/// The pod-template annotation holding the restart-only settings' hash.
pub const HASH_ANNOTATION: &str = "tally.dev/config-hash";

/// The ConfigMap key holding the settings file.
pub const SETTINGS_KEY: &str = "settings.env";
/// Where the pods find it (`TALLY_SETTINGS_FILE`).
pub const SETTINGS_DIR: &str = "/etc/tally/settings";
pub const SETTINGS_FILE: &str = "/etc/tally/settings/settings.env";
const SETTINGS_VOLUME: &str = "settings";

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

/// The settings file: one `KEY=value` line per setting, sorted. Values
/// holding a line break are refused by validation before this runs
/// ([`crate::validate`]): one could smuggle in a line of its own.
pub fn render(settings: &Settings) -> String {
    settings.iter().map(|(key, value)| format!("{key}={value}\n")).collect()
}

/// The SHA-256 the pods report for the settings file in force once they
/// run `settings` (`in_force` of `/api/v1/system/settings`).
pub fn digest(settings: &Settings) -> String {
    tally_runtime::settings_file::digest(render(settings).as_bytes())
}

pub fn config_map(cc: &CounterCluster, component: &str, settings: &Settings) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(cc, name(cc, component), component),
        data: Some(BTreeMap::from([(SETTINGS_KEY.to_string(), render(settings))])),
        ..ConfigMap::default()
    }
}

/// The component's ConfigMap as a read-only volume, and its mount.
pub fn settings_volume(cc: &CounterCluster, component: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: SETTINGS_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name(cc, component),
            optional: Some(false),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: SETTINGS_VOLUME.into(),
        mount_path: SETTINGS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// `TALLY_SETTINGS_FILE`, pointing at the mounted settings file.
pub fn settings_file_env() -> EnvVar {
    EnvVar { name: "TALLY_SETTINGS_FILE".into(), value: Some(SETTINGS_FILE.into()), ..EnvVar::default() }
}

/// The settings a running pod cannot take: every one not in `live`.
pub fn restart_only(settings: &Settings, live: &[&str]) -> Settings {
    settings.iter().filter(|(key, _)| !live.contains(&key.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
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
/// and the hash of the settings not in `live`, whose change rolls the
/// Deployment.
pub fn pod_annotations(metrics_port: i32, settings: &Settings, live: &[&str]) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), metrics_port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (HASH_ANNOTATION.to_string(), hash(&restart_only(settings, live))),
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
    fn the_file_is_one_sorted_line_per_setting_and_its_digest_is_what_pods_report() {
        let settings = Settings::from([
            ("TALLY_POOL_SIZE".to_string(), "20".to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        assert_eq!(render(&settings), "RUST_LOG=info\nTALLY_POOL_SIZE=20\n");
        let parsed = tally_runtime::settings_file::parse_entries(render(&settings).as_bytes()).expect("parses");
        assert_eq!(parsed, settings, "the services read back exactly what was written");
        assert_eq!(digest(&settings), tally_runtime::settings_file::digest(b"RUST_LOG=info\nTALLY_POOL_SIZE=20\n"));
    }

    #[test]
    fn only_restart_only_settings_count_in_the_hash() {
        let live = tally_runtime::live::GATEWAY;
        let a = Settings::from([
            ("TALLY_POOL_SIZE".to_string(), "20".to_string()),
            ("TALLY_LISTEN".to_string(), "[::]:8080".to_string()),
        ]);
        let mut pool = a.clone();
        pool.insert("TALLY_POOL_SIZE".into(), "40".into());
        let mut listen = a.clone();
        listen.insert("TALLY_LISTEN".into(), "[::]:9090".into());
        let annotation = |s: &Settings| pod_annotations(8082, s, live)[HASH_ANNOTATION].clone();
        assert_eq!(annotation(&a), annotation(&pool), "a live setting does not roll the pods");
        assert_ne!(annotation(&a), annotation(&listen), "a restart-only one does");
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
