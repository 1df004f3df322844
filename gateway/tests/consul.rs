//! Consul discovery against a Consul HTTP *test double* (Consul cannot run
//! here; see `tally_testkit::ConsulDouble`), with real counters registering
//! themselves and a real gateway following them with blocking queries.

mod common;

use std::time::Duration;

use common::{Http, start_counter, unique};
use serde_json::json;
use tally_testkit::{ConsulDouble, Service};

fn consul_counter(consul: &ConsulDouble, tags: &str) -> Service {
    start_counter("memory", &[("TALLY_CONSUL_ADDR", &consul.url()), ("TALLY_CONSUL_TAGS", tags)])
}

fn consul_gateway(consul: &ConsulDouble, extra: &[(&str, &str)]) -> Service {
    let url = consul.url();
    let mut env =
        vec![("TALLY_DISCOVERY", "consul"), ("TALLY_CONSUL_ADDR", url.as_str()), ("TALLY_CONSUL_WAIT_S", "1")];
    env.extend_from_slice(extra);
    common::start_gateway("", &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_register_and_the_gateway_follows_them() {
    let consul = ConsulDouble::start().await;
    let first = consul_counter(&consul, "v2,optimized");
    let second = consul_counter(&consul, "v2,optimized");
    consul.wait_for_registrations(2).await;
    let gateway = consul_gateway(&consul, &[]);
    gateway.wait_for_log("the second endpoint warm", |l| l.contains("healthy=true"));
    let http = Http::new(gateway.http_base());
    let post = unique("consul");
    for _ in 0..20 {
        let (status, body) =
            http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
        assert_eq!(status, 200, "{body}");
    }

    // A counter shutting down deregisters first; the gateway drops it.
    let (status, _) = tokio::task::spawn_blocking(move || second.terminate()).await.expect("terminate");
    assert!(status.success());
    consul.wait_for_registrations(1).await;
    gateway.wait_for_log("the endpoint removed", |l| l.contains(tally_runtime::log_events::ENDPOINT_REMOVED));
    for _ in 0..20 {
        let (status, body) =
            http.post("/api/v1/counter/increment", json!({"resource_id": post, "counter_type": "likes"})).await;
        assert_eq!(status, 200, "{body}");
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wait_filter_tags_and_survive_an_index_reset() {
    let consul = ConsulDouble::start().await;
    let _tagged = consul_counter(&consul, "v2");
    let _other = consul_counter(&consul, "canary");
    consul.wait_for_registrations(2).await;
    let gateway = consul_gateway(&consul, &[("TALLY_CONSUL_TAG", "v2")]);
    let http = Http::new(gateway.admin_base());
    let (_, backends) = http.get("/api/v1/system/backends").await;
    assert_eq!(backends["data"]["endpoints"].as_array().map(Vec::len), Some(1), "only the v2 instance: {backends}");

    // Nothing changes: blocking queries (wait=1s) keep the rate near one a second.
    let before = consul.queries();
    tokio::time::sleep(Duration::from_millis(2500)).await; // observing a quiet period is the point here
    let quiet = consul.queries() - before;
    assert!(quiet <= 4, "{quiet} queries in 2.5 s: not blocking");

    // The index goes backwards (agent restart): the gateway starts over
    // without spinning, and still sees changes afterwards.
    consul.set_index(1);
    let _late = consul_counter(&consul, "v2");
    consul.wait_for_registrations(3).await;
    gateway.wait_for_log("the new v2 instance", |l| l.contains("discovered"));
    let (_, backends) = http.get("/api/v1/system/backends").await;
    assert_eq!(backends["data"]["endpoints"].as_array().map(Vec::len), Some(2), "{backends}");
    let before = consul.queries();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(consul.queries() - before <= 11, "the loop is rate-limited to 10 queries a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_over_https_with_an_acl_token_that_never_reaches_a_log() {
    const TOKEN: &str = "7d0c-acl-token-never-logged";
    let certs = tally_testkit::TestCerts::generate("tally-consul-tls");
    let consul = ConsulDouble::start_secured(&certs, TOKEN).await;
    let (url, ca) = (consul.url(), certs.ca.to_string_lossy().to_string());
    assert!(url.starts_with("https://"));
    let secured = [("TALLY_CONSUL_ADDR", url.as_str()), ("TALLY_CONSUL_CA_FILE", ca.as_str())];
    let with_token = |token| {
        let mut env = secured.to_vec();
        env.push(("TALLY_CONSUL_TOKEN", token));
        env
    };

    // A wrong token: Consul refuses the registration, and the refusal is logged without the token.
    let stranger = start_counter("memory", &with_token("wrong-token"));
    stranger.wait_for_log("the refused registration", |l| l.contains("403"));
    assert!(consul.refused() >= 1);
    assert!(consul.ids().is_empty(), "nothing registered with a wrong token");
    drop(stranger);

    let counter = start_counter("memory", &with_token(TOKEN));
    consul.wait_for_registrations(1).await;
    let mut env = vec![("TALLY_DISCOVERY", "consul"), ("TALLY_CONSUL_WAIT_S", "1")];
    env.extend(with_token(TOKEN));
    let gateway = common::start_gateway("", &env);
    let http = Http::new(gateway.http_base());
    let (status, body) =
        http.post("/api/v1/counter/increment", json!({"resource_id": unique("acl"), "counter_type": "likes"})).await;
    assert_eq!(status, 200, "{body}");
    let metrics = reqwest::get(format!("{}/metrics", gateway.admin_base())).await.unwrap().text().await.unwrap();
    for (name, lines) in
        [("counter", counter.log_lines()), ("gateway", gateway.log_lines()), ("metrics", vec![metrics])]
    {
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| !l.contains(TOKEN)), "the ACL token appears in the {name} output");
    }
}
