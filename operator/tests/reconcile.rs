//! Reconcile scenarios against kube-rs's mocked API server (tower-test), as
//! kube-rs/controller-rs does: the requests the operator makes, in order,
//! with what it sends.

mod support;

use http::Method;
use support::{Api, Seen, applied, cluster, events, kinds, run, run_against};
use tally_operator::crd::{CounterCluster, CounterClusterStatus};

#[tokio::test]
async fn first_reconcile_applies_everything_with_one_field_manager_and_owner_refs() {
    let seen = run(cluster(serde_json::json!({"store": {"managed": true}}))).await;
    assert_eq!(
        kinds(&seen),
        vec![
            "Secret",
            "Service",
            "StatefulSet",
            "NetworkPolicy",
            "ConfigMap",
            "Service",
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "NetworkPolicy",
            "Event",
            "CounterCluster",
        ]
    );
    for (_, uri, body) in applied(&seen) {
        assert!(uri.contains("fieldManager=tally-operator") && uri.contains("force=true"), "{uri}");
        assert!(uri.contains("/namespaces/tally/"), "{uri}");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("CounterCluster"), Some("uid-1")), "{uri}");
        assert_eq!((owner["controller"].as_bool(), owner["blockOwnerDeletion"].as_bool()), (Some(true), Some(true)));
    }
    let event = events(&seen)[0];
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Normal"), Some("Applied")));
    assert_eq!(event["regarding"]["name"], "demo");
    let (_, status_uri, status) = seen.last().expect("status patch");
    assert!(status_uri.contains("/counterclusters/demo/status"), "{status_uri}");
    assert!(status_uri.contains("fieldManager=tally-operator"), "{status_uri}");
    assert_eq!(status["status"]["observedGeneration"], 3);
    let ready = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "False", "nothing is ready in the mock");
}

#[tokio::test]
async fn the_managed_redis_password_is_created_once_and_never_overwritten() {
    let cc = serde_json::json!({"store": {"managed": true}});
    let seen = run(cluster(cc.clone())).await;
    let (method, uri, secret) = &seen[0];
    assert_eq!((method, secret["kind"].as_str()), (&Method::POST, Some("Secret")), "created, not applied");
    assert!(uri.contains("fieldManager=tally-operator"), "{uri}");
    let password = secret["stringData"]["password"].as_str().expect("a password");
    assert_eq!(password.len(), 64, "32 random bytes, hex");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1", "deleted with the CounterCluster");
    // Nowhere else: not in the applied objects, Events or status.
    for (_, _, body) in &seen[1..] {
        assert!(!body.to_string().contains(password), "the password leaked into {}", body["kind"]);
    }
    let again = run(cluster(cc.clone())).await;
    assert_ne!(
        again[0].2["stringData"]["password"], secret["stringData"]["password"],
        "a fresh one is offered each time"
    );
    // The Secret exists: the create is refused and nothing overwrites it.
    let existing = run_against(Api { secret_exists: true, ..Api::default() }, cluster(cc)).await.1;
    let secrets: Vec<_> = existing.iter().filter(|(_, _, b)| b["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 1, "one create attempt, no apply");
    assert!(existing.last().expect("status").1.contains("/status"), "reconcile went on to the status");
}

#[tokio::test]
async fn sample_resource_parses_and_reconciles() {
    let sample: CounterCluster =
        serde_yaml_ng::from_str(include_str!("../../deploy/samples/countercluster.yaml")).expect("sample parses");
    assert_eq!(sample.spec.gateway.pool_size, 20);
    let mut sample = sample;
    sample.metadata.uid = Some("uid-2".into());
    let seen = run(sample).await;
    assert!(seen.iter().any(|(_, uri, _)| uri.contains("/statefulsets/demo-redis")), "managed Redis applied");
}

#[tokio::test]
async fn an_unchanged_resource_writes_nothing_new_but_status() {
    // Server-side apply of identical objects is a no-op for the API server;
    // with the generation already observed there is no Event either.
    let spec = serde_json::json!({"store": {"url": "redis://redis:6379"}});
    let first = run(cluster(spec.clone())).await;
    // The second time round the resource carries the status the first wrote.
    let first_status = &first.last().expect("status patch").2["status"];
    let mut observed = cluster(spec);
    observed.status = Some(serde_json::from_value::<CounterClusterStatus>(first_status.clone()).expect("status"));
    let second = run(observed).await;
    assert_eq!(applied(&first), applied(&second));
    assert_eq!(events(&first).len(), 1);
    assert!(events(&second).is_empty(), "no Event for a generation already applied");
    let lists = second.iter().filter(|(m, _, _)| m == Method::GET).count();
    let pod_lists = second.iter().filter(|(m, uri, _)| m == Method::GET && uri.contains("/pods?")).count();
    assert_eq!(pod_lists, 2, "nothing is ready in the mock: each rollout's pods are looked at");
    assert_eq!(lists - pod_lists, 11, "one list per owned kind, for pruning");
    assert_eq!(second.len(), applied(&second).len() + lists + 1, "plus the status: nothing else written");
    let second_status = &second.last().expect("status patch").2["status"];
    assert_eq!(second_status, first_status, "the same status, transition times included");
}

/// The objects whose applied bodies differ between two runs, by URI.
fn changed_between(before: &[Seen], after: &[Seen]) -> Vec<String> {
    let (before, after) = (applied(before), applied(after));
    before.iter().zip(&after).filter(|(a, b)| a.2 != b.2).map(|((_, uri, _), _)| uri.clone()).collect()
}

#[tokio::test]
async fn a_live_tunable_changes_only_its_configmap_and_a_restart_only_one_rolls_its_deployment() {
    let before = run(cluster(serde_json::json!({"store": {"managed": true}}))).await;
    // The write-behind batch size is live: the running counters take it
    // from their mounted settings file, no pod restarts.
    let live = run(cluster(serde_json::json!({"store": {"managed": true}, "counter": {"batchSize": 500}}))).await;
    let changed = changed_between(&before, &live);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("/configmaps/demo-counter-config"), "{changed:?}");
    let config_map =
        &applied(&live).into_iter().find(|(_, uri, _)| uri.contains("/configmaps/demo-counter-config")).unwrap().2;
    let file = config_map["data"]["settings.env"].as_str().expect("the settings file");
    assert!(file.lines().any(|line| line == "TALLY_BATCH_SIZE=500"), "{file}");

    // The group commit's batch bound is read once at startup: the pods roll.
    let restart = run(cluster(serde_json::json!({"store": {"managed": true}, "counter": {"commitMaxOps": 500}}))).await;
    let changed = changed_between(&before, &restart);
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed[0].contains("/configmaps/demo-counter-config"), "{changed:?}");
    assert!(changed[1].contains("/deployments/demo-counter?"), "{changed:?}");
    let deployment =
        &applied(&restart).into_iter().find(|(_, uri, _)| uri.contains("/deployments/demo-counter?")).unwrap().2;
    let hash = &deployment["spec"]["template"]["metadata"]["annotations"]["tally.dev/config-hash"];
    assert!(hash.as_str().is_some_and(|h| h.len() == 64), "the pod template changes, so the pods roll: {hash}");
}

#[tokio::test]
async fn an_invalid_spec_sets_degraded_and_records_a_warning_event() {
    let seen = run(cluster(serde_json::json!({"store": {}}))).await;
    assert!(applied(&seen).is_empty(), "no owned object is written");
    assert_eq!(kinds(&seen), vec!["Event", "CounterCluster"]);
    let event = events(&seen)[0];
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    assert!(event["note"].as_str().unwrap().contains("exactly one of url, urlSecret"), "{event}");
    let status = &seen[1].2["status"];
    let degraded = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"].as_str().unwrap().contains("spec.store"));
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let mut cc = cluster(serde_json::json!({"store": {"managed": true}}));
    cc.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let seen = run(cc).await;
    assert!(seen.is_empty(), "nothing is re-applied while deleting: {:?}", kinds(&seen));
}
