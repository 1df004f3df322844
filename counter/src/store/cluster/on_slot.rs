//! Calls on one Redis Cluster slot (a resource's transaction, a write-behind
//! chunk, a slot's reads): where each runs, the `MOVED` it follows, and the
//! `WAIT` that confirms it on the node that ran it.

use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, RedisResult, Value};

use super::ClusterStore;
use crate::store::batch;
use crate::store::redirect::moved_to;
use crate::store::redis::{RedisStore, integer};
use crate::store::replication::has_writes;
use crate::store::{Cmd, Outcome};

impl ClusterStore {
    /// Runs `run` for `slot`: on the slot's master as the slot map names it,
    /// over that master's own connection, or through the cluster connection
    /// while there is no map (or it names no master for the slot); and when
    /// refused with `MOVED` (it did not run: the slot has another master),
    /// once more on the node the redirect names ([`moved_to`]), after which
    /// the slot map is fetched again. Also says where it ran last, so a
    /// `WAIT` for it goes to that node ([`ClusterStore::confirm`]).
    ///
    /// What is sent here runs whole or not at all (one command, a
    /// transaction, a script) or only reads, so a `MOVED` in the error of
    /// any of its commands means none ran, and following it never applies
    /// a write twice.
    pub(super) async fn on_slot<T, F, Fut>(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        run: F,
    ) -> (RedisResult<T>, Ran)
    where
        F: Fn(Ran) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let first = match self.nodes.map(conn).await.and_then(|map| map.master_of(slot)) {
            Some(master) => Ran::On(master),
            None => Ran::OnSlot,
        };
        let err = match run(first.clone()).await {
            Ok(value) => return (Ok(value), first),
            Err(err) => err,
        };
        let Some(node) = moved_to(&err).and_then(|addr| self.nodes.node(&addr).ok()) else {
            return (Err(err), first);
        };
        self.nodes.refresh(conn);
        if matches!(first, Ran::OnSlot) {
            // redis-rs follows no redirect without retries.
            self.reconnect(generation);
        }
        let node = Ran::On(node);
        (run(node.clone()).await, node)
    }

    /// `pipe` (on `slot`) where [`ClusterStore::on_slot`] sends it: each
    /// command's reply, or the error of the pipeline as a whole.
    pub(super) async fn query_on_slot(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        pipe: &Pipeline,
    ) -> (RedisResult<Replies>, Ran) {
        self.on_slot(conn, generation, slot, |ran| ran.query(conn, pipe)).await
    }

    /// With replicas to wait for, waits on the connection that ran a
    /// pipeline on `slot` (`ran`) for the replicas of that node, and marks
    /// the writes in `outcomes` unknown when they do not confirm them
    /// ([`crate::store::replication`]). Through the cluster connection, `WAIT` is
    /// routed to the slot's master explicitly: redis-rs would send a
    /// keyless `WAIT` to every master.
    pub(super) async fn confirm(&self, conn: &ClusterConnection, slot: u16, ran: Ran, outcomes: &mut [Outcome]) {
        let Some(wait) = self.wait.filter(|_| has_writes(outcomes)) else { return };
        let node = match ran {
            Ran::On(node) => return node.confirm(outcomes).await,
            Ran::OnSlot => {
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)))
            }
        };
        let reply = conn.clone().route_command(wait.command(), node).await;
        let reply = reply.and_then(integer);
        wait.settle(outcomes, reply);
    }
}

/// Where a one-slot pipeline or script runs ([`ClusterStore::on_slot`]):
/// through the cluster connection (on the slot's master as redis-rs knows
/// it), or on one node over its own connection.
#[derive(Clone)]
pub(super) enum Ran {
    OnSlot,
    On(Arc<RedisStore>),
}

/// A one-slot pipeline's replies, each as Redis gave it.
type Replies = Vec<RedisResult<Value>>;

impl Ran {
    /// Through the cluster connection, a redirect of any command is the
    /// error of the whole pipeline (redis-rs's doing); on a node's own
    /// connection, a pipeline that ignores errors has each command's on
    /// its own, so one whose every command was refused with `MOVED` (none
    /// ran) is made that refusal here, for [`ClusterStore::on_slot`] to
    /// follow.
    async fn query(self, conn: &ClusterConnection, pipe: &Pipeline) -> RedisResult<Replies> {
        match self {
            Ran::OnSlot => pipe.query_async(&mut conn.clone()).await,
            Ran::On(node) => node.query::<Replies>(pipe).await.and_then(refused_whole),
        }
    }

    pub(super) async fn apply_chunk(
        self,
        conn: &ClusterConnection,
        batch_id: &str,
        chunk_no: usize,
        cmds: &[&Cmd<'_>],
        marker_ttl: Duration,
    ) -> RedisResult<Vec<Outcome>> {
        match self {
            Ran::OnSlot => batch::apply_chunk(&mut conn.clone(), batch_id, chunk_no, cmds, marker_ttl).await,
            Ran::On(node) => node.apply_chunk(batch_id, chunk_no, cmds, marker_ttl).await,
        }
    }
}

/// `replies`, or the `MOVED` refusal of every one of them.
fn refused_whole(mut replies: Replies) -> RedisResult<Replies> {
    let moved = |reply: &RedisResult<Value>| reply.as_ref().err().and_then(moved_to).is_some();
    if replies.iter().all(moved)
        && let Some(Err(refusal)) = replies.pop()
    {
        return Err(refusal);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    fn redirect(kind: ServerErrorKind, to: &str) -> RedisResult<Value> {
        Err(RedisError::from((ErrorKind::Server(kind), "redirect", format!("1234 {to}"))))
    }

    #[test]
    fn a_pipeline_every_command_of_which_moved_is_that_refusal() {
        let moved = || redirect(ServerErrorKind::Moved, "127.0.0.1:7002");
        let refusal = refused_whole(vec![moved(), moved()]).expect_err("none ran");
        assert_eq!(moved_to(&refusal).as_deref(), Some("127.0.0.1:7002"));

        let ran = refused_whole(vec![Ok(Value::Int(3)), moved()]).expect("one ran: each reply stands");
        assert_eq!(ran.len(), 2);
        let asked = refused_whole(vec![redirect(ServerErrorKind::Ask, "127.0.0.1:7002")]).expect("not a MOVED");
        assert_eq!(asked.len(), 1, "an ASK is followed per key, not here");
        assert!(refused_whole(Vec::new()).expect("nothing sent").is_empty());
    }
}
