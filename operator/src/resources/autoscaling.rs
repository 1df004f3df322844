//! HorizontalPodAutoscalers for the counter and gateway Deployments, when
//! their spec asks for autoscaling.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::owned_meta;
use crate::crd::{AutoscalingSpec, CounterCluster};

/// The autoscaler of `component`'s Deployment `name`, if `spec` is set.
pub fn hpa(
    cc: &CounterCluster,
    component: &str,
    name: String,
    spec: Option<&AutoscalingSpec>,
) -> Option<HorizontalPodAutoscaler> {
    let spec = spec?;
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(spec.target_cpu_utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if let Some(pods) = &spec.pods_metric {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier { name: pods.name.clone(), selector: None },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(pods.average_value.clone())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    Some(HorizontalPodAutoscaler {
        metadata: owned_meta(cc, name.clone(), component),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(spec.min_replicas),
            max_replicas: spec.max_replicas,
            metrics: Some(metrics),
            behavior: None,
        },
        ..HorizontalPodAutoscaler::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{counter, gateway, sample};

    #[test]
    fn autoscaling_makes_an_hpa_and_takes_replicas_away_from_the_deployment() {
        let cc = sample(serde_json::json!({
            "store": {"managed": true},
            "gateway": {"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 10,
                "podsMetric": {"name": "tally_gateway_http_requests_in_flight", "averageValue": "200"}}},
        }));
        let hpa = hpa(&cc, "gateway", gateway::name(&cc), cc.spec.gateway.autoscaling.as_ref()).expect("an HPA");
        let spec = hpa.spec;
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        assert_eq!(spec.scale_target_ref.name, "demo-gateway");
        let metrics = spec.metrics.expect("metrics");
        assert_eq!(
            metrics[0].resource.as_ref().unwrap().target.average_utilization,
            Some(70),
            "the default CPU target"
        );
        assert_eq!(metrics[1].pods.as_ref().unwrap().metric.name, "tally_gateway_http_requests_in_flight");
        assert_eq!(
            gateway::deployment(&cc).spec.replicas,
            None,
            "the HPA owns replicas; the operator does not apply them"
        );
        assert_eq!(counter::deployment(&cc).spec.replicas, Some(2), "counters without autoscaling keep theirs");
        assert!(super::hpa(&cc, "counter", counter::name(&cc), cc.spec.counter.autoscaling.as_ref()).is_none());
    }
}
