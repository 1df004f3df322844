//! `tally-bench`: a gRPC load generator for the counter service, the part of
//! `make bench` that HTTP tools (hey, oha, wrk) cannot do.
//!
//! Closed-loop: `--concurrency` workers each keep one request (or, for
//! streams, `--window` messages) in flight over `--connections` HTTP/2
//! channels, for `--seconds`. Prints one CSV line:
//! `scenario,requests,ops,errors,seconds,ops_per_sec,p50_ms,p99_ms,max_ms`
//! (latency is per request; a batch request carries `--batch` operations).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{BatchIncrementRequest, IncrementOperation, IncrementRequest};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// Unary Increment, all on one counter.
    UnaryHot,
    /// Unary Increment over `--keys` distinct counters.
    UnaryKeys,
    /// BatchIncrement with `--batch` operations over `--keys` counters.
    Batch,
    /// BatchIncrement with `async: true`.
    BatchAsync,
    /// StreamIncrements over `--keys` counters, `--window` in flight per stream.
    Stream,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    #[arg(long, default_value = "http://127.0.0.1:9001")]
    endpoint: String,
    /// HTTP/2 connections, shared round-robin by the workers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent workers (requests in flight; streams for `stream`).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Prefix of resource ids, so runs do not collide.
    #[arg(long, default_value = "bench")]
    prefix: String,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    ops: u64,
    errors: u64,
    latency_us: Option<Histogram<u64>>,
}

impl Tally {
    fn record(&mut self, started: Instant, ops: u64, ok: bool) {
        let hist = self.latency_us.get_or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
        let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
        self.requests += 1;
        if ok {
            self.ops += ops;
        } else {
            self.errors += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.ops += other.ops;
        self.errors += other.errors;
        if let Some(h) = other.latency_us {
            match &mut self.latency_us {
                Some(mine) => {
                    let _ = mine.add(h);
                }
                None => self.latency_us = Some(h),
            }
        }
    }
}

fn key_for(args: &Args, n: u64) -> (String, String) {
    match args.scenario {
        Scenario::UnaryHot => (format!("{}-hot", args.prefix), "likes".into()),
        _ => (format!("{}-{}", args.prefix, n % args.keys), "views".into()),
    }
}

async fn worker(args: Arc<Args>, mut client: CounterServiceClient<Channel>, id: usize, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut n = id as u64 * 7919;
    while Instant::now() < deadline {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let started = Instant::now();
        match args.scenario {
            Scenario::UnaryHot | Scenario::UnaryKeys => {
                let (resource_id, counter_type) = key_for(&args, n >> 16);
                let ok = client
                    .increment(IncrementRequest { resource_id, counter_type, delta: Some(1), ..Default::default() })
                    .await
                    .is_ok();
                tally.record(started, 1, ok);
            }
            Scenario::Batch | Scenario::BatchAsync => {
                let operations = (0..args.batch as u64)
                    .map(|i| {
                        let (resource_id, counter_type) = key_for(&args, (n >> 16).wrapping_add(i * 104_729));
                        IncrementOperation { resource_id, counter_type, delta: Some(1), ..Default::default() }
                    })
                    .collect();
                let request = BatchIncrementRequest {
                    operations,
                    r#async: matches!(args.scenario, Scenario::BatchAsync),
                    omit_names: false,
                };
                let ok = client
                    .batch_increment(request)
                    .await
                    .is_ok_and(|r| r.get_ref().results.iter().all(|o| o.error.is_none()));
                tally.record(started, args.batch as u64, ok);
            }
            Scenario::Stream => unreachable!("streams use stream_worker"),
        }
    }
    tally
}

/// One stream with up to `window` messages in flight; latency per message.
async fn stream_worker(
    args: Arc<Args>,
    mut client: CounterServiceClient<Channel>,
    id: usize,
    deadline: Instant,
) -> Tally {
    let window = Arc::new(Semaphore::new(args.window));
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<IncrementRequest>(args.window);
    let feeder = {
        let (window, sent_at, args) = (window.clone(), sent_at.clone(), args.clone());
        tokio::spawn(async move {
            let mut n = id as u64 * 7919;
            while Instant::now() < deadline {
                let Ok(permit) = window.acquire().await else { break };
                permit.forget();
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (resource_id, counter_type) = key_for(&args, n >> 16);
                sent_at.lock().expect("lock").push_back(Instant::now());
                if tx
                    .send(IncrementRequest { resource_id, counter_type, delta: Some(1), ..Default::default() })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut tally = Tally::default();
    let Ok(response) = client.stream_increments(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
        tally.errors += 1;
        return tally;
    };
    let mut responses = response.into_inner();
    while let Some(item) = responses.next().await {
        let Some(started) = sent_at.lock().expect("lock").pop_front() else { break };
        tally.record(started, 1, item.is_ok_and(|r| r.error.is_none()));
        window.add_permits(1);
    }
    let _ = feeder.await;
    tally
}

// One thread, as redis-benchmark: on a small machine the load generator
// shares the cores with the counter and Redis, and a multi-threaded client
// spent more of them on cross-thread wake-ups than on calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint =
            Endpoint::from_shared(args.endpoint.clone())?.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
        channels.push(endpoint.connect().await?);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..args.concurrency {
        let client = CounterServiceClient::new(channels[id % channels.len()].clone());
        let args = args.clone();
        tasks.push(match args.scenario {
            Scenario::Stream => tokio::spawn(stream_worker(args, client, id, deadline)),
            _ => tokio::spawn(worker(args, client, id, deadline)),
        });
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let hist = total.latency_us.unwrap_or_else(|| Histogram::new(3).expect("histogram"));
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:?},{},{},{},{:.2},{:.0},{:.3},{:.3},{:.3}",
        args.scenario,
        total.requests,
        total.ops,
        total.errors,
        seconds,
        total.ops as f64 / seconds,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    Ok(())
}
