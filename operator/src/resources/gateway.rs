//! The gateway Deployment and its Service.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, PodSpec, Service};
use kube::ResourceExt;

use super::{counter, deployment_for, env, http_probe, locked_down, service_for};
use crate::crd::{CounterCluster, DiscoveryMode, LbPolicy};

pub const HTTP_PORT: i32 = 8080;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-gateway", cc.name_any())
}

/// The `TALLY_*` settings of the gateway, from the spec.
pub fn env_vars(cc: &CounterCluster) -> Vec<EnvVar> {
    let spec = &cc.spec.gateway;
    let mut vars = vec![
        env("TALLY_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
        env("TALLY_POOL_SIZE", spec.pool_size),
        env("TALLY_CACHE_TTL_MS", spec.cache_ttl_ms),
        env("TALLY_CACHE_MAX_ENTRIES", spec.cache_max_entries),
        env(
            "TALLY_LB_POLICY",
            match spec.lb_policy {
                LbPolicy::RoundRobin => "round_robin",
                LbPolicy::LeastRequest => "least_request",
                LbPolicy::Weighted => "weighted",
            },
        ),
        env("TALLY_RETRY_ATTEMPTS", spec.retry_attempts),
        env("TALLY_BREAKER_FAILURES", spec.breaker_failures),
        env("TALLY_LOG_FORMAT", "json"),
    ];
    let counters = counter::name(cc);
    match cc.spec.discovery.mode {
        DiscoveryMode::Kubernetes => {
            vars.push(env("TALLY_DISCOVERY", "kubernetes"));
            vars.push(env("TALLY_K8S_SERVICE", &counters));
        }
        DiscoveryMode::Dns => {
            vars.push(env("TALLY_DISCOVERY", "dns"));
            let namespace = cc.namespace().unwrap_or_else(|| "default".into());
            vars.push(env("TALLY_DNS_NAME", format!("{counters}.{namespace}.svc:{}", counter::GRPC_PORT)));
        }
        DiscoveryMode::Consul => {
            vars.push(env("TALLY_DISCOVERY", "consul"));
            if let Some(address) = &cc.spec.discovery.consul_address {
                vars.push(env("TALLY_CONSUL_ADDR", address));
            }
        }
    }
    vars
}

pub fn deployment(cc: &CounterCluster) -> Deployment {
    let container = Container {
        name: "gateway".into(),
        image: Some(cc.spec.gateway.image.clone()),
        env: Some(env_vars(cc)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/api/v1/ready", HTTP_PORT)),
        liveness_probe: Some(http_probe("/api/v1/health", HTTP_PORT)),
        security_context: Some(locked_down()),
        ..Container::default()
    };
    let pod = PodSpec { service_account_name: Some(name(cc)), ..PodSpec::default() };
    deployment_for(cc, "gateway", name(cc), cc.spec.gateway.replicas, container, None, pod)
}

pub fn service(cc: &CounterCluster) -> Service {
    service_for(cc, "gateway", name(cc), ("http", HTTP_PORT), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    fn env_of(cc: &CounterCluster) -> std::collections::BTreeMap<String, Option<String>> {
        crate::resources::env_map(env_vars(cc))
    }

    #[test]
    fn tunables_and_discovery_land_in_the_environment() {
        let cc = sample(serde_json::json!({
            "gateway": {"poolSize": 8, "lbPolicy": "least_request", "cacheTtlMs": 0},
            "store": {"managed": true},
        }));
        let env = env_of(&cc);
        assert_eq!(env["TALLY_POOL_SIZE"].as_deref(), Some("8"));
        assert_eq!(env["TALLY_LB_POLICY"].as_deref(), Some("least_request"));
        assert_eq!(env["TALLY_CACHE_TTL_MS"].as_deref(), Some("0"));
        assert_eq!(env["TALLY_DISCOVERY"].as_deref(), Some("kubernetes"));
        assert_eq!(env["TALLY_K8S_SERVICE"].as_deref(), Some("demo-counter"));

        let dns = sample(serde_json::json!({"store": {"managed": true}, "discovery": {"mode": "dns"}}));
        assert_eq!(env_of(&dns)["TALLY_DNS_NAME"].as_deref(), Some("demo-counter.tally.svc:9001"));
    }

    #[test]
    fn deployment_and_service() {
        let cc = sample(serde_json::json!({"gateway": {"replicas": 4}, "store": {"managed": true}}));
        let d = deployment(&cc);
        assert_eq!(d.spec.replicas, Some(4));
        let pod = d.spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("demo-gateway"));
        let probe = pod.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some("/api/v1/ready"));
        assert_eq!(service(&cc).spec.unwrap().ports.unwrap()[0].port, 8080);
    }
}
