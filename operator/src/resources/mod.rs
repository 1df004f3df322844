//! Pure builders: from a `CounterCluster` to the objects it owns. No API
//! calls here, so every field's journey from spec to object is unit-tested.

pub mod access;
pub mod counter;
pub mod gateway;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, EnvVar, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::CounterCluster;

/// Labels every owned object carries; `component` is `counter` or `gateway`.
pub fn labels(cc: &CounterCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), format!("tally-{component}")),
        ("app.kubernetes.io/instance".to_string(), cc.name_any()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "tally-operator".to_string()),
    ])
}

/// Metadata of an owned object: name, namespace, labels, controller owner reference.
pub fn owned_meta(cc: &CounterCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cc.namespace(),
        labels: Some(labels(cc, component)),
        owner_references: cc.controller_owner_ref(&()).map(|o: OwnerReference| vec![o]),
        ..ObjectMeta::default()
    }
}

pub fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), ..EnvVar::default() }
}

/// Non-root, read-only root filesystem, no capabilities.
pub fn locked_down() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
pub(crate) fn sample(spec: serde_json::Value) -> CounterCluster {
    let mut cc = CounterCluster::new("demo", serde_json::from_value(spec).expect("spec"));
    cc.metadata.namespace = Some("tally".into());
    cc.metadata.uid = Some("uid-1".into());
    cc
}
