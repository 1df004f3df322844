//! Redis with replicas: a replica of a standalone server, and a Redis
//! Cluster of three masters with one replica each whose masters can fail
//! over, for the tests of waiting for replicas and of failovers.
//!
//! Replication and failover have no event a client can subscribe to, so
//! their states are polled (`INFO replication`, `ROLE`), bounded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::RedisCluster;
use crate::procs::RedisServer;

/// Bound on a replica's first sync and on a failover.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster node declares another failed after this long without an
/// answer, and a replica then takes over (Redis's default is 15 s).
const NODE_TIMEOUT_MS: &str = "1000";

/// Arguments of every server that replicates (or may become a replica): a
/// sync is loaded straight from the socket when the replica is empty, and
/// otherwise (a master demoted after a failover) through an RDB file in a
/// directory of its own. By default that file is `dump.rdb` in the working
/// directory, which every server started there later would load.
fn replication_args() -> Vec<String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tally-test-replica-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a directory for a replica's sync file");
    ["--repl-diskless-load", "on-empty-db", "--dir", &dir.to_string_lossy()].map(String::from).to_vec()
}

impl RedisServer {
    /// A replica of `master`, returned once its first sync is done.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let port = master.port.to_string();
        let mut replica = RedisServer::start_with(|| {
            ["--replicaof", "127.0.0.1", &port].map(String::from).into_iter().chain(replication_args()).collect()
        });
        replica.remove_sync_dir_when_gone();
        replica.wait_until_synced().unwrap_or_else(|e| panic!("{e}"));
        replica
    }

    /// Waits until this replica's sync is done and its master streams
    /// writes to it: the master's view (`state=online`), which comes with
    /// the replica's first acknowledgement, after the replica's own.
    pub fn wait_until_synced(&self) -> Result<(), String> {
        poll(&format!("replica on {} to sync", self.port), || {
            let info = self.cli(&["info", "replication"]);
            let master = info.lines().find_map(|l| l.trim().strip_prefix("master_port:")?.parse::<u16>().ok());
            let online = format!("port={},state=online", self.port);
            info.contains("master_link_status:up")
                && master.is_some_and(|port| crate::redis_cli(port, &["info", "replication"]).contains(&online))
        })
    }

    /// The directory [`replication_args`] made for it goes when it does.
    fn remove_sync_dir_when_gone(&mut self) {
        if let Some(dir) = self.arg("--dir").map(PathBuf::from) {
            self.remove_when_gone(dir);
        }
    }

    /// True while this server is a master (`ROLE`).
    pub fn is_master(&self) -> bool {
        self.cli(&["role"]).lines().next() == Some("master")
    }
}

impl RedisCluster {
    /// Three masters with one replica each, every replica synced. A master
    /// that stops answering for a second is replaced by its replica.
    pub fn start_replicated() -> RedisCluster {
        let mut cluster = RedisCluster::start_with(1, |_| {
            ["--cluster-node-timeout", NODE_TIMEOUT_MS]
                .map(String::from)
                .into_iter()
                .chain(replication_args())
                .collect()
        });
        cluster.nodes.iter_mut().for_each(RedisServer::remove_sync_dir_when_gone);
        for node in cluster.nodes.iter().filter(|node| !node.is_master()) {
            node.wait_until_synced().unwrap_or_else(|e| panic!("{e}"));
        }
        cluster
    }

    /// The replica of the master serving `slot`.
    pub fn replica_for(&self, slot: u16) -> &RedisServer {
        let master = self.master_of(slot).expect("a master serves the slot");
        let id = master.cli(&["cluster", "myid"]);
        let replicas = master.cli(&["cluster", "replicas", &id]);
        let port: u16 = replicas
            .lines()
            .find_map(|line| line.split_whitespace().nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("master {} has no replica: {replicas:?}", master.port));
        self.nodes.iter().find(|n| n.port == port).expect("the replica is a node of this cluster")
    }

    /// Kills the master serving `slot` (SIGKILL: a crash) and waits until its
    /// replica has taken over the slot; returns the new master.
    pub fn fail_over(&self, slot: u16) -> Result<&RedisServer, String> {
        let replica = self.replica_for(slot);
        let master = self.master_of(slot).ok_or_else(|| format!("no master serves slot {slot}"))?;
        master.signal("-KILL");
        poll(&format!("replica {} to take over slot {slot}", replica.port), || {
            replica.is_master() && replica.cli(&["cluster", "info"]).contains("cluster_state:ok")
        })?;
        Ok(replica)
    }
}

impl RedisCluster {
    /// Starts the node on `port` again after a crash, with its cluster
    /// configuration but none of its data, as a master that failed over
    /// comes back: a replica of the node that took its place, returned
    /// once synced from it.
    pub fn restart_node(&mut self, port: u16) -> Result<&RedisServer, String> {
        let i = self.nodes.iter().position(|n| n.port == port).ok_or_else(|| format!("no node on {port}"))?;
        let node = self.nodes.remove(i).restarted();
        let synced = node.wait_until_synced();
        self.nodes.insert(i, node);
        synced.map(|()| &self.nodes[i])
    }
}

/// Polls `done` until it holds, at most [`REPLICATION_TIMEOUT`].
fn poll(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
