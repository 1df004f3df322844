//! A prometheus-operator PodMonitor for the counters' and gateways'
//! `/metrics` (their ports named `admin`), when `telemetry.podMonitor` asks
//! for one. A kind from another project's CRD, so a `DynamicObject`.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::owned_meta;
use crate::crd::CounterCluster;

/// `monitoring.coreos.com/v1` PodMonitor.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"))
}

pub fn pod_monitor(cc: &CounterCluster) -> Option<DynamicObject> {
    if !cc.spec.telemetry.pod_monitor {
        return None;
    }
    let resource = pod_monitor_resource();
    let mut monitor = DynamicObject::new(&cc.name_any(), &resource);
    monitor.metadata = owned_meta(cc, format!("{}-tally", cc.name_any()), "metrics");
    monitor.data = json!({
        "spec": {
            // Counters and gateways; the managed Redis has no `admin` port.
            "selector": {"matchLabels": {
                "app.kubernetes.io/instance": cc.name_any(),
                "app.kubernetes.io/managed-by": "tally-operator",
            }},
            "podMetricsEndpoints": [{"port": "admin", "path": "/metrics"}],
        }
    });
    Some(monitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::sample;

    #[test]
    fn a_pod_monitor_only_when_asked_for_scraping_the_admin_ports() {
        assert!(pod_monitor(&sample(serde_json::json!({"store": {"managed": true}}))).is_none());
        let cc = sample(serde_json::json!({"store": {"managed": true}, "telemetry": {"podMonitor": true}}));
        let monitor = pod_monitor(&cc).expect("a PodMonitor");
        let json = serde_json::to_value(&monitor).unwrap();
        assert_eq!(
            (json["apiVersion"].as_str(), json["kind"].as_str()),
            (Some("monitoring.coreos.com/v1"), Some("PodMonitor"))
        );
        assert_eq!(json["spec"]["podMetricsEndpoints"][0]["port"], "admin");
        assert_eq!(json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "demo");
        assert!(json["metadata"]["ownerReferences"].is_array());
    }
}
