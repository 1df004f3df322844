//! Async writes ride out a store outage: while Redis is stopped (SIGSTOP,
//! 3 s) or crashes and restarts (with an fsync'ed append-only file, so
//! Redis itself loses nothing), the counter keeps taking async batches into
//! its write-behind buffer and the gateway keeps routing them to it (its
//! sync health is down, its async health is not). Afterwards every
//! acknowledged increment is stored, exactly — on Redis and on a Redis
//! Cluster.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Http, Service, start_counter, start_gateway, unique};
use serde_json::json;
use tally_testkit::{RedisCluster, RedisServer};
use tokio::sync::watch;

/// Resources the load spreads over (one `likes` counter each).
const RESOURCES: usize = 200;
/// Increments per async batch (each +1).
const OPS: usize = 20;
const CLIENTS: usize = 4;

/// What the clients saw: per batch, when it was sent and whether it was acknowledged.
struct Sent {
    at: Vec<(Instant, bool)>,
}

/// Sends async batches from [`CLIENTS`] clients until `stop`; reports the
/// number of acknowledged batches on `progress` as they come.
async fn drive(http: Http, prefix: String, stop: Arc<AtomicBool>, progress: watch::Sender<usize>) -> Sent {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (http, prefix, stop, progress) = (http.clone(), prefix.clone(), stop.clone(), progress.clone());
            tokio::spawn(async move {
                let mut at = Vec::new();
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let operations: Vec<_> = (0..OPS)
                        .map(|i| json!({"resource_id": format!("{prefix}-{}", (n * OPS + i) % RESOURCES), "counter_type": "likes"}))
                        .collect();
                    n += CLIENTS;
                    let sent = Instant::now();
                    let (status, _) =
                        http.post("/api/v1/counter/batch-increment", json!({"operations": operations, "async": true})).await;
                    at.push((sent, status == 202));
                    if status == 202 {
                        progress.send_modify(|acked| *acked += 1);
                    }
                }
                at
            })
        })
        .collect();
    let mut at = Vec::new();
    for task in tasks {
        at.extend(task.await.expect("client"));
    }
    Sent { at }
}

/// Async load through a gateway, under way.
struct Run {
    http: Http,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: watch::Receiver<usize>,
    load: tokio::task::JoinHandle<Sent>,
}

impl Run {
    /// Starts the load and waits until it is under way.
    async fn start(gateway: &Service) -> Run {
        let http = Http::new(gateway.http_base());
        let prefix = unique("outage");
        let stop = Arc::new(AtomicBool::new(false));
        let (progress, mut acked) = watch::channel(0);
        let load = tokio::spawn(drive(http.clone(), prefix.clone(), stop.clone(), progress));
        acked.wait_for(|n| *n >= 100).await.expect("load under way");
        Run { http, prefix, stop, acked, load }
    }

    /// Lets the load go on for as many batches again after an outage from
    /// `started` to `ended`, stops it, then checks: ≥ 99 % of the batches
    /// sent during the outage acknowledged, and, once `counter`'s buffer
    /// drained, stored = acknowledged exactly.
    async fn finish(mut self, counter: &Service, started: Instant, ended: Instant) {
        let after = *self.acked.borrow();
        self.acked.wait_for(|n| *n >= after + 100).await.expect("load goes on after the outage");
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.load.await.expect("load");

        let during: Vec<bool> =
            sent.at.iter().filter(|(at, _)| *at >= started && *at < ended).map(|(_, ok)| *ok).collect();
        let acknowledged_during = during.iter().filter(|ok| **ok).count();
        println!(
            "OUTAGE {:?}: {} batches sent during it, {acknowledged_during} acknowledged; {} in all",
            ended - started,
            during.len(),
            sent.at.len()
        );
        assert!(!during.is_empty(), "the load went on during the outage");
        let share = format!("{acknowledged_during} of {} acknowledged", during.len());
        assert!(acknowledged_during * 100 >= during.len() * 99, "{share}");

        // Every acknowledged increment is stored, once the buffer is empty.
        let acknowledged = sent.at.iter().filter(|(_, ok)| *ok).count() * OPS;
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::metric(&counter.admin_base(), "tally_counter_buffer_keys", &[]).await > 0.0 {
            let log = counter.log_lines();
            let tail = log[log.len().saturating_sub(10)..].join("\n");
            assert!(
                Instant::now() < deadline,
                "the write-behind buffer did not drain; the counter's log ends:\n{tail}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // the flusher works through its backlog
        }
        // Reads need the gateway to see the counter's store up again (every
        // worker's connection healed: its health may flap for a moment).
        let items: Vec<_> = (0..RESOURCES)
            .map(|i| json!({"resource_id": format!("{}-{i}", self.prefix), "counter_type": "likes"}))
            .collect();
        let body = loop {
            let (status, body) = self.http.post("/api/v1/counter/batch", json!({"items": items})).await;
            if status == 200 {
                break body;
            }
            assert!(Instant::now() < deadline, "reads did not come back: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await; // the gateway's next health check
        };
        let results = body["data"]["results"].as_array().expect("results");
        let stored: i64 = results.iter().map(|r| r["current_value"].as_i64().unwrap_or(0)).sum();
        assert_eq!(stored, acknowledged as i64, "stored = acknowledged, exactly");
    }
}

/// SIGSTOP for 3 s, the outage itself.
async fn stopped_for_3_s(signal: impl Fn(&str)) -> (Instant, Instant) {
    let started = Instant::now();
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal("-CONT");
    (started, Instant::now())
}

fn stack(store: &str) -> (Service, Service) {
    let counter = start_counter(store, &[("TALLY_STORE_TIMEOUT_MS", "500")]);
    common::wait_store_up(&counter);
    let gateway = start_gateway(&counter.grpc_endpoint(), &[]);
    (counter, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_ride_out_a_stopped_redis() {
    let redis = RedisServer::start();
    let (counter, gateway) = stack(&redis.url());
    let run = Run::start(&gateway).await;
    let (started, ended) = stopped_for_3_s(|sig| redis.signal(sig)).await;
    run.finish(&counter, started, ended).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_ride_out_a_redis_crash_and_restart() {
    let dir = std::env::temp_dir().join(unique("aof"));
    std::fs::create_dir_all(&dir).expect("dir");
    let args = RedisServer::durable_args(&dir);
    let redis = RedisServer::start_with(|| args.clone());
    let (counter, gateway) = stack(&redis.url());
    let run = Run::start(&gateway).await;
    let started = Instant::now();
    // SIGKILL, down for a second, then up again with its append-only file.
    let redis = tokio::task::block_in_place(|| redis.restarted_after(Duration::from_secs(1)));
    let ended = Instant::now();
    run.finish(&counter, started, ended).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_ride_out_a_stopped_and_a_restarted_cluster_node() {
    let dir = std::env::temp_dir().join(unique("cluster-aof"));
    let mut cluster = RedisCluster::start_durable(&dir);
    let (counter, gateway) = stack(&cluster.url());
    let run = Run::start(&gateway).await;
    let (started, _) = stopped_for_3_s(|sig| cluster.nodes[0].signal(sig)).await;
    let node = cluster.nodes.remove(1);
    cluster.nodes.insert(1, tokio::task::block_in_place(|| node.restarted_after(Duration::from_secs(1))));
    run.finish(&counter, started, Instant::now()).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
