//! Calls on one Redis Cluster slot (a resource's transaction, a write-behind
//! chunk, a slot's reads): where each runs, the `MOVED` it follows, and the
//! `WAIT` that confirms it on the node that ran it.

use std::sync::Arc;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, RedisResult, Value};

use super::ClusterStore;
use crate::store::Outcome;
use crate::store::confirmed::{Confirmed, Replies};
use crate::store::error::unexpected;
use crate::store::redirect::Redirect;
use crate::store::redis::{RedisStore, integer};
use crate::store::replication::{self, Waited, has_writes};

impl ClusterStore {
    /// Runs `run` for `slot`: on the slot's master as the slot map names it,
    /// over that master's own connection, or through the cluster connection
    /// while there is no map (or it names no master for the slot); and when
    /// refused with `MOVED` (it did not run: the slot has another master),
    /// once more on the node the redirect names ([`Redirect::first_in`]),
    /// after which the slot map is fetched again. With `follow_ask`, one
    /// refused with `ASK` (its slot is being migrated and its key has
    /// moved) goes once more too, after `ASKING`, to the node importing the
    /// slot. Also says where it ran last, so a `WAIT` for it goes to that
    /// node ([`ClusterStore::confirm`]).
    ///
    /// What is sent here runs whole or not at all (one command, a
    /// transaction, a script) or only reads, so a redirect in the error of
    /// any of its commands means none ran, and following it never applies
    /// a write twice. Not an `ASK` for reads: there some keys of the slot
    /// may still be where the read was refused ([`ClusterStore::get`]
    /// reads such a slot key by key).
    pub(super) async fn on_slot<T, F, Fut>(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        follow_ask: bool,
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
        let Some(redirect) = Redirect::first_in(&err).filter(|to| follow_ask || !to.ask) else {
            return (Err(err), first);
        };
        let Ok(node) = self.nodes.node(&redirect.addr) else { return (Err(err), first) };
        let next = if redirect.ask {
            Ran::Asking(node)
        } else {
            self.nodes.refresh(conn);
            if matches!(first, Ran::OnSlot) {
                // redis-rs follows no redirect without retries.
                self.reconnect(generation);
            }
            Ran::On(node)
        };
        (run(next.clone()).await, next)
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
        self.on_slot(conn, generation, slot, false, |ran| ran.query(conn, pipe)).await
    }

    /// `pipe` (writes on `slot`: one command, a transaction or a script)
    /// where [`ClusterStore::on_slot`] sends it, its replies made `len`
    /// outcomes by `parse`, the writes among them confirmed by the slot
    /// master's replicas when waiting for them ([`ClusterStore::confirm`]).
    pub(super) async fn write_on_slot(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        pipe: &Pipeline,
        len: usize,
        parse: impl FnOnce(Replies) -> Vec<Outcome>,
    ) -> Vec<Outcome> {
        let (written, ran) = self.on_slot(conn, generation, slot, true, |ran| ran.write(conn, pipe)).await;
        let (mut outcomes, waited) = match written {
            Ok(Confirmed { each, wait }) => (parse(each), wait),
            Err(err) => (Outcome::all_failed(&err, len), None),
        };
        self.confirm(conn, slot, ran, waited, &mut outcomes).await;
        outcomes
    }

    /// With replicas to wait for, settles the writes in `outcomes` with
    /// the `WAIT` that went in their own pipeline on a node's connection
    /// (`waited`), or, through the cluster connection, with one routed to
    /// the slot's master explicitly (redis-rs would send a keyless `WAIT` to
    /// every master): writes too few replicas confirmed become unknown
    /// ([`crate::store::replication`]).
    async fn confirm(&self, conn: &ClusterConnection, slot: u16, ran: Ran, waited: Waited, outcomes: &mut [Outcome]) {
        if waited.is_some() {
            return replication::settle(waited, outcomes);
        }
        let Some(wait) = self.wait.filter(|_| has_writes(outcomes)) else { return };
        let reply = match ran {
            // Writes with no `WAIT` answer on a node: nothing confirms them.
            Ran::On(_) | Ran::Asking(_) => Err(unexpected("no reply to WAIT")),
            Ran::OnSlot => {
                let master = Route::new(slot, SlotAddr::Master);
                let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(master));
                conn.clone().route_command(wait.command(), node).await.and_then(integer)
            }
        };
        wait.settle(outcomes, reply);
    }
}

/// Where a one-slot pipeline or script runs ([`ClusterStore::on_slot`]):
/// through the cluster connection (on the slot's master as redis-rs knows
/// it), or on one node over its own connection (after `ASKING` on the
/// node an `ASK` named).
#[derive(Clone)]
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
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

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
