//! Kubernetes discovery against a Kubernetes API *test double* for
//! EndpointSlices (no API server can run here; see
//! `tally_testkit::KubernetesDouble`), with real counters and a real
//! gateway using kube-runtime's watcher. The last test needs a real cluster
//! and is ignored unless asked for.

mod common;

use common::{Http, free_port, start_counter, unique};
use serde_json::json;
use tally_testkit::{KubernetesDouble, Service};

fn endpoints(backends: &serde_json::Value) -> Vec<String> {
    let mut list: Vec<String> = backends["data"]["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["address"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_endpoints_are_followed_and_a_relist_resyncs_fully() {
    let api = KubernetesDouble::start("tally").await;
    let ports = [free_port(), free_port()];
    let _counters: Vec<Service> =
        ports.iter().map(|p| start_counter("memory", &[("TALLY_LISTEN", &format!("127.0.0.1:{p}"))])).collect();
    api.set_slice("counter-a", ports[0], &[("127.0.0.1", true)]);
    api.set_slice("counter-b", ports[1], &[("127.0.0.1", false)]); // not ready yet

    let kubeconfig = api.kubeconfig();
    let gateway = common::start_gateway("", &[("TALLY_DISCOVERY", "kubernetes"), ("KUBECONFIG", kubeconfig.as_str())]);
    let http = Http::new(gateway.http_base());
    let a = format!("http://127.0.0.1:{}", ports[0]);
    let b = format!("http://127.0.0.1:{}", ports[1]);
    assert_eq!(
        endpoints(&Http::new(gateway.admin_base()).get("/api/v1/system/backends").await.1),
        vec![a.clone()],
        "only ready endpoints"
    );
    api.wait_for_watches(1).await;

    // b becomes ready: discovered and warmed up.
    api.set_slice("counter-b", ports[1], &[("127.0.0.1", true)]);
    gateway.wait_for_log("b warm", |l| l.contains(&b) && l.contains("healthy=true"));
    let post = unique("k8s");
    for _ in 0..10 {
        let (status, body) =
            http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
        assert_eq!(status, 200, "{body}");
    }

    let scrape = || async {
        let metrics = reqwest::get(format!("{}/metrics", gateway.admin_base())).await.expect("scrape");
        metrics.text().await.expect("text")
    };
    assert!(scrape().await.contains(&format!("endpoint=\"{a}\"")), "a is exported while discovered");

    // a's slice vanishes while the watch is down; after the relist it is gone.
    api.delete_slice_silently("counter-a");
    api.cut_watches();
    gateway.wait_for_log("a dropped by the resync", |l| {
        l.contains(&a) && l.contains(tally_runtime::log_events::ENDPOINT_REMOVED)
    });
    // Its metric series go with it (no stale breaker state exported forever).
    let text = scrape().await;
    assert!(!text.contains(&format!("endpoint=\"{a}\"")), "series of a removed endpoint are still exported");
    assert!(text.contains(&format!("endpoint=\"{b}\"")), "the current endpoint is exported");
    assert_eq!(endpoints(&Http::new(gateway.admin_base()).get("/api/v1/system/backends").await.1), vec![b.clone()]);

    // Deletion through the watch too.
    api.wait_for_watches(3).await;
    api.delete_slice("counter-b");
    gateway.wait_for_log("b dropped", |l| l.contains(&b) && l.contains(tally_runtime::log_events::ENDPOINT_REMOVED));
    let (status, body) =
        http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")), "{body}");
}

/// Against a real cluster: `KUBECONFIG` pointing at it, a `tally-counter`
/// Service with a port named `grpc` in `TALLY_K8S_NAMESPACE` (default
/// `default`). `make e2e-kind` (operator issue) sets this up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Kubernetes cluster (KUBECONFIG) running a tally-counter Service"]
async fn discovers_counters_in_a_real_cluster() {
    let gateway = common::start_gateway("", &[("TALLY_DISCOVERY", "kubernetes")]);
    let (status, body) = Http::new(gateway.admin_base()).get("/ready").await;
    assert_eq!(status, 200, "{body}");
}
