//! The counter Deployment and its headless Service (for discovery).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, EnvVarSource, PodSpec, SecretKeySelector, Service};
use kube::ResourceExt;

use super::{deployment_for, env, http_probe, locked_down, service_for};
use crate::crd::CounterCluster;

pub const GRPC_PORT: i32 = 9001;
pub const ADMIN_PORT: i32 = 8081;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-counter", cc.name_any())
}

/// The `TALLY_*` settings of the counter, from the spec.
pub fn env_vars(cc: &CounterCluster) -> Vec<EnvVar> {
    let spec = &cc.spec.counter;
    let store = match (&cc.spec.store.url_secret, &cc.spec.store.url, cc.spec.store.managed) {
        (Some(secret), _, _) => EnvVar {
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
        (None, Some(url), _) => env("TALLY_STORE", url),
        (None, None, true) => env("TALLY_STORE", format!("redis://{}-redis:6379", cc.name_any())),
        (None, None, false) => env("TALLY_STORE", "memory"),
    };
    vec![
        env("TALLY_LISTEN", format!("0.0.0.0:{GRPC_PORT}")),
        env("TALLY_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        store,
        env("TALLY_BATCH_SIZE", spec.batch_size),
        env("TALLY_FLUSH_INTERVAL_MS", spec.flush_interval_ms),
        env("TALLY_BUFFER_CAPACITY", spec.buffer_capacity),
        env("TALLY_IDEMPOTENCY_RETENTION_S", spec.idempotency_retention_s),
        env("TALLY_LOG_FORMAT", "json"),
    ]
}

pub fn deployment(cc: &CounterCluster) -> Deployment {
    let container = Container {
        name: "counter".into(),
        image: Some(cc.spec.counter.image.clone()),
        env: Some(env_vars(cc)),
        ports: Some(vec![
            ContainerPort { name: Some("grpc".into()), container_port: GRPC_PORT, ..ContainerPort::default() },
            ContainerPort { name: Some("admin".into()), container_port: ADMIN_PORT, ..ContainerPort::default() },
        ]),
        readiness_probe: Some(http_probe("/ready", ADMIN_PORT)),
        liveness_probe: Some(http_probe("/health", ADMIN_PORT)),
        security_context: Some(locked_down()),
        ..Container::default()
    };
    let annotations = [
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), ADMIN_PORT.to_string()),
    ];
    // Longer than the counter's 25 s drain budget.
    let pod = PodSpec { termination_grace_period_seconds: Some(40), ..PodSpec::default() };
    deployment_for(cc, "counter", name(cc), cc.spec.counter.replicas, container, Some(annotations.into()), pod)
}

/// Headless, so DNS and EndpointSlices list every ready counter pod.
pub fn service(cc: &CounterCluster) -> Service {
    service_for(cc, "counter", name(cc), ("grpc", GRPC_PORT), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    fn env_of(cc: &CounterCluster) -> std::collections::BTreeMap<String, Option<String>> {
        crate::resources::env_map(env_vars(cc))
    }

    #[test]
    fn spec_fields_land_in_the_deployment() {
        let cc = sample(serde_json::json!({
            "counter": {"image": "registry/counter:1", "replicas": 3, "batchSize": 250, "flushIntervalMs": 50},
            "store": {"url": "redis://redis:6379"},
        }));
        let d = deployment(&cc);
        let spec = &d.spec;
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry/counter:1"));
        let env = env_of(&cc);
        assert_eq!(env["TALLY_BATCH_SIZE"].as_deref(), Some("250"));
        assert_eq!(env["TALLY_FLUSH_INTERVAL_MS"].as_deref(), Some("50"));
        assert_eq!(env["TALLY_BUFFER_CAPACITY"].as_deref(), Some("100000"), "default");
        assert_eq!(env["TALLY_STORE"].as_deref(), Some("redis://redis:6379"));
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/ready"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("CounterCluster", Some(true)));
        assert_eq!(d.metadata.namespace.as_deref(), Some("tally"));
    }

    #[test]
    fn store_from_secret_or_managed_redis() {
        let secret = sample(serde_json::json!({"store": {"urlSecret": {"name": "redis", "key": "url"}}}));
        let store = env_vars(&secret).into_iter().find(|e| e.name == "TALLY_STORE").unwrap();
        let selector = store.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((selector.name.as_str(), selector.key.as_str()), ("redis", "url"));
        let managed = sample(serde_json::json!({"store": {"managed": true}}));
        assert_eq!(env_of(&managed)["TALLY_STORE"].as_deref(), Some("redis://demo-redis:6379"));
    }

    #[test]
    fn the_service_is_headless_on_the_grpc_port() {
        let s = service(&sample(serde_json::json!({"store": {"managed": true}})));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].name.as_deref(), Some("grpc"));
    }
}
