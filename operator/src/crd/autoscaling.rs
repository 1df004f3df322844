//! Autoscaling of counters and gateways (`autoscaling/v2`
//! HorizontalPodAutoscaler). With it on, the operator leaves `replicas` of
//! the Deployment to the autoscaler: it stops applying the field, so
//! server-side apply never fights the HPA over it.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must be at most maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest pods.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU use to keep, percent of the CPU request.
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization: i32,
    /// Also scale on a per-pod metric served by a metrics adapter
    /// (prometheus-adapter), e.g. `tally_gateway_http_requests_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_metric: Option<PodsMetricSpec>,
}

fn default_cpu() -> i32 {
    70
}

/// A per-pod metric and the average value to keep per pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodsMetricSpec {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A Kubernetes quantity, e.g. `200` or `1500m`.
    pub average_value: String,
}
