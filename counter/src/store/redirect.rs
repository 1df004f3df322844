//! Following a Redis Cluster redirect once: `MOVED` and `ASK` for plain
//! increments on the node pipelines ([`super::node_pipelines`]), for reads
//! ([`follow_reads`]) and for the other one-slot calls (`ASK` for writes
//! only; `super::cluster`'s `on_slot`).
//!
//! A command refused with `MOVED` (its slot has another master) or `ASK`
//! (its slot is being migrated and its key has already moved) did not run.
//! Sent once more, to the node the redirect names (after `ASKING` for
//! `ASK`), it runs there or is refused again: either way it runs at most
//! once, so following is as safe as the first send, as every Redis Cluster
//! client does. Without it, every increment of a moved resource was
//! reported not applied until its slot's migration ended and the slot map
//! was fetched again: a resharding was an outage of the slots it moved.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tally_proto::CounterKey;

use super::StoreError;
use super::node_pipelines::{NodePipelines, node_addr};

/// Where a refused command goes next.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Redirect {
    /// `host:port`, as the slot map names nodes (an IPv6 host in brackets).
    pub addr: String,
    /// `ASK`: this command only, after `ASKING`. `MOVED`: the slot's master
    /// is another node, so the slot map is stale.
    pub ask: bool,
}

impl Redirect {
    /// The redirect in a command's error, if it is one with a usable address.
    pub fn of(err: &RedisError) -> Option<Redirect> {
        let ask = matches!(err.kind(), ErrorKind::Server(ServerErrorKind::Ask));
        let (addr, _slot) = err.redirect_node()?;
        Some(Redirect { addr: node_address(addr)?, ask })
    }

    /// The redirect in `err`, or in the error of one of the commands of the
    /// pipeline or transaction `err` failed.
    pub fn first_in(err: &RedisError) -> Option<Redirect> {
        if let Some(redirect) = Redirect::of(err) {
            return Some(redirect);
        }
        let errors = err.clone().into_server_errors()?;
        errors.iter().find_map(|(_, e)| Redirect::of(&RedisError::from(e.clone())))
    }
}

/// Reads `keys[i]` for each index a redirect refused, once more on the
/// node the redirect names (after `ASKING` for `ASK`), the nodes
/// concurrently; `(index, value)` pairs, or the first failure (a second
/// redirect included: a read is answered whole or not at all).
pub async fn follow_reads(
    nodes: &NodePipelines,
    keys: &[CounterKey],
    redirected: BTreeMap<Redirect, Vec<usize>>,
) -> Result<Vec<(usize, i64)>, StoreError> {
    let reads = redirected.into_iter().map(|(to, indices)| async move {
        let node = nodes.node(&to.addr)?;
        let group: Vec<&CounterKey> = indices.iter().map(|&i| &keys[i]).collect();
        let values = node.get_here(&group, to.ask).await.map_err(|e| StoreError::from_redis(&e))?;
        if values.len() != indices.len() {
            return Err(StoreError::Unknown(format!("{} replies to {} reads", values.len(), indices.len())));
        }
        Ok::<_, StoreError>(indices.into_iter().zip(values).collect::<Vec<_>>())
    });
    Ok(try_join_all(reads).await?.into_iter().flatten().collect())
}

/// `host:port` from a redirect's address (`host:port`, the host possibly a
/// bare IPv6 address), named as the slot map names nodes ([`node_addr`]).
fn node_address(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    node_addr(host, port.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_addresses_name_nodes_as_the_slot_map_does() {
        assert_eq!(node_address("127.0.0.1:7001").as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(node_address("redis-2.redis:6379").as_deref(), Some("redis-2.redis:6379"));
        assert_eq!(node_address("::1:7003").as_deref(), Some("[::1]:7003"));
        assert_eq!(node_address(":7003"), None, "no endpoint announced");
        assert_eq!(node_address("?:7003"), None, "an unknown endpoint");
        assert_eq!(node_address("10.0.0.1:70000"), None);
        assert_eq!(node_address("10.0.0.1"), None);
    }
}
