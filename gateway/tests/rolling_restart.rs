//! Rolling restarts of the counters under load: each counter in turn gets
//! SIGTERM, drains, exits and comes back on its address (as under systemd or
//! a StatefulSet), or is replaced by a new pod at a new address (a
//! Kubernetes Deployment's rolling update, through the EndpointSlice watch),
//! while clients keep writing through the gateway. Users expect no client to
//! notice: no failed request, nothing counted twice. And a stopping gateway
//! lets its load balancer take it out first.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Http, RedisServer, Service, free_port, retry_after, start_counter, start_gateway, unique, wait_store_up};
use serde_json::json;
use tally_runtime::log_events::{ENDPOINT_HEALTH_CHANGED, ENDPOINT_REMOVED};
use tally_testkit::KubernetesDouble;
use tokio::sync::Notify;

/// What the writers saw.
#[derive(Default)]
struct Seen {
    acknowledged: AtomicU64,
    /// Woken at each acknowledgement.
    acked: Notify,
    /// Every answer other than 200 (status, Retry-After, body), counted.
    failures: Mutex<BTreeMap<String, u64>>,
}

/// Writers sending plain (unkeyed) increments of `resource` one after another
/// until `stop`: a write that fails cannot be resent blindly, so each one
/// must either be acknowledged or be reported.
fn spawn_writers(
    http: &Http,
    resource: &str,
    writers: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|_| {
            let (http, stop, seen) = (http.clone(), stop.clone(), seen.clone());
            let body = json!({"resource_id": resource, "counter_type": "likes", "delta": 1}).to_string().into_bytes();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, headers, answer) =
                        http.exchange("POST", "/api/v1/counter/increment", Some(body.clone())).await;
                    if status == 200 {
                        seen.acknowledged.fetch_add(1, Ordering::Relaxed);
                        seen.acked.notify_waiters();
                    } else {
                        let line = format!("{status} retry-after={:?} {answer}", retry_after(&headers));
                        *seen.failures.lock().unwrap().entry(line).or_default() += 1;
                    }
                }
            })
        })
        .collect()
}

/// Waits until the writers have had `more` further acknowledgements: the
/// traffic really flows through the counters as they are now.
async fn more_acknowledged(seen: &Seen, more: u64) {
    let target = seen.acknowledged.load(Ordering::Relaxed) + more;
    let reached = async {
        loop {
            // Registered before the check, so no acknowledgement in between is missed.
            let next = seen.acked.notified();
            if seen.acknowledged.load(Ordering::Relaxed) >= target {
                return;
            }
            next.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), reached).await.is_err() {
        panic!("writes stopped flowing: {:?}", seen.failures.lock().unwrap());
    }
}

fn health_line(listen: &str, healthy: bool) -> impl Fn(&str) -> bool + '_ {
    move |line| {
        line.contains(ENDPOINT_HEALTH_CHANGED) && line.contains(listen) && line.contains(&format!("healthy={healthy}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_counters_fails_no_write_and_counts_each_once() {
    let redis = RedisServer::start();
    let listens: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    // Outside Kubernetes nothing holds SIGTERM back while the gateway
    // notices: the counter's own delay does (10× the gateway's check interval).
    let start =
        |listen: &str| start_counter(&redis.url(), &[("TALLY_LISTEN", listen), ("TALLY_SHUTDOWN_DELAY_MS", "1000")]);
    let mut counters: Vec<Option<Service>> = listens.iter().map(|listen| Some(start(listen))).collect();
    for counter in counters.iter().flatten() {
        wait_store_up(counter);
    }
    let endpoints = listens.iter().map(|listen| format!("http://{listen}")).collect::<Vec<_>>().join(",");
    // Each failed attempt logged with its error chain, for the assertion's message.
    let gateway = start_gateway(&endpoints, &[("RUST_LOG", "info,tally_gateway::client=debug")]);
    // start_gateway waited for the first endpoint's turn to healthy; the next is the other's.
    gateway.wait_for_log("both endpoints healthy", |line| {
        line.contains(ENDPOINT_HEALTH_CHANGED) && line.contains("healthy=true")
    });

    let resource = unique("rolling");
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Seen::default()));
    let writers = spawn_writers(&Http::new(gateway.http_base()), &resource, 16, &stop, &seen);
    more_acknowledged(&seen, 500).await;

    for (slot, listen) in counters.iter_mut().zip(&listens) {
        let old = slot.take().expect("running");
        let (exit, log) = tokio::task::spawn_blocking(move || old.terminate()).await.expect("terminate");
        assert!(exit.success(), "the counter on {listen} did not drain cleanly: {exit:?}\n{}", log.join("\n"));
        gateway.wait_for_log("the draining counter taken out", health_line(listen, false));
        more_acknowledged(&seen, 200).await; // on the other counter alone

        let new = start(listen);
        wait_store_up(&new);
        gateway.wait_for_log("the restarted counter back", health_line(listen, true));
        *slot = Some(new);
        more_acknowledged(&seen, 500).await;
    }

    every_write_counted_once(writers, &stop, &seen, &redis, &resource, &gateway).await;
}

/// Stops the writers, then checks that none failed and that Redis holds
/// exactly what was acknowledged.
async fn every_write_counted_once(
    writers: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    seen: &Seen,
    redis: &RedisServer,
    resource: &str,
    gateway: &Service,
) {
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let failures = seen.failures.lock().unwrap().clone();
    let acknowledged = seen.acknowledged.load(Ordering::Relaxed);
    let stored: u64 = redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "likes"]).parse().expect("a stored count");
    assert_eq!(
        stored, acknowledged,
        "each acknowledged write counted once, nothing else written; failures: {failures:?}"
    );
    let failed: u64 = failures.values().sum();
    assert!(
        failures.is_empty(),
        "{failed} of {} writes failed during the restart: {failures:#?}\ngateway log:\n{}",
        acknowledged + failed,
        gateway.log_lines().join("\n")
    );
}

/// A Kubernetes rolling update (maxSurge 1, maxUnavailable 0) as the
/// gateway sees it through its EndpointSlice watch (the API server is a
/// test double, `tally_testkit::KubernetesDouble`): the new pod starts at a
/// new address and turns ready; the old one turns not ready (terminating:
/// its preStop sleep keeps it serving meanwhile), then gets SIGTERM and
/// exits. Twice, under the same writers: not one write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_rolling_update_of_the_counters_fails_no_write() {
    let redis = RedisServer::start();
    let api = KubernetesDouble::start("tally").await;
    let start = |port: u16| start_counter(&redis.url(), &[("TALLY_LISTEN", &format!("127.0.0.1:{port}"))]);
    let at = |port: u16| format!("127.0.0.1:{port}");
    let mut port = free_port();
    let mut old = start(port);
    wait_store_up(&old);
    api.set_slice("counter-0", port, &[("127.0.0.1", true)]);
    let kubeconfig = api.kubeconfig();
    let gateway = start_gateway("", &[("TALLY_DISCOVERY", "kubernetes"), ("KUBECONFIG", kubeconfig.as_str())]);
    api.wait_for_watches(1).await;

    let resource = unique("k8s-rolling");
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Seen::default()));
    let writers = spawn_writers(&Http::new(gateway.http_base()), &resource, 16, &stop, &seen);
    more_acknowledged(&seen, 500).await;

    for pod in 1..=2 {
        let new_port = free_port();
        let new = start(new_port);
        wait_store_up(&new);
        api.set_slice(&format!("counter-{pod}"), new_port, &[("127.0.0.1", true)]);
        gateway.wait_for_log("the new pod warm", health_line(&at(new_port), true));
        api.set_slice(&format!("counter-{}", pod - 1), port, &[("127.0.0.1", false)]);
        gateway.wait_for_log("the terminating pod out", |line| {
            line.contains(&at(port)) && line.contains(ENDPOINT_REMOVED)
        });
        more_acknowledged(&seen, 200).await; // on the new pod alone

        let (exit, log) = tokio::task::spawn_blocking(move || old.terminate()).await.expect("terminate");
        assert!(exit.success(), "the old pod did not drain cleanly: {exit:?}\n{}", log.join("\n"));
        (old, port) = (new, new_port);
        more_acknowledged(&seen, 500).await;
    }
    every_write_counted_once(writers, &stop, &seen, &redis, &resource, &gateway).await;
}

/// With `TALLY_SHUTDOWN_DELAY_MS`, a stopping gateway fails `/ready` at once
/// (so a load balancer takes it out) and serves on until the delay ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_fails_readiness_and_serves_on_during_its_delay() {
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    wait_store_up(&counter);
    // Longer than the test: it is killed at the end, still in its delay.
    let gateway = start_gateway(&counter.grpc_endpoint(), &[("TALLY_SHUTDOWN_DELAY_MS", "60000")]);
    let (http, admin) = (Http::new(gateway.http_base()), Http::new(gateway.admin_base()));
    assert_eq!(admin.exchange("GET", "/ready", None).await.0, 200);

    gateway.signal("-TERM");
    gateway.wait_for_log("the gateway stopping", |line| line.contains("shutting down"));
    let (status, _, body) = admin.exchange("GET", "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    let resource = unique("stopping-gateway");
    let increment = json!({"resource_id": resource, "counter_type": "likes", "delta": 2}).to_string().into_bytes();
    let (status, _, body) = http.exchange("POST", "/api/v1/counter/increment", Some(increment)).await;
    assert_eq!(status, 200, "served during the delay: {body}");
    assert_eq!(redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "likes"]), "2");
}
