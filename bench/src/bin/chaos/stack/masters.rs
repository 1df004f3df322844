//! Faults of a Redis Cluster's masters: a slot moved to another master, a
//! master paused, a master crashed and replaced by its replica.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{RESHARD_BATCHES, RESHARD_SPREAD, Stack, Store, lock, signal, slot_of};

impl Stack {
    /// Moves the slot of `resource` to another master while the clients
    /// write it ([`tally_testkit::RedisCluster::reshard_slot`]); returns
    /// "from → to" ports.
    pub fn reshard(&self, resource: &str) -> Result<String, String> {
        let Store::Cluster { cluster, first_port, .. } = &self.store else {
            return Err("resharding needs a cluster run".into());
        };
        let slot = slot_of(*first_port, resource)?;
        let guard = lock(cluster);
        let cluster = guard.as_ref().ok_or("the cluster is shut down")?;
        let (from, to) = cluster.reshard_slot(slot, RESHARD_BATCHES, RESHARD_SPREAD)?;
        Ok(format!("slot {slot}: {from} → {to}"))
    }

    /// Pauses the master serving `resource`'s slot (SIGSTOP) for `hold`,
    /// then resumes it; its pid. The pid is found first: while it is
    /// paused, that master answers nothing, `CLUSTER NODES` included. With
    /// replicas, a pause longer than the cluster's node timeout (1 s) may
    /// see the replica take over; the old master then rejoins as its replica.
    pub fn pause_master_of(&self, resource: &str, hold: Duration) -> Result<u32, String> {
        let Store::Cluster { cluster, first_port, .. } = &self.store else {
            return Err("no cluster masters in a standalone run".into());
        };
        let slot = slot_of(*first_port, resource)?;
        let pid = {
            let guard = lock(cluster);
            let cluster = guard.as_ref().ok_or("the cluster is shut down")?;
            cluster.master_of(slot).ok_or_else(|| format!("no master serves slot {slot}"))?.pid()
        };
        let stopped = signal(pid, "-STOP");
        std::thread::sleep(hold);
        let resumed = signal(pid, "-CONT");
        stopped.and(resumed)
    }

    /// Crashes (SIGKILL) the master serving `resource`'s slot, waits for its
    /// replica to take over, and after `hold` starts it again (no data: its
    /// AOF is off), to rejoin as the new master's replica. Says which
    /// node took over from which.
    pub fn crash_master_of(&self, resource: &str, hold: Duration) -> Result<String, String> {
        let Store::Cluster { cluster, first_port, pids, replicated: true, .. } = &self.store else {
            return Err("crashing a master needs a cluster with replicas".into());
        };
        let slot = slot_of(*first_port, resource)?;
        let mut guard = lock(cluster);
        let cluster = guard.as_mut().ok_or("the cluster is shut down")?;
        let old = cluster.master_of(slot).ok_or_else(|| format!("no master serves slot {slot}"))?.port;
        let i = cluster.nodes.iter().position(|n| n.port == old).ok_or("the master is not a node of the stack")?;
        // Down for the fault: the memory sampler does not report it dead.
        pids[i].store(0, Ordering::SeqCst);
        let new = cluster.fail_over(slot).map(|node| node.port);
        std::thread::sleep(hold);
        let back = cluster.restart_node(old).map(|node| node.pid());
        pids[i].store(cluster.nodes[i].pid(), Ordering::SeqCst);
        let (new, _) = (new?, back?);
        Ok(format!("slot {slot}: {old} crashed, {new} took over, {old} back as its replica"))
    }
}
