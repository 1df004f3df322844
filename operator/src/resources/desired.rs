//! The whole desired set for a CounterCluster, in apply order: what the
//! reconciler applies (and prunes against) and what `tally-operator render`
//! prints. Pure, so the set is unit-tested without an API server.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::DynamicObject;
use serde::Serialize;

use super::{access, autoscaling, counter, gateway, monitoring, redis};
use crate::crd::{CounterCluster, DiscoveryMode};

/// One object the operator owns.
#[derive(Debug, Clone)]
pub enum Owned {
    /// The managed Redis's password: created once with a generated value,
    /// never applied again (so it is listed without its value).
    PasswordSecret(Secret),
    Service(Service),
    StatefulSet(StatefulSet),
    NetworkPolicy(NetworkPolicy),
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    /// A prometheus-operator PodMonitor (another project's CRD).
    PodMonitor(DynamicObject),
}

impl Owned {
    /// `Kind/name`, as kubectl shows it.
    pub fn key(&self) -> (&'static str, String) {
        let (kind, meta) = match self {
            Owned::PasswordSecret(o) => ("Secret", &o.metadata),
            Owned::Service(o) => ("Service", &o.metadata),
            Owned::StatefulSet(o) => ("StatefulSet", &o.metadata),
            Owned::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            Owned::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Owned::Deployment(o) => ("Deployment", &o.metadata),
            Owned::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Owned::Role(o) => ("Role", &o.metadata),
            Owned::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Owned::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata),
            Owned::HorizontalPodAutoscaler(o) => ("HorizontalPodAutoscaler", &o.metadata),
            Owned::PodMonitor(o) => ("PodMonitor", &o.metadata),
        };
        (kind, meta.name.clone().unwrap_or_default())
    }

    /// The object as JSON, with its `apiVersion` and `kind`.
    pub fn to_json(&self) -> serde_json::Value {
        fn json<K: k8s_openapi::Resource + Serialize>(object: &K) -> serde_json::Value {
            let mut value = serde_json::to_value(object).unwrap_or_default();
            value["apiVersion"] = K::API_VERSION.into();
            value["kind"] = K::KIND.into();
            value
        }
        match self {
            Owned::PasswordSecret(o) => json(o),
            Owned::Service(o) => json(o),
            Owned::StatefulSet(o) => json(o),
            Owned::NetworkPolicy(o) => json(o),
            Owned::ConfigMap(o) => json(o),
            Owned::Deployment(o) => json(o),
            Owned::ServiceAccount(o) => json(o),
            Owned::Role(o) => json(o),
            Owned::RoleBinding(o) => json(o),
            Owned::PodDisruptionBudget(o) => json(o),
            Owned::HorizontalPodAutoscaler(o) => json(o),
            Owned::PodMonitor(o) => serde_json::to_value(o).unwrap_or_default(),
        }
    }
}

/// Every object `cc` should have, in the order they are applied: the store
/// first, then what reads it, the counters before the gateways that call
/// them.
pub fn desired(cc: &CounterCluster) -> Vec<Owned> {
    let mut set = Vec::new();
    if cc.spec.store.managed {
        // The value is generated when it is created (see the reconciler).
        set.push(Owned::PasswordSecret(redis::password_secret(cc, String::new())));
        set.push(Owned::Service(redis::service(cc)));
        set.push(Owned::StatefulSet(redis::stateful_set(cc)));
        set.push(Owned::NetworkPolicy(redis::network_policy(cc)));
    }
    set.extend([
        Owned::ConfigMap(counter::config_map(cc)),
        Owned::Service(counter::service(cc)),
        Owned::Deployment(counter::deployment(cc)),
        Owned::ServiceAccount(access::gateway_service_account(cc)),
    ]);
    // The gateways read EndpointSlices only in kubernetes discovery; in the
    // other modes they get no rights (and switching away prunes them).
    if cc.spec.discovery.mode == DiscoveryMode::Kubernetes {
        set.push(Owned::Role(access::gateway_role(cc)));
        set.push(Owned::RoleBinding(access::gateway_role_binding(cc)));
    }
    set.extend([
        Owned::ConfigMap(gateway::config_map(cc)),
        Owned::Service(gateway::service(cc)),
        Owned::Deployment(gateway::deployment(cc)),
        Owned::PodDisruptionBudget(access::pod_disruption_budget(cc, "counter")),
        Owned::PodDisruptionBudget(access::pod_disruption_budget(cc, "gateway")),
        Owned::NetworkPolicy(access::counter_network_policy(cc)),
        Owned::NetworkPolicy(access::gateway_network_policy(cc)),
    ]);
    let scaled = [
        autoscaling::hpa(cc, "counter", counter::name(cc), cc.spec.counter.autoscaling.as_ref()),
        autoscaling::hpa(cc, "gateway", gateway::name(cc), cc.spec.gateway.autoscaling.as_ref()),
    ];
    set.extend(scaled.into_iter().flatten().map(Owned::HorizontalPodAutoscaler));
    set.extend(monitoring::pod_monitor(cc).map(Owned::PodMonitor));
    set
}

/// The desired set as a YAML stream (`---` between objects), as
/// `tally-operator render` prints it.
pub fn to_yaml(set: &[Owned]) -> String {
    let mut out = String::new();
    for owned in set {
        if let Owned::PasswordSecret(_) = owned {
            out.push_str("# Created once with a generated password (never applied again).\n");
        }
        out.push_str("---\n");
        emit(&owned.to_json(), 0, &mut out);
    }
    out
}

/// A mapping key, plain when no YAML reader could take it for anything
/// but a string (`app.kubernetes.io/name`), else double-quoted.
fn yaml_key(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~"
        )
        && key.parse::<f64>().is_err();
    if plain { key.to_string() } else { serde_json::Value::String(key.to_string()).to_string() }
}

/// Block-style YAML with every string value double-quoted (as JSON writes it):
/// YAML 1.1 readers — kubectl's among them — would otherwise take an
/// argument such as `yes` or `on` for a boolean.
fn emit(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    let scalar = |v: &Value| match v {
        Value::Object(m) if m.is_empty() => Some("{}".to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".to_string()),
        Value::Object(_) | Value::Array(_) => None,
        other => Some(other.to_string()),
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                out.push_str(&format!("{pad}{}:", yaml_key(key)));
                match scalar(v) {
                    Some(text) => out.push_str(&format!(" {text}\n")),
                    None => {
                        out.push('\n');
                        emit(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(text) => out.push_str(&format!("{pad}- {text}\n")),
                    None => {
                        // The item's block, its first line's indent replaced by the dash.
                        let mut block = String::new();
                        emit(item, indent + 2, &mut block);
                        out.push_str(&format!("{pad}- {}", &block[indent + 2..]));
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    fn keys(cc: &CounterCluster) -> Vec<String> {
        desired(cc).iter().map(|o| format!("{}/{}", o.key().0, o.key().1)).collect()
    }

    #[test]
    fn the_set_follows_the_store_choice() {
        let managed = keys(&sample(serde_json::json!({"store": {"managed": true}})));
        for key in
            ["Secret/demo-redis-auth", "StatefulSet/demo-redis", "Service/demo-redis", "NetworkPolicy/demo-redis"]
        {
            assert!(managed.contains(&key.to_string()), "{key} in {managed:?}");
        }
        let own = keys(&sample(serde_json::json!({"store": {"url": "redis://r:6379"}})));
        assert!(own.iter().all(|k| !k.contains("redis")), "nothing of a managed Redis: {own:?}");
        assert_eq!(managed.len(), own.len() + 4);
        assert!(
            own.contains(&"Role/demo-gateway".to_string()),
            "kubernetes discovery: the gateways may read EndpointSlices"
        );
        let dns = keys(&sample(serde_json::json!({"store": {"url": "redis://r:6379"}, "discovery": {"mode": "dns"}})));
        assert!(
            !dns.iter().any(|k| k.starts_with("Role/") || k.starts_with("RoleBinding/")),
            "no rights without need: {dns:?}"
        );
        let unique: std::collections::BTreeSet<_> = managed.iter().collect();
        assert_eq!(unique.len(), managed.len(), "no object twice");
    }

    #[test]
    fn the_yaml_stream_carries_every_object_with_its_kind_and_no_password() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let set = desired(&cc);
        let yaml = to_yaml(&set);
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .filter(|d| d.contains("kind:"))
            .map(|d| serde_yaml_ng::from_str(d).expect("each document parses"))
            .collect();
        assert_eq!(docs.len(), set.len());
        for (doc, owned) in docs.iter().zip(&set) {
            assert_eq!(doc["kind"], owned.key().0);
            assert!(doc["apiVersion"].as_str().is_some_and(|v| !v.is_empty()));
        }
        assert_eq!(docs[0]["stringData"]["password"], "", "the password is generated on creation, not rendered");
        for (doc, owned) in docs.iter().zip(&set) {
            assert_eq!(doc, &owned.to_json(), "the YAML says exactly what is applied");
        }
        assert!(yaml.contains("- \"yes\""), "strings are quoted, so YAML 1.1 readers do not see booleans");
    }
}
