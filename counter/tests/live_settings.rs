//! The counter's live settings through its settings file: a real
//! redis-server and tally-counter; the write-behind buffer's flush
//! interval, capacity and full-buffer policy change while it runs, and a
//! bad version is refused with the settings in force kept.

mod common;

use std::time::Duration;

use common::{RedisServer, client, op, start_counter, unique};
use tally_proto::v1::{BatchIncrementRequest, GetRequest};
use tally_runtime::log_events::{SETTINGS_APPLIED, SETTINGS_REFUSED};
use tally_testkit::SettingsFile;
use tonic::Code;

async fn settings_view(admin: &str) -> String {
    reqwest::get(format!("{admin}/api/v1/system/settings")).await.expect("view").text().await.expect("text")
}

async fn gauge(admin: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics")).await.expect("scrape").text().await.expect("text");
    tally_testkit::prometheus::sum(&text, name, &[]).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_behind_buffer_is_retuned_live() {
    let redis = RedisServer::start();
    // A flush once a minute: an async increment stays buffered for the test.
    let slow = [("TALLY_FLUSH_INTERVAL_MS", "60000"), ("TALLY_BATCH_SIZE", "100000")];
    let file = SettingsFile::new(&slow);
    let path = file.env_value();
    let counter =
        start_counter(&redis.url(), &[("TALLY_SETTINGS_FILE", path.as_str()), ("TALLY_SETTINGS_RELOAD_MS", "100")]);
    let admin = counter.admin_base();
    let mut grpc = client(&counter).await;
    let resource = unique("buffered");
    let async_batch = |operations| BatchIncrementRequest { operations, r#async: true, omit_names: false };
    let accepted = grpc.batch_increment(async_batch(vec![op(&resource, "views", 5)])).await.expect("async");
    assert!(accepted.into_inner().accepted);
    let read = || GetRequest { resource_id: resource.clone(), counter_type: "views".into() };
    assert_eq!(grpc.get(read()).await.expect("get").into_inner().current_value, 0, "still buffered");

    // A shorter flush interval applies at once, not after the minute.
    file.write(&[("TALLY_FLUSH_INTERVAL_MS", "50"), ("TALLY_BATCH_SIZE", "100000")]);
    counter.wait_for_log("the new interval", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_FLUSH_INTERVAL_MS"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    while grpc.get(read()).await.expect("get").into_inner().current_value != 5 {
        assert!(tokio::time::Instant::now() < deadline, "the buffered increment was not flushed on the new interval");
        interval.tick().await;
    }

    // A batch size of 1: the next async increment is flushed at once,
    // though the interval is back at a minute.
    file.write(&[("TALLY_FLUSH_INTERVAL_MS", "60000"), ("TALLY_BATCH_SIZE", "1")]);
    counter.wait_for_log("the new batch size", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_BATCH_SIZE"));
    let accepted = grpc.batch_increment(async_batch(vec![op(&resource, "views", 2)])).await.expect("async");
    assert!(accepted.into_inner().accepted);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while grpc.get(read()).await.expect("get").into_inner().current_value != 7 {
        assert!(tokio::time::Instant::now() < deadline, "the increment was not flushed at the new batch size");
        interval.tick().await;
    }

    // A smaller capacity with the `reject` policy refuses what does not fit.
    file.write(&[
        ("TALLY_FLUSH_INTERVAL_MS", "60000"),
        ("TALLY_BUFFER_CAPACITY", "2"),
        ("TALLY_BUFFER_FULL_POLICY", "reject"),
    ]);
    counter.wait_for_log("the new capacity", |l| l.contains(SETTINGS_APPLIED) && l.contains("TALLY_BUFFER_CAPACITY"));
    assert_eq!(gauge(&admin, "tally_counter_buffer_capacity").await, 2.0);
    let prefix = unique("full");
    let three = (0..3).map(|i| op(&format!("{prefix}-{i}"), "views", 1)).collect();
    let status = grpc.batch_increment(async_batch(three)).await.expect_err("over the new capacity");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let two = (0..2).map(|i| op(&format!("{prefix}-{i}"), "views", 1)).collect();
    assert!(grpc.batch_increment(async_batch(two)).await.expect("fits").into_inner().accepted);

    // A bad version changes nothing and says why.
    file.write(&[("TALLY_BUFFER_CAPACITY", "50"), ("TALLY_BATCH_SIZE", "0")]);
    let refused = counter.wait_for_log("the refusal", |l| l.contains(SETTINGS_REFUSED));
    assert!(refused.contains("TALLY_BATCH_SIZE"), "{refused}");
    assert_eq!(gauge(&admin, "tally_counter_buffer_capacity").await, 2.0, "nothing of it applied");
    assert_eq!(gauge(&admin, "tally_counter_settings_refused").await, 1.0);
    let view = settings_view(&admin).await;
    assert!(view.contains(r#""refused":"TALLY_BATCH_SIZE"#), "{view}");

    // The process never restarted: what it buffered before is still there.
    let (status, lines) = counter.terminate();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains(tally_runtime::log_events::BUFFER_DRAINED)));
    let stored = redis.cli(&["HGET", &format!("tally:{{{prefix}-0}}"), "views"]);
    assert_eq!(stored.trim(), "1", "the buffered increment was drained at shutdown");
}
