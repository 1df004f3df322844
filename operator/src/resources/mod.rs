//! Pure builders: from a `CounterCluster` to the objects it owns. No API
//! calls here, so every field's journey from spec to object is unit-tested.

pub mod access;
pub mod autoscaling;
pub mod config;
pub mod counter;
pub mod desired;
pub mod gateway;
pub mod monitoring;
pub mod redis;
#[cfg(test)]
pub mod restricted;
pub mod secrets;
pub mod threads;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{CounterCluster, PullPolicy};

/// What selects a component's pods: the least that tells them apart (the
/// CounterCluster and the component), separate from the labels, so a label
/// added later never changes a selector (which Kubernetes does not allow
/// on a Deployment or StatefulSet).
pub fn selector_labels(cc: &CounterCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), cc.name_any()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
    ])
}

/// Labels every owned object carries; `component` is `counter` or `gateway`.
pub fn labels(cc: &CounterCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), format!("tally-{component}")),
        ("app.kubernetes.io/instance".to_string(), cc.name_any()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "tally-operator".to_string()),
    ])
}

/// Metadata of an owned object: name, namespace, labels, controller owner
/// reference. `blockOwnerDeletion` makes foreground deletion of the
/// CounterCluster wait for its objects (needs `update` on
/// `counterclusters/finalizers`, which the chart's ClusterRole grants).
pub fn owned_meta(cc: &CounterCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cc.namespace(),
        labels: Some(labels(cc, component)),
        owner_references: cc
            .controller_owner_ref(&())
            .map(|o: OwnerReference| vec![OwnerReference { block_owner_deletion: Some(true), ..o }]),
        ..ObjectMeta::default()
    }
}

/// The spec's image pull policy, as Kubernetes spells it.
pub fn pull_policy(cc: &CounterCluster) -> String {
    match cc.spec.image_pull_policy {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
    .to_string()
}

pub fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), ..EnvVar::default() }
}

/// Non-root, read-only root filesystem, no capabilities, the runtime's
/// default seccomp profile: what Pod Security "restricted" requires of a
/// container, and a read-only root on top.
pub fn locked_down() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// The pod-level half of Pod Security "restricted" (each container's
/// [`locked_down`] repeats it, so either level alone passes).
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }
}

/// An HTTP GET probe on `path` and `port`, every 5 s.
pub fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// A Service selecting `component`'s pods on one named port; `headless` for discovery.
pub fn service_for(cc: &CounterCluster, component: &str, name: String, port: (&str, i32), headless: bool) -> Service {
    Service {
        metadata: owned_meta(cc, name, component),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".into()),
            selector: Some(selector_labels(cc, component)),
            ports: Some(vec![ServicePort {
                name: Some(port.0.into()),
                port: port.1,
                target_port: Some(IntOrString::String(port.0.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A Deployment of `replicas` pods of `component` running `container`
/// (`None`: left to its autoscaler, not applied at all);
/// `pod` carries the pod-level settings (the containers are filled in here).
pub fn deployment_for(
    cc: &CounterCluster,
    component: &str,
    name: String,
    replicas: Option<i32>,
    container: Container,
    annotations: Option<BTreeMap<String, String>>,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata: owned_meta(cc, name, component),
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector { match_labels: Some(selector_labels(cc, component)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc, component)),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod.security_context.clone().unwrap_or_else(restricted_pod)),
                    ..pod
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

#[cfg(test)]
pub(crate) fn env_map(vars: Vec<EnvVar>) -> BTreeMap<String, Option<String>> {
    vars.into_iter().map(|e| (e.name, e.value)).collect()
}

#[cfg(test)]
pub(crate) fn sample(spec: serde_json::Value) -> CounterCluster {
    let mut cc = CounterCluster::new("demo", serde_json::from_value(spec).expect("spec"));
    cc.metadata.namespace = Some("tally".into());
    cc.metadata.uid = Some("uid-1".into());
    cc
}
