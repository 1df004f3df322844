//! Reconcile scenarios against kube-rs's mocked API server (tower-test), as
//! kube-rs/controller-rs does: the requests the operator makes, in order,
//! with what it sends.

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tally_operator::controller::{Context, reconcile};
use tally_operator::crd::CounterCluster;
use tower_test::mock;

fn cluster(spec: Value) -> CounterCluster {
    let mut cc = CounterCluster::new("demo", serde_json::from_value(spec).expect("spec"));
    cc.metadata.namespace = Some("tally".into());
    cc.metadata.uid = Some("uid-1".into());
    cc.metadata.generation = Some(3);
    cc
}

/// Runs one reconcile against a mock API that answers every PATCH like an
/// API server (echoing the applied object; the whole resource for status).
/// Returns (path and query, body) of every request.
async fn run(cc: CounterCluster) -> Vec<(String, Value)> {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "tally");
    let resource = serde_json::to_vec(&cc).expect("resource");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            assert_eq!(request.method(), Method::PATCH, "the operator only applies");
            let uri = request.uri().to_string();
            let body = request.into_body().collect_bytes().await.expect("body");
            let json: Value = serde_json::from_slice(&body).expect("json body");
            let answer = if uri.contains("/status") { resource.clone() } else { body.to_vec() };
            respond.send_response(Response::builder().body(Body::from(answer)).expect("response"));
            seen.push((uri, json));
        }
        seen
    });
    reconcile(Arc::new(cc), Arc::new(Context { client })).await.expect("reconcile");
    server.await.expect("mock server")
}

#[tokio::test]
async fn first_reconcile_applies_everything_with_one_field_manager_and_owner_refs() {
    let seen = run(cluster(serde_json::json!({"store": {"managed": true}}))).await;
    let kinds: Vec<&str> = seen.iter().map(|(_, body)| body["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(
        kinds,
        vec![
            "Service",
            "StatefulSet",
            "Service",
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "CounterCluster",
        ]
    );
    for (uri, body) in &seen {
        assert!(uri.contains("fieldManager=tally-operator") && uri.contains("force=true"), "{uri}");
        assert!(uri.contains("/namespaces/tally/"), "{uri}");
        if body["kind"] != "CounterCluster" {
            let owner = &body["metadata"]["ownerReferences"][0];
            assert_eq!(
                (owner["kind"].as_str(), owner["uid"].as_str()),
                (Some("CounterCluster"), Some("uid-1")),
                "{uri}"
            );
        }
    }
    let (status_uri, status) = seen.last().expect("status patch");
    assert!(status_uri.contains("/counterclusters/demo/status"), "{status_uri}");
    assert_eq!(status["status"]["observedGeneration"], 3);
    let ready = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "False", "nothing is ready in the mock");
}

#[tokio::test]
async fn sample_resource_parses_and_reconciles() {
    let sample: CounterCluster =
        serde_yaml_ng::from_str(include_str!("../../deploy/samples/countercluster.yaml")).expect("sample parses");
    assert_eq!(sample.spec.gateway.pool_size, 20);
    let mut sample = sample;
    sample.metadata.uid = Some("uid-2".into());
    let seen = run(sample).await;
    assert!(seen.iter().any(|(uri, _)| uri.contains("/statefulsets/demo-redis")), "managed Redis applied");
}

#[tokio::test]
async fn a_second_reconcile_sends_the_same_desired_state() {
    // Server-side apply of identical objects is a no-op for the API server:
    // only the status (its timestamps) may differ.
    let spec = serde_json::json!({"store": {"url": "redis://redis:6379"}});
    let first = run(cluster(spec.clone())).await;
    let second = run(cluster(spec)).await;
    let objects = |seen: &[(String, Value)]| seen[..seen.len() - 1].to_vec();
    assert_eq!(objects(&first), objects(&second));
}

#[tokio::test]
async fn a_changed_tunable_changes_only_its_deployment() {
    let before = run(cluster(serde_json::json!({"store": {"managed": true}}))).await;
    let after = run(cluster(serde_json::json!({"store": {"managed": true}, "counter": {"batchSize": 500}}))).await;
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|((_, a), (_, b))| a != b && a["kind"] != "CounterCluster")
        .map(|((uri, _), _)| uri.clone())
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("/deployments/demo-counter"), "{changed:?}");
}

#[tokio::test]
async fn an_invalid_spec_only_sets_a_degraded_status() {
    let seen = run(cluster(serde_json::json!({"store": {}}))).await;
    assert_eq!(seen.len(), 1, "nothing but the status is written");
    let degraded =
        seen[0].1["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"].as_str().unwrap().contains("spec.store"));
}
