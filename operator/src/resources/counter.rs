//! The counter Deployment and its headless Service (for discovery).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, SecretKeySelector, Service,
};
use kube::ResourceExt;

use super::config::{self, Settings};
use super::{deployment_for, env, http_probe, locked_down, pull_policy, redis, secrets, service_for};
use crate::crd::{BufferFullPolicy, CounterCluster, DiscoveryMode};

pub const GRPC_PORT: i32 = 9001;
pub const ADMIN_PORT: i32 = 8081;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-counter", cc.name_any())
}

/// The counter's settings (its ConfigMap), from the spec.
pub fn settings(cc: &CounterCluster) -> Settings {
    let spec = &cc.spec.counter;
    let mut settings = config::telemetry(cc, "tally-counter");
    let pairs = [
        ("TALLY_LISTEN", format!("[::]:{GRPC_PORT}")),
        ("TALLY_ADMIN_LISTEN", format!("[::]:{ADMIN_PORT}")),
        ("TALLY_STORE_CONNECT_TIMEOUT_MS", spec.store_connect_timeout_ms.to_string()),
        ("TALLY_STORE_TIMEOUT_MS", spec.store_timeout_ms.to_string()),
        ("TALLY_STORE_WAIT_REPLICAS", spec.store_wait_replicas.to_string()),
        ("TALLY_STORE_WAIT_TIMEOUT_MS", spec.store_wait_timeout_ms.to_string()),
        ("TALLY_COMMIT_MAX_OPS", spec.commit_max_ops.to_string()),
        ("TALLY_COMMIT_MAX_INFLIGHT", spec.commit_max_inflight.to_string()),
        ("TALLY_BATCH_SIZE", spec.batch_size.to_string()),
        ("TALLY_FLUSH_INTERVAL_MS", spec.flush_interval_ms.to_string()),
        ("TALLY_BUFFER_CAPACITY", spec.buffer_capacity.to_string()),
        (
            "TALLY_BUFFER_FULL_POLICY",
            match spec.buffer_full_policy {
                BufferFullPolicy::Sync => "sync",
                BufferFullPolicy::Reject => "reject",
            }
            .to_string(),
        ),
        ("TALLY_IDEMPOTENCY_RETENTION_S", spec.idempotency_retention_s.to_string()),
        ("TALLY_COMMIT_MAX_QUEUE", spec.commit_max_queue.to_string()),
        ("TALLY_BATCH_MARKER_TTL_S", spec.batch_marker_ttl_s.to_string()),
        ("TALLY_GRPC_MAX_MESSAGE_BYTES", spec.grpc_max_message_bytes.to_string()),
        ("TALLY_GRPC_MAX_CONNECTIONS", spec.grpc_max_connections.to_string()),
        ("TALLY_GRPC_HANDSHAKE_TIMEOUT_MS", spec.grpc_handshake_timeout_ms.to_string()),
        ("TALLY_GRPC_IDLE_TIMEOUT_MS", spec.grpc_idle_timeout_ms.to_string()),
        ("TALLY_HTTP2_KEEPALIVE_MS", spec.keepalive_ms.to_string()),
        ("TALLY_SHUTDOWN_TIMEOUT_MS", spec.shutdown_timeout_ms.to_string()),
    ];
    settings.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(workers) = super::threads::worker_threads(&spec.resources) {
        settings.insert("TALLY_WORKER_THREADS".into(), workers.to_string());
    }
    settings.extend(secrets::counter(cc).settings);
    if cc.spec.discovery.mode == DiscoveryMode::Consul {
        // Counters register themselves; the gateways query the same service.
        let address = cc.spec.discovery.consul_address.clone().unwrap_or_default();
        settings.insert("TALLY_CONSUL_ADDR".into(), address);
        settings.insert("TALLY_CONSUL_SERVICE".into(), consul_service(cc));
        settings.insert("TALLY_SHUTDOWN_DELAY_MS".into(), CONSUL_SHUTDOWN_DELAY_MS.to_string());
    }
    settings
}

pub fn config_map(cc: &CounterCluster) -> ConfigMap {
    config::config_map(cc, "counter", &settings(cc))
}

/// A counter leaves Consul only at SIGTERM, after the preStop sleep (the
/// EndpointSlice change that sleep waits out is not what the gateways
/// follow in consul mode), so it serves on this long, NOT_SERVING, while
/// the gateways' blocking queries and health checks take it out. Within
/// the grace period's 15 s margin.
pub const CONSUL_SHUTDOWN_DELAY_MS: u32 = 2000;

/// The Consul service the counters register as and the gateways look up:
/// one per CounterCluster, so clusters sharing a Consul never mix.
pub fn consul_service(cc: &CounterCluster) -> String {
    format!("{}-{}", cc.namespace().unwrap_or_else(|| "default".into()), name(cc))
}

/// The store URL: from the Secret, the spec, or the managed Redis (whose
/// password comes from its Secret first, expanded into the URL by
/// Kubernetes). Kept out of the ConfigMap: it may carry a password.
pub fn store_env(cc: &CounterCluster) -> Vec<EnvVar> {
    let url = match (&cc.spec.store.url_secret, &cc.spec.store.url) {
        (Some(secret), _) => EnvVar {
            name: "TALLY_STORE".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        (None, Some(url)) => env("TALLY_STORE", url),
        (None, None) => {
            let password = redis::password_env(cc, "REDIS_PASSWORD");
            let url = env("TALLY_STORE", format!("redis://:$(REDIS_PASSWORD)@{}:{}", redis::name(cc), redis::PORT));
            return vec![password, url];
        }
    };
    vec![url]
}

pub fn deployment(cc: &CounterCluster) -> Deployment {
    let spec = &cc.spec.counter;
    let mut mounted = secrets::counter(cc);
    let (volume, mount) = config::settings_volume(cc, "counter");
    mounted.volumes.push(volume);
    mounted.mounts.push(mount);
    let mut vars = store_env(cc);
    vars.push(config::settings_file_env());
    vars.extend(config::pod_identity());
    vars.extend(secrets::consul_token(cc));
    if cc.spec.discovery.mode == DiscoveryMode::Consul {
        // Registered under the pod IP (`$(POD_IP)` expands an earlier variable).
        vars.push(EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), ..Default::default() }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        vars.push(env("TALLY_CONSUL_SERVICE_ADDRESS", "$(POD_IP)"));
    }
    let container = Container {
        name: "counter".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| crate::crd::default_image("tally-counter"))),
        image_pull_policy: Some(pull_policy(cc)),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort { name: Some("grpc".into()), container_port: GRPC_PORT, ..ContainerPort::default() },
            ContainerPort { name: Some("admin".into()), container_port: ADMIN_PORT, ..ContainerPort::default() },
        ]),
        readiness_probe: Some(http_probe("/ready", ADMIN_PORT)),
        liveness_probe: Some(http_probe("/health", ADMIN_PORT)),
        resources: Some(spec.resources.clone()),
        security_context: Some(locked_down()),
        lifecycle: Some(config::pre_stop()),
        volume_mounts: mounted.mounts(),
        ..Container::default()
    };
    let annotations = config::pod_annotations(ADMIN_PORT, &settings(cc), tally_runtime::live::COUNTER);
    let grace = config::grace_period(spec.shutdown_timeout_ms);
    let pod =
        PodSpec { termination_grace_period_seconds: Some(grace), volumes: mounted.volumes(), ..PodSpec::default() };
    // With autoscaling the HPA owns `replicas`: not applying it keeps
    // server-side apply from resetting what the autoscaler chose.
    let replicas = spec.autoscaling.is_none().then_some(spec.replicas);
    deployment_for(cc, "counter", name(cc), replicas, container, Some(annotations), pod)
}

/// Headless, so DNS and EndpointSlices list every ready counter pod.
pub fn service(cc: &CounterCluster) -> Service {
    service_for(cc, "counter", name(cc), ("grpc", GRPC_PORT), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn spec_fields_land_in_the_deployment_and_its_settings() {
        let cc = sample(serde_json::json!({
            "imagePullPolicy": "Always",
            "counter": {
                "image": "registry/counter:1", "replicas": 3, "batchSize": 250, "flushIntervalMs": 50,
                "bufferFullPolicy": "reject", "storeTimeoutMs": 700, "shutdownTimeoutMs": 30000,
                "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}},
            },
            "store": {"url": "redis://redis:6379"},
        }));
        let d = deployment(&cc);
        assert_eq!(d.spec.replicas, Some(3));
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(50), "preStop sleep 5 s + drain budget 30 s + 15 s");
        let c = &pod.containers[0];
        let sleep = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|p| p.sleep.as_ref());
        assert_eq!(sleep.map(|s| s.seconds), Some(5), "endpoints are removed before the listener closes");
        assert_eq!(c.image.as_deref(), Some("registry/counter:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "1500m");
        let s = settings(&cc);
        assert_eq!(s["TALLY_WORKER_THREADS"], "2", "one worker per requested core, rounded up");
        assert_eq!(s["TALLY_BATCH_SIZE"], "250");
        assert_eq!(s["TALLY_FLUSH_INTERVAL_MS"], "50");
        assert_eq!(s["TALLY_BUFFER_FULL_POLICY"], "reject");
        assert_eq!(s["TALLY_STORE_TIMEOUT_MS"], "700");
        assert_eq!(s["TALLY_BUFFER_CAPACITY"], "100000", "default");
        assert_eq!(s["OTEL_SERVICE_NAME"], "tally-counter");
        assert!(!s.contains_key("TALLY_STORE"), "the store URL stays out of the ConfigMap");
        let env = crate::resources::env_map(c.env.clone().unwrap());
        assert_eq!(env["TALLY_STORE"].as_deref(), Some("redis://redis:6379"));
        assert!(env.contains_key("POD_NAME") && env.contains_key("POD_NAMESPACE"));
        assert_eq!(env["TALLY_SETTINGS_FILE"].as_deref(), Some(config::SETTINGS_FILE));
        let pod = d.spec.template.spec.as_ref().unwrap();
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "settings").unwrap();
        assert_eq!(volume.config_map.as_ref().unwrap().name, "demo-counter-config");
        let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "settings").unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.sub_path.as_ref()),
            (config::SETTINGS_DIR, None),
            "no subPath: updated in place"
        );
        assert_eq!(config_map(&cc).data.unwrap()[config::SETTINGS_KEY], config::render(&s));
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/ready"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("CounterCluster", Some(true)));
        assert_eq!(d.metadata.namespace.as_deref(), Some("tally"));
    }

    #[test]
    fn a_tunable_change_changes_the_pod_template_hash() {
        let hash = |cc: &CounterCluster| {
            deployment(cc).spec.template.metadata.unwrap().annotations.unwrap()[config::HASH_ANNOTATION].clone()
        };
        let before = sample(serde_json::json!({"store": {"managed": true}}));
        let live = sample(serde_json::json!({"store": {"managed": true}, "counter": {"batchSize": 7}}));
        let restart = sample(serde_json::json!({"store": {"managed": true}, "counter": {"commitMaxOps": 7}}));
        let gateway_only = sample(serde_json::json!({"store": {"managed": true}, "gateway": {"poolSize": 7}}));
        assert_eq!(hash(&before), hash(&live), "a live setting changes the ConfigMap only");
        assert_ne!(config_map(&before).data, config_map(&live).data);
        assert_ne!(hash(&before), hash(&restart), "a restart-only setting rolls the counters");
        assert_eq!(hash(&before), hash(&gateway_only), "a gateway tunable leaves counters alone");
    }

    #[test]
    fn without_an_image_the_operators_own_release_is_used_and_not_stored_in_the_spec() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let image = |d: Deployment| d.spec.template.spec.unwrap().containers[0].image.clone().unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(image(deployment(&cc)), format!("ghcr.io/tally-dev/tally-counter:{version}"));
        assert_eq!(
            image(crate::resources::gateway::deployment(&cc)),
            format!("ghcr.io/tally-dev/tally-gateway:{version}")
        );
        let spec = serde_json::to_value(&cc.spec).unwrap();
        assert!(spec["counter"].get("image").is_none(), "no image persisted into the object: {spec}");
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::crd::CounterCluster::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert!(schema["counter"]["properties"]["image"].get("default").is_none(), "no schema default");
        assert!(schema["counter"]["default"].get("image").is_none(), "{}", schema["counter"]["default"]);
    }

    #[test]
    fn store_from_secret_or_managed_redis() {
        let secret = sample(serde_json::json!({"store": {"urlSecret": {"name": "redis", "key": "url"}}}));
        let selector = store_env(&secret)[0].value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!((selector.name.as_str(), selector.key.as_str()), ("redis", "url"));
        let managed = sample(serde_json::json!({"store": {"managed": true}}));
        let vars = store_env(&managed);
        assert_eq!(vars[1].value.as_deref(), Some("redis://:$(REDIS_PASSWORD)@demo-redis:6379"));
    }

    #[test]
    fn in_consul_mode_counters_register_themselves_under_the_pod_ip() {
        let cc = sample(serde_json::json!({
            "store": {"managed": true}, "discovery": {"mode": "consul", "consulAddress": "http://consul:8500"},
        }));
        assert_eq!(settings(&cc)["TALLY_CONSUL_ADDR"], "http://consul:8500");
        assert_eq!(settings(&cc)["TALLY_CONSUL_SERVICE"], "tally-demo-counter");
        assert_eq!(settings(&cc)["TALLY_SHUTDOWN_DELAY_MS"], "2000", "deregistered, then still serving a while");
        let d = deployment(&cc);
        let env = crate::resources::env_map(d.spec.template.spec.unwrap().containers[0].env.clone().unwrap());
        assert_eq!(env["TALLY_CONSUL_SERVICE_ADDRESS"].as_deref(), Some("$(POD_IP)"));
        assert!(env.contains_key("POD_IP"));
        let kubernetes = sample(serde_json::json!({"store": {"managed": true}}));
        assert!(!settings(&kubernetes).contains_key("TALLY_CONSUL_ADDR"));
        assert!(!settings(&kubernetes).contains_key("TALLY_SHUTDOWN_DELAY_MS"), "the preStop sleep does it");
    }

    #[test]
    fn the_service_is_headless_on_the_grpc_port() {
        let s = service(&sample(serde_json::json!({"store": {"managed": true}})));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].name.as_deref(), Some("grpc"));
    }
}
