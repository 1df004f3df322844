//! Reconcile scenarios where the API server says no (422 on apply, 403,
//! an Event it will not take) and where objects are no longer wanted
//! (pruning), against the mocked API server in `support`.

mod support;

use http::Method;
use serde_json::json;
use support::{Api, cluster, condition, deleted, events, run_against};

#[tokio::test]
async fn an_apply_the_api_server_refuses_is_degraded_with_its_message_and_a_warning_event() {
    for (code, message) in [
        (422, "Deployment.apps \"demo-gateway\" is invalid: spec.template.spec.containers[0].image: Required value"),
        (403, "deployments.apps \"demo-gateway\" is forbidden: User cannot patch resource"),
    ] {
        let api = Api { refuse: vec![(Method::PATCH, "/deployments/demo-gateway", code, message)], ..Api::default() };
        let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
        assert!(result.is_err(), "{code}: the reconcile fails, so the controller backs off and retries");
        let degraded = condition(&seen, "Degraded");
        assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("ApplyFailed")));
        let said = degraded["message"].as_str().unwrap_or_default();
        assert!(said.contains("Deployment demo-gateway") && said.contains(message), "{code}: {said}");
        assert_eq!(condition(&seen, "Ready")["status"], "False");
        let warning = events(&seen).into_iter().find(|e| e["reason"] == "ApplyFailed").expect("a Warning Event");
        assert_eq!(warning["type"], "Warning");
        assert!(warning["note"].as_str().unwrap_or_default().contains(message));
        // Nothing after the refused object was applied.
        assert!(!seen.iter().any(|(m, uri, _)| m == Method::PATCH && uri.contains("poddisruptionbudgets")));
    }
}

#[tokio::test]
async fn an_event_the_api_server_will_not_take_does_not_stop_the_reconcile() {
    let api = Api { refuse: vec![(Method::POST, "/events", 403, "events are forbidden")], ..Api::default() };
    let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
    result.expect("reconciled although the Event was refused");
    assert_eq!(condition(&seen, "Degraded")["status"], "False");
}

/// An object as a list returns it: owned (as controller) by `uid`.
fn owned(kind: &str, name: &str, uid: &str) -> serde_json::Value {
    let api_version = match kind {
        "StatefulSet" | "Deployment" => "apps/v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "Role" | "RoleBinding" => "rbac.authorization.k8s.io/v1",
        _ => "v1",
    };
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {
            "name": name, "namespace": "tally",
            "labels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/managed-by": "tally-operator"},
            "ownerReferences": [{"apiVersion": "tally.dev/v1alpha1", "kind": "CounterCluster", "name": "demo",
                                 "uid": uid, "controller": true}],
        },
    })
}

#[tokio::test]
async fn objects_no_longer_wanted_are_pruned_and_others_are_left_alone() {
    // The managed Redis was switched off; its StatefulSet, Service and
    // NetworkPolicy remain. Another CounterCluster's StatefulSet carries the
    // same labels (a name reused after a delete) but not this owner.
    let api = Api {
        existing: vec![
            ("statefulsets", owned("StatefulSet", "demo-redis", "uid-1")),
            ("statefulsets", owned("StatefulSet", "demo-redis-old", "uid-0")),
            ("services", owned("Service", "demo-redis", "uid-1")),
            ("services", owned("Service", "demo-counter", "uid-1")),
            ("networkpolicies", owned("NetworkPolicy", "demo-redis", "uid-1")),
        ],
        ..Api::default()
    };
    let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
    result.expect("reconcile");
    let deleted = deleted(&seen);
    assert_eq!(deleted.len(), 3, "{deleted:?}");
    for path in ["/statefulsets/demo-redis?", "/services/demo-redis?", "/networkpolicies/demo-redis?"] {
        assert!(deleted.iter().any(|uri| uri.contains(path)), "{path} not pruned: {deleted:?}");
    }
    // Lists ask only for this CounterCluster's objects.
    let lists: Vec<&String> = seen.iter().filter(|(m, _, _)| m == Method::GET).map(|(_, uri, _)| uri).collect();
    assert!(!lists.is_empty());
    for uri in lists {
        assert!(uri.contains("labelSelector=app.kubernetes.io%2Finstance%3Ddemo"), "{uri}");
    }
}

#[tokio::test]
async fn leaving_kubernetes_discovery_prunes_the_gateways_endpointslice_rights() {
    let api = Api {
        existing: vec![
            ("roles", owned("Role", "demo-gateway", "uid-1")),
            ("rolebindings", owned("RoleBinding", "demo-gateway", "uid-1")),
        ],
        ..Api::default()
    };
    let spec = json!({"store": {"url": "redis://r:6379"}, "discovery": {"mode": "dns"}});
    let (result, seen) = run_against(api, cluster(spec)).await;
    result.expect("reconcile");
    let deleted = deleted(&seen);
    for path in ["/roles/demo-gateway?", "/rolebindings/demo-gateway?"] {
        assert!(deleted.iter().any(|uri| uri.contains(path)), "{path} not pruned: {deleted:?}");
    }
}

#[tokio::test]
async fn with_autoscaling_the_hpa_owns_replicas_and_without_it_the_hpa_goes() {
    let scaled =
        json!({"store": {"url": "redis://r:6379"}, "gateway": {"autoscaling": {"minReplicas": 2, "maxReplicas": 8}}});
    let (result, seen) = run_against(Api::default(), cluster(scaled)).await;
    result.expect("reconcile");
    let patched = |path: &str| {
        seen.iter().find(|(m, uri, _)| m == Method::PATCH && uri.contains(path)).map(|(_, _, body)| body.clone())
    };
    let gateway = patched("/deployments/demo-gateway").expect("the gateway Deployment");
    assert!(gateway["spec"].get("replicas").is_none(), "replicas left to the HPA: {}", gateway["spec"]);
    let counter = patched("/deployments/demo-counter").expect("the counter Deployment");
    assert_eq!(counter["spec"]["replicas"], 2, "the counters are not autoscaled");
    let hpa = patched("/horizontalpodautoscalers/demo-gateway").expect("an HPA");
    assert_eq!((hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()), (Some(2), Some(8)));

    // Autoscaling switched off: the HPA is pruned and replicas are applied again.
    let mut hpa_as_listed = owned("HorizontalPodAutoscaler", "demo-gateway", "uid-1");
    hpa_as_listed["apiVersion"] = "autoscaling/v2".into();
    hpa_as_listed["spec"] = json!({"scaleTargetRef": {"kind": "Deployment", "name": "demo-gateway"}, "maxReplicas": 8});
    let api = Api { existing: vec![("horizontalpodautoscalers", hpa_as_listed)], ..Api::default() };
    let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
    result.expect("reconcile");
    assert!(
        deleted(&seen).iter().any(|uri| uri.contains("/horizontalpodautoscalers/demo-gateway?")),
        "{:?}",
        deleted(&seen)
    );
}

#[tokio::test]
async fn a_deployment_whose_selector_cannot_change_is_recreated_with_its_pods_kept() {
    let immutable =
        "Deployment.apps \"demo-counter\" is invalid: spec.selector: Invalid value: ...: field is immutable";
    let api = Api {
        refuse_once: std::sync::Arc::new(std::sync::Mutex::new(vec![(
            Method::PATCH,
            "/deployments/demo-counter",
            422,
            immutable,
        )])),
        ..Api::default()
    };
    let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
    result.expect("reconciled after recreating the Deployment");
    let at = |method: Method, path: &str| seen.iter().position(|(m, uri, _)| *m == method && uri.contains(path));
    let trail: Vec<String> = seen.iter().map(|(m, u, _)| format!("{m} {u}")).collect();
    let deleted = at(Method::DELETE, "/deployments/demo-counter").unwrap_or_else(|| panic!("not deleted: {trail:#?}"));
    let (_, _, options) = &seen[deleted];
    assert_eq!(options["propagationPolicy"], "Orphan", "its pods keep running: {options}");
    let reapplied =
        seen.iter().rposition(|(m, uri, _)| *m == Method::PATCH && uri.contains("/deployments/demo-counter"));
    assert!(reapplied.is_some_and(|i| i > deleted), "applied again after the delete");
    assert_eq!(condition(&seen, "Degraded")["status"], "False");
}

#[tokio::test]
async fn a_pod_that_cannot_pull_its_image_shows_as_degraded_at_once() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo-gateway-7f9-abc", "namespace": "tally",
                     "labels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "gateway"}},
        "status": {"containerStatuses": [{
            "name": "gateway", "image": "tally-gateway:typo", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied for tally-gateway"}},
        }]},
    });
    let api = Api { existing: vec![("pods", pod)], ..Api::default() };
    let (result, seen) = run_against(api, cluster(json!({"store": {"url": "redis://r:6379"}}))).await;
    result.expect("reconcile");
    let degraded = condition(&seen, "Degraded");
    assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("RolloutStuck")));
    assert!(
        degraded["message"].as_str().unwrap_or_default().contains("ErrImagePull: pull access denied"),
        "{degraded}"
    );
    let pod_lists: Vec<&String> =
        seen.iter().filter(|(m, uri, _)| m == Method::GET && uri.contains("/pods?")).map(|(_, u, _)| u).collect();
    assert!(pod_lists.iter().all(|uri| uri.contains("app.kubernetes.io%2Finstance%3Ddemo")), "{pod_lists:?}");
}

/// A ready pod of `component` named `name`.
fn ready_pod(name: &str, component: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "tally",
                     "labels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": component}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A pod's `/api/v1/system/settings` view.
fn settings_view(in_force: &str, refused: Option<&str>) -> serde_json::Value {
    json!({"file": "/etc/tally/settings/settings.env", "in_force": in_force, "refused": refused,
           "restart_pending": [], "live": []})
}

#[tokio::test]
async fn settings_applied_says_whether_every_ready_pod_runs_the_written_settings_file() {
    use tally_operator::resources::{config, counter, gateway};
    let cc = cluster(json!({"store": {"url": "redis://r:6379"}}));
    let (counter_digest, gateway_digest) =
        (config::digest(&counter::settings(&cc)), config::digest(&gateway::settings(&cc)));
    let pods = vec![("pods", ready_pod("demo-counter-a", "counter")), ("pods", ready_pod("demo-gateway-a", "gateway"))];
    let proxy = |pod: &str, port: i32| format!("/pods/{pod}:{port}/proxy/api/v1/system/settings");
    let refusal = "TALLY_BATCH_SIZE: invalid value '0' for '--batch-size <BATCH_SIZE>'";
    let api = Api {
        existing: pods.clone(),
        answers: vec![
            (proxy("demo-counter-a", counter::ADMIN_PORT), settings_view("an-older-version", Some(refusal))),
            (proxy("demo-gateway-a", gateway::ADMIN_PORT), settings_view(&gateway_digest, None)),
        ],
        ..Api::default()
    };
    let (result, seen) = run_against(api, cc.clone()).await;
    result.expect("reconcile");
    let settings = condition(&seen, "SettingsApplied");
    assert_eq!((settings["status"].as_str(), settings["reason"].as_str()), (Some("False"), Some("SettingsRefused")));
    assert_eq!(
        settings["message"].as_str(),
        Some(format!("the settings in force stay: counter pod demo-counter-a: {refusal}").as_str())
    );
    let proxied: Vec<&String> =
        seen.iter().filter(|(m, uri, _)| m == Method::GET && uri.contains("/proxy/")).map(|(_, u, _)| u).collect();
    assert_eq!(proxied.len(), 2, "one read per ready pod: {proxied:?}");

    let api = Api {
        existing: pods,
        answers: vec![
            (proxy("demo-counter-a", counter::ADMIN_PORT), settings_view(&counter_digest, None)),
            (proxy("demo-gateway-a", gateway::ADMIN_PORT), settings_view(&gateway_digest, None)),
        ],
        ..Api::default()
    };
    let (result, seen) = run_against(api, cc).await;
    result.expect("reconcile");
    let settings = condition(&seen, "SettingsApplied");
    assert_eq!((settings["status"].as_str(), settings["reason"].as_str()), (Some("True"), Some("SettingsApplied")));
}
