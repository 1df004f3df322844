//! Who may talk to whom: the gateway's ServiceAccount and the RBAC its
//! EndpointSlice discovery needs, PodDisruptionBudgets, and NetworkPolicies
//! that let only gateway pods (and Prometheus) reach the counters, and only
//! Prometheus the gateways' admin port.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{counter, gateway, owned_meta, selector_labels};
use crate::crd::{CounterCluster, DiscoveryMode};

pub fn gateway_service_account(cc: &CounterCluster) -> ServiceAccount {
    ServiceAccount { metadata: owned_meta(cc, gateway::name(cc), "gateway"), ..ServiceAccount::default() }
}

/// Least privilege for `TALLY_DISCOVERY=kubernetes`: read EndpointSlices.
pub fn gateway_role(cc: &CounterCluster) -> Role {
    Role {
        metadata: owned_meta(cc, gateway::name(cc), "gateway"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

pub fn gateway_role_binding(cc: &CounterCluster) -> RoleBinding {
    RoleBinding {
        metadata: owned_meta(cc, gateway::name(cc), "gateway"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: gateway::name(cc),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: gateway::name(cc),
            namespace: cc.namespace(),
            ..Subject::default()
        }]),
    }
}

/// At most one pod of a component down at a time during voluntary disruptions.
pub fn pod_disruption_budget(cc: &CounterCluster, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cc, format!("{}-{component}", cc.name_any()), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cc, component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Counters accept gRPC only from this cluster's gateways (and, in consul
/// mode, from anywhere: the Consul agents' gRPC health checks come from
/// outside), and admin-port scrapes from pods labelled
/// `app.kubernetes.io/name: prometheus` in any namespace.
pub fn counter_network_policy(cc: &CounterCluster) -> NetworkPolicy {
    let gateways =
        NetworkPolicyPeer { pod_selector: selector(selector_labels(cc, "gateway")), ..NetworkPolicyPeer::default() };
    // No `from` = any source.
    let grpc_from = (cc.spec.discovery.mode != DiscoveryMode::Consul).then(|| vec![gateways]);
    ingress_policy(cc, "counter", counter::name(cc), (counter::GRPC_PORT, grpc_from), counter::ADMIN_PORT)
}

/// Gateways accept the public API from anywhere, and admin-port requests
/// (scrapes; also `/api/v1/system/backends`, which lists the counter pods'
/// addresses, and the settings in force) only from Prometheus, as the
/// counters do.
pub fn gateway_network_policy(cc: &CounterCluster) -> NetworkPolicy {
    ingress_policy(cc, "gateway", gateway::name(cc), (gateway::HTTP_PORT, None), gateway::ADMIN_PORT)
}

/// An ingress-only policy on `component`'s pods: its service port from
/// `from` (`None`: any source), its admin port from Prometheus; anything
/// else refused.
fn ingress_policy(
    cc: &CounterCluster,
    component: &str,
    name: String,
    (service_port, from): (i32, Option<Vec<NetworkPolicyPeer>>),
    admin_port: i32,
) -> NetworkPolicy {
    let ingress = vec![
        NetworkPolicyIngressRule { from, ports: Some(vec![port(service_port)]) },
        NetworkPolicyIngressRule { from: Some(vec![prometheus()]), ports: Some(vec![port(admin_port)]) },
    ];
    NetworkPolicy {
        metadata: owned_meta(cc, name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(selector_labels(cc, component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Pods labelled `app.kubernetes.io/name: prometheus`, in any namespace
/// (Prometheus usually runs in its own).
fn prometheus() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: selector([("app.kubernetes.io/name".to_string(), "prometheus".to_string())].into()),
        namespace_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }
}

fn port(number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(number)), ..NetworkPolicyPort::default() }
}

fn selector(labels: std::collections::BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn rbac_allows_reading_endpointslices_only() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let rule = &gateway_role(&cc).rules.unwrap()[0];
        assert_eq!(rule.resources.as_deref(), Some(&["endpointslices".to_string()][..]));
        assert_eq!(rule.verbs, vec!["get", "list", "watch"]);
        let binding = gateway_role_binding(&cc);
        assert_eq!(binding.subjects.unwrap()[0].name, "demo-gateway");
        assert_eq!(gateway_service_account(&cc).metadata.name.as_deref(), Some("demo-gateway"));
    }

    #[test]
    fn pdb_and_network_policy() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let pdb = pod_disruption_budget(&cc, "counter");
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let policy = counter_network_policy(&cc).spec.unwrap();
        let rules = policy.ingress.unwrap();
        let gateway_peer = rules[0].from.as_ref().unwrap()[0].pod_selector.as_ref().unwrap();
        assert_eq!(
            gateway_peer.match_labels.as_ref().unwrap()["app.kubernetes.io/component"],
            "gateway",
            "only gateway pods reach the gRPC port"
        );
        assert_eq!(rules[0].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(9001)));
        let scrapers = &rules[1].from.as_ref().unwrap()[0];
        assert_eq!(scrapers.namespace_selector, Some(LabelSelector::default()), "Prometheus in any namespace");
        let consul = sample(serde_json::json!({
            "store": {"managed": true}, "discovery": {"mode": "consul", "consulAddress": "http://consul:8500"},
        }));
        let rules = counter_network_policy(&consul).spec.unwrap().ingress.unwrap();
        assert_eq!(rules[0].from, None, "Consul's health checks reach the gRPC port");
    }

    #[test]
    fn gateways_take_the_api_from_anyone_and_admin_requests_from_prometheus_only() {
        let cc = sample(serde_json::json!({"store": {"managed": true}}));
        let policy = gateway_network_policy(&cc);
        assert_eq!(policy.metadata.name.as_deref(), Some("demo-gateway"));
        let spec = policy.spec.unwrap();
        let pods = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(pods["app.kubernetes.io/component"], "gateway");
        let rules = spec.ingress.unwrap();
        assert_eq!(
            (rules[0].from.as_ref(), rules[0].ports.as_ref().unwrap()[0].port.clone()),
            (None, Some(IntOrString::Int(8080)))
        );
        let scrapers = rules[1].from.as_ref().unwrap();
        assert_eq!(scrapers.len(), 1);
        assert_eq!(
            scrapers[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app.kubernetes.io/name"],
            "prometheus"
        );
        assert_eq!(rules[1].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(8082)));
        assert_eq!(rules.len(), 2, "no other port is open");
    }
}
