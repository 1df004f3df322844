//! The gateway Deployment, its Service and settings.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerPort, PodSpec, Service};
use kube::ResourceExt;

use super::config::{self, Settings};
use super::{counter, deployment_for, http_probe, locked_down, pull_policy, secrets, service_for};
use crate::crd::{CounterCluster, DiscoveryMode, LbPolicy};

pub const HTTP_PORT: i32 = 8080;
/// Probes, `/metrics` and the backend view: never exposed by the Service.
pub const ADMIN_PORT: i32 = 8082;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-gateway", cc.name_any())
}

/// The gateway's settings (its ConfigMap), from the spec.
pub fn settings(cc: &CounterCluster) -> Settings {
    let spec = &cc.spec.gateway;
    let mut settings = config::telemetry(cc, "tally-gateway");
    let policy = match spec.lb_policy {
        LbPolicy::RoundRobin => "round_robin",
        LbPolicy::LeastRequest | LbPolicy::LeastConn => "least_request",
        LbPolicy::Weighted => "weighted",
    };
    let pairs = [
        ("TALLY_LISTEN", format!("[::]:{HTTP_PORT}")),
        ("TALLY_ADMIN_LISTEN", format!("[::]:{ADMIN_PORT}")),
        ("TALLY_HTTP_HEADER_TIMEOUT_MS", spec.listener.header_timeout_ms.to_string()),
        ("TALLY_HTTP_BODY_TIMEOUT_MS", spec.listener.body_timeout_ms.to_string()),
        ("TALLY_HTTP_IDLE_TIMEOUT_MS", spec.listener.idle_timeout_ms.to_string()),
        ("TALLY_HTTP_MAX_CONNECTIONS", spec.listener.max_connections.to_string()),
        ("TALLY_HTTP_MAX_HEADER_BYTES", spec.listener.max_header_bytes.to_string()),
        ("TALLY_HTTP2_MAX_CONCURRENT_STREAMS", spec.listener.http2_max_concurrent_streams.to_string()),
        ("TALLY_MAX_IN_FLIGHT", spec.listener.max_in_flight.to_string()),
        ("TALLY_MAX_BODY_BYTES_IN_FLIGHT", spec.listener.max_body_bytes_in_flight.to_string()),
        ("TALLY_COALESCE_MAX_QUEUE", spec.coalesce_max_queue.to_string()),
        ("TALLY_TRACE_TRUST_CALLER", spec.trace_trust_caller.to_string()),
        ("TALLY_POOL_SIZE", spec.pool_size.to_string()),
        ("TALLY_KEEPALIVE_MS", spec.keepalive_ms.to_string()),
        ("TALLY_CONNECT_TIMEOUT_MS", spec.connect_timeout_ms.to_string()),
        ("TALLY_REQUEST_TIMEOUT_MS", spec.request_timeout_ms.to_string()),
        ("TALLY_HEALTH_INTERVAL_MS", spec.health_interval_ms.to_string()),
        ("TALLY_COALESCE", spec.coalesce.to_string()),
        ("TALLY_LB_POLICY", policy.to_string()),
        ("TALLY_RETRY_ATTEMPTS", spec.retry_attempts.to_string()),
        ("TALLY_RETRY_BUDGET_PERCENT", spec.retry_budget_percent.to_string()),
        ("TALLY_RETRY_MIN_PER_SECOND", spec.retry_min_per_second.to_string()),
        ("TALLY_BREAKER_FAILURES", spec.breaker_failures.to_string()),
        ("TALLY_BREAKER_RECOVERY_MS", spec.breaker_recovery_ms.to_string()),
        ("TALLY_BREAKER_MAX_RECOVERY_MS", spec.breaker_max_recovery_ms.to_string()),
        ("TALLY_BREAKER_HALF_OPEN_PROBES", spec.breaker_half_open_probes.to_string()),
        ("TALLY_BREAKER_MAX_EJECTION_PERCENT", spec.breaker_max_ejection_percent.to_string()),
        ("TALLY_CACHE_TTL_MS", spec.cache_ttl_ms.to_string()),
        ("TALLY_CACHE_MAX_ENTRIES", spec.cache_max_entries.to_string()),
        ("TALLY_SHUTDOWN_TIMEOUT_MS", spec.shutdown_timeout_ms.to_string()),
    ];
    settings.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
    settings.extend(secrets::gateway(cc).settings);
    if let Some(workers) = super::threads::worker_threads(&spec.resources) {
        settings.insert("TALLY_WORKER_THREADS".into(), workers.to_string());
    }
    let counters = counter::name(cc);
    let discovery = match cc.spec.discovery.mode {
        DiscoveryMode::Kubernetes => {
            vec![("TALLY_DISCOVERY", "kubernetes".to_string()), ("TALLY_K8S_SERVICE", counters)]
        }
        DiscoveryMode::Dns => {
            let namespace = cc.namespace().unwrap_or_else(|| "default".into());
            let dns_name = format!("{counters}.{namespace}.svc:{}", counter::GRPC_PORT);
            vec![("TALLY_DISCOVERY", "dns".to_string()), ("TALLY_DNS_NAME", dns_name)]
        }
        DiscoveryMode::Consul => {
            let address = cc.spec.discovery.consul_address.clone().unwrap_or_default();
            vec![
                ("TALLY_DISCOVERY", "consul".to_string()),
                ("TALLY_CONSUL_ADDR", address),
                ("TALLY_CONSUL_SERVICE", counter::consul_service(cc)),
            ]
        }
    };
    settings.extend(discovery.into_iter().map(|(k, v)| (k.to_string(), v)));
    settings
}

pub fn config_map(cc: &CounterCluster) -> ConfigMap {
    config::config_map(cc, "gateway", &settings(cc))
}

pub fn deployment(cc: &CounterCluster) -> Deployment {
    let spec = &cc.spec.gateway;
    let container = Container {
        name: "gateway".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| crate::crd::default_image("tally-gateway"))),
        image_pull_policy: Some(pull_policy(cc)),
        env: Some(
            [config::settings_file_env()]
                .into_iter()
                .chain(config::pod_identity())
                .chain(secrets::consul_token(cc))
                .collect(),
        ),
        ports: Some(vec![
            ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..ContainerPort::default() },
            ContainerPort { name: Some("admin".into()), container_port: ADMIN_PORT, ..ContainerPort::default() },
        ]),
        readiness_probe: Some(http_probe("/ready", ADMIN_PORT)),
        liveness_probe: Some(http_probe("/health", ADMIN_PORT)),
        resources: Some(spec.resources.clone()),
        security_context: Some(locked_down()),
        lifecycle: Some(config::pre_stop()),
        ..Container::default()
    };
    let mut mounted = secrets::gateway(cc);
    let (volume, mount) = config::settings_volume(cc, "gateway");
    mounted.volumes.push(volume);
    mounted.mounts.push(mount);
    let container = Container { volume_mounts: mounted.mounts(), ..container };
    let annotations = config::pod_annotations(ADMIN_PORT, &settings(cc), tally_runtime::live::GATEWAY);
    let grace = config::grace_period(spec.shutdown_timeout_ms);
    let pod = PodSpec {
        service_account_name: Some(name(cc)),
        termination_grace_period_seconds: Some(grace),
        volumes: mounted.volumes(),
        ..PodSpec::default()
    };
    // With autoscaling the HPA owns `replicas`: not applying it keeps
    // server-side apply from resetting what the autoscaler chose.
    let replicas = spec.autoscaling.is_none().then_some(spec.replicas);
    deployment_for(cc, "gateway", name(cc), replicas, container, Some(annotations), pod)
}

pub fn service(cc: &CounterCluster) -> Service {
    service_for(cc, "gateway", name(cc), ("http", HTTP_PORT), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn the_seed_plans_least_conn_is_the_least_request_policy() {
        let cc = sample(serde_json::json!({"store": {"managed": true}, "gateway": {"lbPolicy": "least_conn"}}));
        assert_eq!(settings(&cc)["TALLY_LB_POLICY"], "least_request");
    }

    #[test]
    fn tunables_and_discovery_land_in_the_settings() {
        let cc = sample(serde_json::json!({
            "gateway": {
                "poolSize": 8, "lbPolicy": "least_request", "cacheTtlMs": 0, "keepaliveMs": 5000,
                "connectTimeoutMs": 250, "requestTimeoutMs": 900, "coalesce": false, "retryAttempts": 2,
                "retryBudgetPercent": 2.5, "retryMinPerSecond": 3, "breakerFailures": 9, "breakerRecoveryMs": 200,
                "breakerMaxRecoveryMs": 4000, "breakerHalfOpenProbes": 2, "breakerMaxEjectionPercent": 30,
                "cacheMaxEntries": 77, "healthIntervalMs": 300,
            },
            "store": {"managed": true},
        }));
        let s = settings(&cc);
        let expected = [
            ("TALLY_WORKER_THREADS", "1"), // the default 250m request
            ("TALLY_POOL_SIZE", "8"),
            ("TALLY_LB_POLICY", "least_request"),
            ("TALLY_CACHE_TTL_MS", "0"),
            ("TALLY_KEEPALIVE_MS", "5000"),
            ("TALLY_CONNECT_TIMEOUT_MS", "250"),
            ("TALLY_REQUEST_TIMEOUT_MS", "900"),
            ("TALLY_COALESCE", "false"),
            ("TALLY_RETRY_ATTEMPTS", "2"),
            ("TALLY_RETRY_BUDGET_PERCENT", "2.5"),
            ("TALLY_RETRY_MIN_PER_SECOND", "3"),
            ("TALLY_BREAKER_FAILURES", "9"),
            ("TALLY_BREAKER_RECOVERY_MS", "200"),
            ("TALLY_BREAKER_MAX_RECOVERY_MS", "4000"),
            ("TALLY_BREAKER_HALF_OPEN_PROBES", "2"),
            ("TALLY_BREAKER_MAX_EJECTION_PERCENT", "30"),
            ("TALLY_CACHE_MAX_ENTRIES", "77"),
            ("TALLY_HEALTH_INTERVAL_MS", "300"),
            ("TALLY_DISCOVERY", "kubernetes"),
            ("TALLY_K8S_SERVICE", "demo-counter"),
        ];
        for (key, value) in expected {
            assert_eq!(s[key], value, "{key}");
        }
        let dns = sample(serde_json::json!({"store": {"managed": true}, "discovery": {"mode": "dns"}}));
        assert_eq!(settings(&dns)["TALLY_DNS_NAME"], "demo-counter.tally.svc:9001");
        let consul = sample(serde_json::json!({
            "store": {"managed": true}, "discovery": {"mode": "consul", "consulAddress": "http://consul:8500"},
        }));
        assert_eq!(settings(&consul)["TALLY_CONSUL_ADDR"], "http://consul:8500");
        assert_eq!(
            settings(&consul)["TALLY_CONSUL_SERVICE"],
            counter::consul_service(&consul),
            "what counters register"
        );
    }

    #[test]
    fn deployment_and_service() {
        let cc = sample(serde_json::json!({"gateway": {"replicas": 4}, "store": {"managed": true}}));
        let d = deployment(&cc);
        assert_eq!(d.spec.replicas, Some(4));
        let template = d.spec.template;
        let annotations = template.metadata.unwrap().annotations.unwrap();
        let restart_only = config::restart_only(&settings(&cc), tally_runtime::live::GATEWAY);
        assert_eq!(annotations[config::HASH_ANNOTATION], config::hash(&restart_only));
        assert_eq!(annotations["prometheus.io/port"], "8082", "metrics are on the admin port");
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("demo-gateway"));
        let c = &pod.containers[0];
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "settings").unwrap();
        assert_eq!(volume.config_map.as_ref().unwrap().name, "demo-gateway-config");
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some("/ready"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "256Mi", "default");
        assert_eq!(service(&cc).spec.unwrap().ports.unwrap()[0].port, 8080);
        assert_eq!(pod.volumes.as_ref().map(Vec::len), Some(1), "no auth: only the settings are mounted");
        assert_eq!(c.volume_mounts.as_ref().map(Vec::len), Some(1));
        assert!(!settings(&cc).contains_key("TALLY_AUTH"), "no auth: the gateway's default (none)");
    }

    #[test]
    fn api_keys_come_from_a_mounted_secret() {
        let cc = sample(serde_json::json!({
            "store": {"managed": true},
            "auth": {"keysSecret": {"name": "tally-keys", "key": "keys.yaml"}},
        }));
        let s = settings(&cc);
        assert_eq!(s["TALLY_AUTH"], "api_keys");
        assert_eq!(s["TALLY_AUTH_KEYS_FILE"], "/etc/tally/auth/keys.yaml");
        let pod = deployment(&cc).spec.template.spec.unwrap();
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("tally-keys"));
        assert_eq!(secret.items.as_ref().unwrap()[0].path, "keys.yaml");
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.name.as_str(), mount.mount_path.as_str()), (volume.name.as_str(), "/etc/tally/auth"));
        assert_eq!(mount.read_only, Some(true));
        assert!(mount.sub_path.is_none(), "a subPath mount would never see the Secret change");
    }
}
