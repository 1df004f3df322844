//! Live settings through the settings file, as the operator's mounted
//! ConfigMap delivers them: real redis-server, tally-counter and
//! tally-gateway processes; the file is replaced whole while increments run,
//! and every change is observed from outside (backend view, metrics, log),
//! with no failed request and the same process throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Http, RedisServer, metric, start_counter, start_gateway, unique};
use serde_json::{Value, json};
use tally_runtime::log_events::{SETTINGS_APPLIED, SETTINGS_REFUSED};
use tally_testkit::SettingsFile;

/// Increments sent by `tasks` loops until `stop`: (acknowledged, failed).
fn load(http: &Http, resource: &str, tasks: usize, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..tasks)
        .map(|_| {
            let (http, stop, resource) = (http.clone(), stop.clone(), resource.to_string());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"resource_id": resource, "counter_type": "likes", "delta": 1});
                    match http.post("/api/v1/counter/increment", body).await.0 {
                        200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn backends(admin: &Http) -> Value {
    let (status, body) = admin.get("/api/v1/system/backends").await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn settings_view(admin: &Http) -> Value {
    let (status, body) = admin.get("/api/v1/system/settings").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_settings_apply_under_load_and_a_bad_version_is_refused() {
    let redis = RedisServer::start();
    let counter = start_counter(&redis.url(), &[]);
    let base = [("TALLY_POOL_SIZE", "2"), ("TALLY_LB_POLICY", "round_robin"), ("TALLY_CACHE_TTL_MS", "60000")];
    let file = SettingsFile::new(&base);
    let path = file.env_value();
    let gateway = start_gateway(
        &counter.grpc_endpoint(),
        &[("TALLY_SETTINGS_FILE", path.as_str()), ("TALLY_SETTINGS_RELOAD_MS", "100"), ("TALLY_WORKER_THREADS", "2")],
    );
    let (http, admin) = (Http::new(gateway.http_base()), Http::new(gateway.admin_base()));
    let admin_base = gateway.admin_base();
    let view = settings_view(&admin).await;
    assert_eq!(view["file"], json!(path));
    assert!(view["refused"].is_null());
    assert_eq!(backends(&admin).await["endpoints"][0]["pool_size"], 2);

    let resource = unique("live");
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(&http, &resource, 4, &stop);

    // Pool size and balancing policy: the backend view shows the new ones.
    file.write(&[("TALLY_POOL_SIZE", "6"), ("TALLY_LB_POLICY", "least_request"), ("TALLY_CACHE_TTL_MS", "60000")]);
    let applied = gateway.wait_for_log("the first reload", |l| l.contains(SETTINGS_APPLIED));
    assert!(applied.contains("TALLY_LB_POLICY,TALLY_POOL_SIZE"), "{applied}");
    let now = backends(&admin).await;
    assert_eq!(
        (now["endpoints"][0]["pool_size"].clone(), now["load_balancing"].clone()),
        (json!(6), json!("least_request"))
    );

    // Cache TTL: reads hit the cache, then, with the TTL at 0, none does
    // (of a counter no write is in flight on, which the cache would skip).
    let quiet = unique("quiet");
    let once = json!({"resource_id": quiet, "counter_type": "likes", "delta": 1});
    assert_eq!(http.post("/api/v1/counter/increment", once).await.0, 200);
    let read = format!("/api/v1/counter/{quiet}/likes");
    for _ in 0..3 {
        assert_eq!(http.get(&read).await.0, 200);
    }
    let hits = metric(&admin_base, "tally_gateway_cache_lookups_total", &["hit"]).await;
    assert!(hits >= 1.0, "a 60 s cache serves repeated reads");
    file.write(&[("TALLY_POOL_SIZE", "6"), ("TALLY_LB_POLICY", "least_request"), ("TALLY_CACHE_TTL_MS", "0")]);
    gateway.wait_for_log("the cache change", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_CACHE_TTL_MS"));
    for _ in 0..3 {
        assert_eq!(http.get(&read).await.0, 200);
    }
    assert_eq!(metric(&admin_base, "tally_gateway_cache_lookups_total", &["hit"]).await, hits, "caching is off");

    // The log filter: the access log (debug) appears.
    let debug = [("TALLY_POOL_SIZE", "6"), ("TALLY_CACHE_TTL_MS", "0"), ("RUST_LOG", "info,tally_gateway::api=debug")];
    file.write(&debug);
    gateway.wait_for_log("the log filter change", |l| l.contains(SETTINGS_APPLIED) && l.contains("RUST_LOG"));
    gateway.wait_for_log("an access log line", |l| l.contains("DEBUG") && l.contains("route="));

    // A version that would not start is refused whole: nothing of it applies.
    file.write(&[("TALLY_POOL_SIZE", "3"), ("TALLY_COALESCE_MAX_OPS", "0")]);
    let refused = gateway.wait_for_log("the refusal", |l| l.contains(SETTINGS_REFUSED));
    assert!(refused.contains("TALLY_COALESCE_MAX_OPS"), "{refused}");
    assert_eq!(
        backends(&admin).await["endpoints"][0]["pool_size"],
        6,
        "the valid line of a refused version is not applied"
    );
    let view = settings_view(&admin).await;
    assert!(view["refused"].as_str().is_some_and(|r| r.contains("TALLY_COALESCE_MAX_OPS")), "{view}");
    assert_eq!(metric(&admin_base, "tally_gateway_settings_refused", &[]).await, 1.0);
    assert_eq!(metric(&admin_base, "tally_gateway_settings_reloads_total", &["refused"]).await, 1.0);
    file.write_raw("TALLY_POOL_SIZE 3\n");
    gateway.wait_for_log("a syntax error", |l| l.contains(SETTINGS_REFUSED) && l.contains("line 1"));

    // A restart-only setting keeps its value and is reported pending; the
    // live ones of the same version apply.
    file.write(&[("TALLY_POOL_SIZE", "4"), ("TALLY_LISTEN", "127.0.0.1:1")]);
    gateway.wait_for_log("the mixed version", |l| {
        l.contains(SETTINGS_APPLIED) && l.contains("restart_pending=TALLY_LISTEN")
    });
    let view = settings_view(&admin).await;
    assert!(view["refused"].is_null(), "a version applied clears the refusal: {view}");
    assert_eq!(view["restart_pending"], json!(["TALLY_LISTEN"]));
    assert_eq!(view["in_force"], json!(tally_runtime::settings_file::digest(&std::fs::read(file.path()).unwrap())));
    assert_eq!(metric(&admin_base, "tally_gateway_settings_refused", &[]).await, 0.0);
    assert_eq!(metric(&admin_base, "tally_gateway_settings_restart_pending", &[]).await, 1.0);
    assert_eq!(backends(&admin).await["endpoints"][0]["pool_size"], 4, "two workers, two connections each");

    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut failed) = (0, 0);
    for loader in loaders {
        let (ok, bad) = loader.await.expect("load task");
        acknowledged += ok;
        failed += bad;
    }
    assert_eq!(failed, 0, "no request failed while settings changed");
    assert!(acknowledged > 0);
    let stored: u64 = redis.cli(&["HGET", &format!("tally:{{{resource}}}"), "likes"]).trim().parse().expect("stored");
    assert_eq!(stored, acknowledged, "every acknowledged increment stored once");
    let (status, _) = http.get("/api/v1/health").await;
    assert_eq!(status, 200, "the same process serves on its old port");
}
