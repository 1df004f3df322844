//! Calls on one Redis Cluster slot (a resource's transaction, a write-behind
//! chunk, a slot's reads): where each runs, the `MOVED` it follows, and the
//! `WAIT` that confirms it on the node that ran it.

use std::sync::Arc;

use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, Pipeline, RedisError, RedisResult, Value};

use super::ClusterStore;
use crate::store::Outcome;
use crate::store::confirmed::{Confirmed, Replies};
use crate::store::error::unexpected;
use crate::store::redirect::Redirect;
use crate::store::redis::RedisStore;
use crate::store::replication::{self, has_writes};

impl ClusterStore {
    /// Runs `run` for `slot`: on the slot's master as the slot map names it,
    /// over that master's own connection, or through the cluster connection
    /// while there is no map (or it names no master for the slot) — but a
    /// write is then refused unsent when waiting for replicas (below); and when
    /// refused with `MOVED` (it did not run: the slot has another master),
    /// once more on the node the redirect names ([`Redirect::first_in`]),
    /// after which the slot map is fetched again. A write refused with
    /// `ASK` (its slot is being migrated and its key has moved) goes once
    /// more too, after `ASKING`, to the node importing the slot.
    ///
    /// What is sent here runs whole or not at all (one command, a
    /// transaction, a script) or only reads, so a redirect in the error of
    /// any of its commands means none ran, and following it never applies
    /// a write twice. Not an `ASK` for reads: there some keys of the slot
    /// may still be where the read was refused ([`ClusterStore::get`]
    /// reads such a slot key by key).
    ///
    /// A write's `WAIT` goes in the write's own pipeline on a node's
    /// connection ([`crate::store::confirmed`]); through the cluster
    /// connection it could only follow as a command of its own, which that
    /// connection may route to another node than the write's (its map
    /// changed in between, or it reconnected) and which would then confirm
    /// nothing. So with replicas to wait for, a write whose slot has no
    /// master in the map is not sent: not applied, and safe to resend. The
    /// map is fetched before the service reports ready
    /// ([`ClusterStore::ping`]), so this is a slot without a master.
    pub(super) async fn on_slot<T, F, Fut>(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        call: Call,
        run: F,
    ) -> RedisResult<T>
    where
        F: Fn(Ran) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let first = match self.nodes.map(conn).await.and_then(|map| map.master_of(slot)) {
            Some(master) => Ran::On(master),
            None if call == Call::Write && self.wait.is_some() => return Err(no_master(slot)),
            None => Ran::OnSlot,
        };
        let follow_ask = call == Call::Write;
        let through_cluster = matches!(first, Ran::OnSlot);
        let err = match run(first).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let Some(redirect) = Redirect::first_in(&err).filter(|to| follow_ask || !to.ask) else {
            return Err(err);
        };
        let Ok(node) = self.nodes.node(&redirect.addr) else { return Err(err) };
        let next = if redirect.ask {
            Ran::Asking(node)
        } else {
            self.nodes.refresh(conn);
            if through_cluster {
                // redis-rs follows no redirect without retries.
                self.reconnect(generation);
            }
            Ran::On(node)
        };
        run(next).await
    }

    /// `pipe` (on `slot`) where [`ClusterStore::on_slot`] sends it: each
    /// command's reply, or the error of the pipeline as a whole.
    pub(super) async fn query_on_slot(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        pipe: &Pipeline,
    ) -> RedisResult<Replies> {
        self.on_slot(conn, generation, slot, Call::Read, |ran| ran.query(conn, pipe)).await
    }

    /// `pipe` (writes on `slot`: one command, a transaction or a script)
    /// where [`ClusterStore::on_slot`] sends it, its replies made `len`
    /// outcomes by `parse`, the writes among them confirmed by the slot
    /// master's replicas when waiting for them: by the `WAIT` in their own
    /// pipeline, and a write whose reply holds none (one that did not run
    /// whole is an error already) becomes unknown
    /// ([`crate::store::replication`]).
    pub(super) async fn write_on_slot(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        pipe: &Pipeline,
        len: usize,
        parse: impl FnOnce(Replies) -> Vec<Outcome>,
    ) -> Vec<Outcome> {
        let written = self.on_slot(conn, generation, slot, Call::Write, |ran| ran.write(conn, pipe)).await;
        let (mut outcomes, waited) = match written {
            Ok(Confirmed { each, wait }) => (parse(each), wait),
            Err(err) => (Outcome::all_failed(&err, len), None),
        };
        if waited.is_none()
            && has_writes(&outcomes)
            && let Some(wait) = self.wait
        {
            // Writes with no `WAIT` answer: nothing confirms them.
            wait.settle(&mut outcomes, Err(unexpected("no reply to WAIT")));
        }
        replication::settle(waited, &mut outcomes);
        outcomes
    }
}

/// What a call on one slot does: only read, or write ([`ClusterStore::on_slot`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Read,
    Write,
}

/// The refusal of a write that waits for replicas on a slot the map names
/// no master for: not sent, so not applied.
fn no_master(slot: u16) -> RedisError {
    let detail = format!(
        "the slot map names no master for slot {slot}; a write waiting for replicas goes to a known master only"
    );
    RedisError::from((ErrorKind::ClusterConnectionNotFound, "no master for the slot", detail))
}

/// Where a one-slot pipeline or script runs ([`ClusterStore::on_slot`]):
/// through the cluster connection (on the slot's master as redis-rs knows
/// it), or on one node over its own connection (after `ASKING` on the
/// node an `ASK` named).
pub(super) enum Ran {
    OnSlot,
    On(Arc<RedisStore>),
    Asking(Arc<RedisStore>),
}

impl Ran {
    /// Through the cluster connection, a redirect of any command is the
    /// error of the whole pipeline (redis-rs's doing); on a node's own
    /// connection, a pipeline that ignores errors has each command's on
    /// its own, so one whose every command was refused with a redirect
    /// (none ran) is made that refusal here, for [`ClusterStore::on_slot`]
    /// to follow.
    async fn query(self, conn: &ClusterConnection, pipe: &Pipeline) -> RedisResult<Replies> {
        match self {
            Ran::OnSlot => pipe.query_async(&mut conn.clone()).await,
            Ran::On(node) | Ran::Asking(node) => node.query::<Replies>(pipe).await.and_then(refused_whole),
        }
    }

    /// [`Ran::query`] for writes: on a node, `WAIT` goes in the same
    /// pipeline when waiting for replicas ([`crate::store::confirmed`]).
    async fn write(self, conn: &ClusterConnection, pipe: &Pipeline) -> RedisResult<Confirmed> {
        let asking = matches!(self, Ran::Asking(_));
        match self {
            Ran::OnSlot => Ok(Confirmed { each: pipe.query_async(&mut conn.clone()).await?, wait: None }),
            Ran::On(node) | Ran::Asking(node) => {
                let Confirmed { each, wait } = node.query_confirmed(pipe, asking).await?;
                Ok(Confirmed { each: refused_whole(each)?, wait })
            }
        }
    }
}

/// `replies`, or the redirect (`MOVED`, `ASK`) of every one of them.
fn refused_whole(mut replies: Replies) -> RedisResult<Replies> {
    let redirected = |reply: &RedisResult<Value>| reply.as_ref().err().and_then(Redirect::first_in).is_some();
    if replies.iter().all(redirected)
        && let Some(Err(refusal)) = replies.pop()
    {
        return Err(refusal);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::ServerErrorKind;
    use tally_proto::CounterKey;
    use tally_testkit::RedisCluster;

    use super::*;
    use crate::store::{Change, ReplicaWait, StoreError, StoreOptions, StoreTimeouts, slot_of_resource};

    fn store(cluster: &RedisCluster, wait_for: u32) -> ClusterStore {
        let timeouts = StoreTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(2) };
        let wait = ReplicaWait::from_settings(wait_for, 100, timeouts.response).expect("valid wait");
        let options = StoreOptions { timeouts, tls: Default::default(), wait };
        let url = cluster.url();
        let seeds = url.strip_prefix("redis+cluster://").expect("a cluster URL");
        ClusterStore::new(seeds, false, &options).expect("store")
    }

    /// A store whose slot map names no master.
    fn store_without_masters(cluster: &RedisCluster, wait_for: u32) -> ClusterStore {
        let store = store(cluster, wait_for);
        store.nodes.set_map(&[]).expect("a map naming no master");
        store
    }

    fn not_sent(outcomes: &[Outcome]) -> bool {
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Failed(StoreError::NotApplied(m)) if m.contains("names no master")))
    }

    /// A `WAIT` can only confirm a write in the write's own pipeline on a
    /// node's connection, so a write that waits for replicas is not sent
    /// through the cluster connection when the map names no master for its
    /// slot; one that does not wait is. (The shared cluster has no
    /// replicas: a write that went there and waited would be applied and
    /// unconfirmed.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_waits_for_replicas_goes_only_to_a_master_the_map_names() {
        let cluster = RedisCluster::shared();
        let resource = format!("no-master-{}", std::process::id());
        let key = CounterKey::new(&resource, "likes").expect("valid key");
        let master = cluster.master_of(slot_of_resource(&resource)).expect("a master");
        let hget = || master.cli(&["hget", &format!("tally:{{{resource}}}"), "likes"]);

        let keyed = store_without_masters(cluster, 1)
            .apply_ordered(&[(&key, Change::Add(1), Some("k1"))], Duration::from_secs(60))
            .await;
        assert!(not_sent(&keyed), "{keyed:?}");
        let plain = store_without_masters(cluster, 1).incr(&[(&key, 1)]).await;
        assert!(not_sent(&plain), "{plain:?}");
        assert_eq!(hget(), "", "nothing was written");

        let without_wait = store_without_masters(cluster, 0).incr(&[(&key, 1)]).await;
        assert_eq!(without_wait, vec![Outcome::Applied(1)], "through the cluster connection");
    }

    /// So the counter reports ready only once writes that wait can go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_replicas_to_wait_for_the_probe_fetches_the_slot_map() {
        let cluster = RedisCluster::shared();
        let waiting = store(cluster, 1);
        waiting.ping().await.expect("the cluster answers");
        assert!(waiting.nodes.has_map(), "fetched by the probe");
        let plain = store(cluster, 0);
        plain.ping().await.expect("the cluster answers");
        assert!(!plain.nodes.has_map(), "without waits, left to the first write");
    }

    fn redirect(kind: ServerErrorKind, to: &str) -> RedisResult<Value> {
        Err(RedisError::from((ErrorKind::Server(kind), "redirect", format!("1234 {to}"))))
    }

    #[test]
    fn a_pipeline_every_command_of_which_was_redirected_is_that_refusal() {
        let moved = || redirect(ServerErrorKind::Moved, "127.0.0.1:7002");
        let refusal = refused_whole(vec![moved(), moved()]).expect_err("none ran");
        let to = Redirect::first_in(&refusal).expect("a redirect");
        assert_eq!((to.addr.as_str(), to.ask), ("127.0.0.1:7002", false));
        let asked = refused_whole(vec![redirect(ServerErrorKind::Ask, "127.0.0.1:7003")]).expect_err("not run");
        assert!(Redirect::first_in(&asked).is_some_and(|to| to.ask));

        let ran = refused_whole(vec![Ok(Value::Int(3)), moved()]).expect("one ran: each reply stands");
        assert_eq!(ran.len(), 2);
        assert!(refused_whole(Vec::new()).expect("nothing sent").is_empty());
    }
}
