//! The managed single-node Redis (`store.managed: true`), for trying tally
//! out: a one-replica StatefulSet with a volume claim and its Service,
//! protected by a generated password (a Secret the CounterCluster owns,
//! created once and never overwritten) and a NetworkPolicy that admits
//! only the counters. Production should point `store.url`/`store.urlSecret`
//! at a real Redis.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{labels, locked_down, owned_meta, service_for};
use crate::crd::CounterCluster;

pub const PORT: i32 = 6379;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-redis", cc.name_any())
}

/// The Secret holding the managed Redis's password (key [`PASSWORD_KEY`]).
pub fn password_secret_name(cc: &CounterCluster) -> String {
    format!("{}-redis-auth", cc.name_any())
}

pub const PASSWORD_KEY: &str = "password";

/// The password Secret with `password` (made by the caller: 32 random
/// bytes, hex). Created once; the operator never applies it again, so a
/// password changed by hand stays.
pub fn password_secret(cc: &CounterCluster, password: String) -> Secret {
    Secret {
        metadata: owned_meta(cc, password_secret_name(cc), "redis"),
        type_: Some("Opaque".into()),
        string_data: Some([(PASSWORD_KEY.to_string(), password)].into()),
        ..Secret::default()
    }
}

/// `name` from the password Secret, as an environment variable. Kubernetes
/// expands `$(name)` in later variables and in arguments, so the password
/// itself appears in no object the operator writes.
pub fn password_env(cc: &CounterCluster, name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: password_secret_name(cc),
                key: PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Only the counters reach Redis.
pub fn network_policy(cc: &CounterCluster) -> NetworkPolicy {
    let counters = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(super::selector_labels(cc, "counter")),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: owned_meta(cc, name(cc), "redis"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(super::selector_labels(cc, "redis")),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![counters]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(PORT)),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

pub fn stateful_set(cc: &CounterCluster) -> StatefulSet {
    let selector = super::selector_labels(cc, "redis");
    let container = Container {
        name: "redis".into(),
        image: Some("redis:7.4-alpine".into()),
        // A pinned public tag: pulled once, whatever the services' policy
        // (`imagePullPolicy: Never` for locally loaded tally images must not
        // stop Redis from starting).
        image_pull_policy: Some("IfNotPresent".into()),
        // redis-cli reads REDISCLI_AUTH, so the probe authenticates too.
        env: Some(vec![password_env(cc, "REDIS_PASSWORD"), password_env(cc, "REDISCLI_AUTH")]),
        args: Some(
            ["--appendonly", "yes", "--dir", "/data", "--requirepass", "$(REDIS_PASSWORD)"].map(String::from).to_vec(),
        ),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction { command: Some(vec!["redis-cli".into(), "ping".into()]) }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(
                [("cpu".to_string(), Quantity("100m".into())), ("memory".to_string(), Quantity("128Mi".into()))].into(),
            ),
            limits: Some([("memory".to_string(), Quantity("512Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        // Redis writes only to /data (the volume): the root filesystem stays read-only.
        security_context: Some(locked_down()),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: PORT,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: owned_meta(cc, name(cc), "redis"),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name(cc)),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(cc, "redis")), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The image's `redis` user; the volume is made writable for it.
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(999),
                        fs_group: Some(999),
                        ..super::restricted_pod()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            }),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

pub fn service(cc: &CounterCluster) -> k8s_openapi::api::core::v1::Service {
    service_for(cc, "redis", name(cc), ("redis", PORT), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn one_persistent_redis_behind_the_service_the_counters_use() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let set = stateful_set(&cc);
        let spec = set.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.volume_claim_templates.unwrap().len(), 1);
        // The counters' TALLY_STORE for a managed store names this Service.
        assert_eq!(service(&cc).metadata.name.as_deref(), Some("demo-redis"));
        let store = crate::resources::counter::store_env(&cc);
        assert_eq!(store[0].name, "REDIS_PASSWORD", "defined before TALLY_STORE, which expands it");
        assert_eq!(store[1].value, Some(format!("redis://:$(REDIS_PASSWORD)@{}:{PORT}", name(&cc))));
        // Deleting the CounterCluster deletes the data volume too (owner refs
        // cover the StatefulSet; its claims need the retention policy).
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let c = &pod.containers[0];
        assert!(c.readiness_probe.as_ref().unwrap().exec.is_some());
        assert!(c.resources.as_ref().unwrap().requests.is_some());
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    }

    #[test]
    fn the_managed_redis_needs_the_generated_password_and_admits_only_the_counters() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let secret = password_secret(&cc, "0123abcd".into());
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-redis-auth"));
        assert!(secret.metadata.owner_references.is_some(), "deleted with the CounterCluster");
        let pod = stateful_set(&cc).spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--requirepass", "$(REDIS_PASSWORD)"]), "{args:?}");
        let from_secret = |var: &str| {
            let env = c.env.as_ref().unwrap().iter().find(|e| e.name == var).expect(var);
            env.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).map(|r| r.name.clone())
        };
        assert_eq!(from_secret("REDIS_PASSWORD").as_deref(), Some("demo-redis-auth"));
        assert_eq!(from_secret("REDISCLI_AUTH").as_deref(), Some("demo-redis-auth"), "the probe authenticates");
        let text = serde_json::to_string(&stateful_set(&cc)).unwrap();
        assert!(!text.contains("0123abcd"), "the password is in no object but its Secret");

        let policy = network_policy(&cc).spec.unwrap();
        assert_eq!(policy.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"], "redis");
        let rule = &policy.ingress.unwrap()[0];
        let from = rule.from.as_ref().unwrap()[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(from["app.kubernetes.io/component"], "counter");
        assert_eq!(rule.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(PORT)));
    }
}
