//! The managed single-node Redis (`store.managed: true`), for trying tally
//! out: a one-replica StatefulSet with a volume claim and its Service.
//! Production should point `store.url`/`store.urlSecret` at a real Redis.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::{labels, locked_down, owned_meta, service_for};
use crate::crd::CounterCluster;

pub const PORT: i32 = 6379;

pub fn name(cc: &CounterCluster) -> String {
    format!("{}-redis", cc.name_any())
}

pub fn stateful_set(cc: &CounterCluster) -> StatefulSet {
    let selector = labels(cc, "redis");
    let container = Container {
        name: "redis".into(),
        image: Some("redis:7.4-alpine".into()),
        image_pull_policy: Some(super::pull_policy(cc)),
        args: Some(vec!["--appendonly".into(), "yes".into(), "--dir".into(), "/data".into()]),
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
        security_context: Some(SecurityContext { read_only_root_filesystem: Some(false), ..locked_down() }),
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
                metadata: Some(ObjectMeta { labels: Some(selector), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The image's `redis` user; the volume is made writable for it.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(999),
                        fs_group: Some(999),
                        ..PodSecurityContext::default()
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
        assert_eq!(store.value, Some(format!("redis://{}:{PORT}", name(&cc))));
        // Deleting the CounterCluster deletes the data volume too (owner refs
        // cover the StatefulSet; its claims need the retention policy).
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let c = &pod.containers[0];
        assert!(c.readiness_probe.as_ref().unwrap().exec.is_some());
        assert!(c.resources.as_ref().unwrap().requests.is_some());
    }
}
