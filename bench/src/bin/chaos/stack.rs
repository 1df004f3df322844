//! The stack under test, as real processes on loopback: redis-server with an
//! fsync-always AOF (or, with `--store cluster`, a Redis Cluster of three
//! masters; with `--store cluster-replicated`, each with a replica), two
//! `tally-counter`s and one `tally-gateway` in front of both.
//!
//! Every process that a fault may kill listens on a port fixed at startup,
//! so that after a restart it is back at the same address and its clients
//! (the gateway's channels, the counters' Redis connections) reconnect by
//! themselves, as they would to a restarted pod behind a stable address.
//! The slots are behind short-lived locks so the memory sampler can read the
//! current pids while a fault is restarting a process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tally_testkit::{RedisCluster, RedisServer, Service, free_port, redis_cli};

mod masters;

/// Gateway's limit for a request head: slow clients must be cut after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_millis(2000);

/// Attempts at restarting a process before the fault is reported failed.
const START_ATTEMPTS: u32 = 3;

/// One counter process and the fixed addresses it comes back on.
pub struct Counter {
    pub name: &'static str,
    grpc_port: u16,
    admin_port: u16,
    service: Mutex<Option<Service>>,
    pid: AtomicU32,
}

/// Where the counters keep their counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One redis-server; faults kill and restart it, and pause it.
    Redis,
    /// A Redis Cluster of three masters, no replicas; faults move the
    /// resources' slots between masters while they are written, and pause
    /// a master.
    Cluster,
    /// The same with a replica per master, which the counters wait for on
    /// every write (`TALLY_STORE_WAIT_REPLICAS=1`); faults also crash a
    /// master, which its replica replaces, and bring it back as a replica.
    ClusterReplicated,
}

enum Store {
    Redis {
        port: u16,
        dir: PathBuf,
        server: Mutex<Option<RedisServer>>,
        pid: AtomicU32,
    },
    Cluster {
        /// Taken out at shutdown; held while a slot moves.
        cluster: Mutex<Option<RedisCluster>>,
        /// The nodes' pids in start order (a crashed master comes back
        /// with a new one), readable while a resharding holds the cluster.
        pids: Vec<AtomicU32>,
        first_port: u16,
        url: String,
        replicated: bool,
    },
}

/// Names of the cluster's nodes in the report, in start order.
const NODE_NAMES: [&str; 6] = ["redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6"];

/// `MIGRATE` batches of a resharding and the time they are spread over: a
/// slot stays half-moved for about a second or more however many keys it
/// holds (one for the unkeyed resource; the keyed resource's idempotency
/// markers, one per increment, besides), while every client keeps writing.
const RESHARD_BATCHES: usize = 100;
const RESHARD_SPREAD: Duration = Duration::from_secs(1);

pub struct Stack {
    bin_dir: PathBuf,
    store: Store,
    pub counters: [Counter; 2],
    gateway: Mutex<Option<Service>>,
    pub gateway_pid: u32,
    pub gateway_http: SocketAddr,
    pub gateway_admin: String,
}

impl Stack {
    /// Starts everything; panics with the reason when a process cannot be
    /// started (a setup failure, not a finding).
    pub fn start(bin_dir: &Path, run_id: &str, kind: StoreKind) -> Stack {
        for name in ["tally-counter", "tally-gateway"] {
            let path = bin_dir.join(name);
            assert!(path.is_file(), "{} not found: build it first (cargo build --release -p {name})", path.display());
        }
        let store = match kind {
            StoreKind::Redis => {
                let dir = std::env::temp_dir().join(format!("tally-chaos-{run_id}-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                Store::Redis { port: free_port(), dir, server: Mutex::new(None), pid: AtomicU32::new(0) }
            }
            StoreKind::Cluster | StoreKind::ClusterReplicated => {
                let replicated = kind == StoreKind::ClusterReplicated;
                let cluster = if replicated { RedisCluster::start_replicated() } else { RedisCluster::start() };
                Store::Cluster {
                    pids: cluster.nodes.iter().map(|n| AtomicU32::new(n.pid())).collect(),
                    first_port: cluster.nodes[0].port,
                    url: cluster.url(),
                    cluster: Mutex::new(Some(cluster)),
                    replicated,
                }
            }
        };
        let counter = |name| Counter {
            name,
            grpc_port: free_port(),
            admin_port: free_port(),
            service: Mutex::new(None),
            pid: AtomicU32::new(0),
        };
        let mut stack = Stack {
            bin_dir: bin_dir.to_path_buf(),
            store,
            counters: [counter("counter-a"), counter("counter-b")],
            gateway: Mutex::new(None),
            gateway_pid: 0,
            gateway_http: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_admin: String::new(),
        };
        if kind == StoreKind::Redis {
            stack.start_redis().unwrap_or_else(|e| panic!("{e}"));
        }
        for i in 0..2 {
            stack.start_counter(i).unwrap_or_else(|e| panic!("{e}"));
        }
        let endpoints: Vec<String> =
            stack.counters.iter().map(|c| format!("http://127.0.0.1:{}", c.grpc_port)).collect();
        let endpoints = endpoints.join(",");
        let header_timeout = HEADER_TIMEOUT.as_millis().to_string();
        let gateway = Service::start(
            &bin_dir.join("tally-gateway"),
            &[
                ("TALLY_COUNTER_ENDPOINTS", &endpoints),
                ("TALLY_HEALTH_INTERVAL_MS", "200"),
                ("TALLY_HTTP_HEADER_TIMEOUT_MS", &header_timeout),
            ],
        );
        stack.gateway_pid = gateway.pid();
        stack.gateway_http = gateway.addr("http");
        stack.gateway_admin = gateway.admin_base();
        *lock(&stack.gateway) = Some(gateway);
        stack
    }

    pub fn store_kind(&self) -> StoreKind {
        match self.store {
            Store::Redis { .. } => StoreKind::Redis,
            Store::Cluster { replicated: false, .. } => StoreKind::Cluster,
            Store::Cluster { replicated: true, .. } => StoreKind::ClusterReplicated,
        }
    }

    /// The processes' current pids by name (0 while one is down).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut pids = match &self.store {
            Store::Redis { pid, .. } => vec![("redis", pid.load(Ordering::SeqCst))],
            Store::Cluster { pids, .. } => {
                NODE_NAMES.iter().copied().zip(pids.iter().map(|pid| pid.load(Ordering::SeqCst))).collect()
            }
        };
        pids.extend(self.counters.iter().map(|c| (c.name, c.pid.load(Ordering::SeqCst))));
        pids.push(("gateway", self.gateway_pid));
        pids
    }

    /// `HGET tally:{resource} likes` from the store: a missing field is 0,
    /// an unreachable store None (redis-cli prints nothing for both, hence
    /// the PING). In a cluster, redis-cli follows the slot's redirect.
    pub fn read_count(&self, resource: &str) -> Option<i64> {
        let (port, follow) = match &self.store {
            Store::Redis { port, .. } => (*port, None),
            Store::Cluster { first_port, .. } => (*first_port, Some("-c")),
        };
        if redis_cli(port, &["PING"]) != "PONG" {
            return None;
        }
        let key = hash_key(resource);
        let mut args: Vec<&str> = follow.into_iter().collect();
        args.extend(["HGET", key.as_str(), "likes"]);
        let value = redis_cli(port, &args);
        if value.is_empty() { Some(0) } else { value.parse().ok() }
    }

    /// Starts (or restarts) redis-server on its port and directory: the AOF
    /// there brings back every acknowledged write.
    pub fn start_redis(&self) -> Result<u32, String> {
        let Store::Redis { port, dir, server, pid: current } = &self.store else {
            return Err("no standalone redis-server in a cluster run".into());
        };
        let port = *port;
        let dir = dir.to_string_lossy().to_string();
        let args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir.as_str()];
        let redis = retry_start("redis-server", || RedisServer::start_on(port, &args))?;
        let pid = redis.pid();
        *lock(server) = Some(redis);
        current.store(pid, Ordering::SeqCst);
        Ok(pid)
    }

    /// SIGKILLs redis-server (dropping it makes the testkit's watchdog kill it
    /// and waits until it is gone, so its port is free for the restart).
    pub fn kill_redis(&self) -> Result<u32, String> {
        match &self.store {
            Store::Redis { server, pid, .. } => kill(server, pid, "redis-server"),
            Store::Cluster { .. } => Err("no standalone redis-server in a cluster run".into()),
        }
    }

    pub fn signal_redis(&self, sig: &str) -> Result<u32, String> {
        match &self.store {
            Store::Redis { pid, .. } => signal(pid.load(Ordering::SeqCst), sig),
            Store::Cluster { .. } => Err("no standalone redis-server in a cluster run".into()),
        }
    }

    /// Starts (or restarts) counter `i` on its fixed gRPC and admin ports.
    pub fn start_counter(&self, i: usize) -> Result<u32, String> {
        let c = &self.counters[i];
        let store = match &self.store {
            Store::Redis { port, .. } => format!("redis://127.0.0.1:{port}"),
            Store::Cluster { url, .. } => url.clone(),
        };
        let grpc = format!("127.0.0.1:{}", c.grpc_port);
        let admin = format!("127.0.0.1:{}", c.admin_port);
        let bin = self.bin_dir.join("tally-counter");
        let replicas = if self.store_kind() == StoreKind::ClusterReplicated { "1" } else { "0" };
        let env = [
            ("TALLY_STORE", store.as_str()),
            ("TALLY_LISTEN", grpc.as_str()),
            ("TALLY_ADMIN_LISTEN", admin.as_str()),
            ("TALLY_HEALTH_INTERVAL_MS", "200"),
            ("TALLY_STORE_WAIT_REPLICAS", replicas),
            // Five of the gateway's health checks: it takes a stopping counter out first.
            ("TALLY_SHUTDOWN_DELAY_MS", "1000"),
        ];
        let service = retry_start(c.name, || Service::start(&bin, &env))?;
        let pid = service.pid();
        *lock(&c.service) = Some(service);
        c.pid.store(pid, Ordering::SeqCst);
        Ok(pid)
    }

    /// SIGKILLs counter `i` and reaps it.
    pub fn kill_counter(&self, i: usize) -> Result<u32, String> {
        let c = &self.counters[i];
        kill(&c.service, &c.pid, c.name)
    }

    /// SIGTERMs counter `i` and waits for it to exit, as a rolling update
    /// stops a pod; an exit other than 0 (a drain that failed) is an error.
    pub fn terminate_counter(&self, i: usize) -> Result<u32, String> {
        let c = &self.counters[i];
        let service = lock(&c.service).take();
        let pid = c.pid.swap(0, Ordering::SeqCst);
        let service = service.ok_or_else(|| format!("{} was not running", c.name))?;
        let (status, _) = service.terminate();
        if status.success() { Ok(pid) } else { Err(format!("{} exited with {status} after SIGTERM", c.name)) }
    }

    pub fn signal_counter(&self, i: usize, sig: &str) -> Result<u32, String> {
        signal(self.counters[i].pid.load(Ordering::SeqCst), sig)
    }

    /// Stops everything, front to back (gateway, counters, Redis), then
    /// removes the AOF directory. Callable while another thread still holds
    /// the stack (a fault injector that overran its bound).
    pub fn shutdown(&self) {
        drop(lock(&self.gateway).take());
        for c in &self.counters {
            c.pid.store(0, Ordering::SeqCst);
            drop(lock(&c.service).take());
        }
        match &self.store {
            Store::Redis { server, pid, dir, .. } => {
                pid.store(0, Ordering::SeqCst);
                drop(lock(server).take());
                let _ = std::fs::remove_dir_all(dir);
            }
            Store::Cluster { cluster, .. } => drop(lock(cluster).take()),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The Redis key of a resource's counters.
fn hash_key(resource: &str) -> String {
    format!("tally:{{{resource}}}")
}

/// The cluster slot of a resource's counters (`CLUSTER KEYSLOT`).
fn slot_of(port: u16, resource: &str) -> Result<u16, String> {
    let reply = redis_cli(port, &["cluster", "keyslot", &hash_key(resource)]);
    reply.parse().map_err(|_| format!("CLUSTER KEYSLOT of {resource}: {reply:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the process out of its slot and drops it (for the testkit's
/// processes, SIGKILL and wait); its pid, or why there was none.
fn kill<P>(slot: &Mutex<Option<P>>, pid: &AtomicU32, what: &str) -> Result<u32, String> {
    let process = lock(slot).take();
    let pid = pid.swap(0, Ordering::SeqCst);
    match process {
        Some(process) => {
            drop(process);
            Ok(pid)
        }
        None => Err(format!("{what} was not running")),
    }
}

/// `kill -<sig> <pid>`, reporting failure instead of panicking (the process
/// may have died on its own, which the report should show).
fn signal(pid: u32, sig: &str) -> Result<u32, String> {
    if pid == 0 {
        return Err(format!("kill {sig}: the process is not running"));
    }
    match Command::new("kill").arg(sig).arg(pid.to_string()).status() {
        Ok(status) if status.success() => Ok(pid),
        Ok(status) => Err(format!("kill {sig} {pid}: {status}")),
        Err(e) => Err(format!("kill {sig} {pid}: {e}")),
    }
}

/// Runs a testkit start (which panics when the process does not come up)
/// a few times, turning a last failure into an error for the fault log.
fn retry_start<T>(what: &str, start: impl Fn() -> T + std::panic::RefUnwindSafe) -> Result<T, String> {
    let mut last = String::new();
    for attempt in 1..=START_ATTEMPTS {
        match std::panic::catch_unwind(&start) {
            Ok(started) => return Ok(started),
            Err(panic) => {
                last = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                eprintln!("chaos: starting {what} failed (attempt {attempt}/{START_ATTEMPTS}): {last}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Err(format!("{what} did not start: {last}"))
}
