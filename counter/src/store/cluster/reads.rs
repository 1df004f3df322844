//! Reads on a Redis Cluster: one pipeline per slot, on its master
//! ([`ClusterStore::on_slot`]); a slot half-moved by a resharding read key by key, each key
//! where it is.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Value};
use tally_proto::CounterKey;

use super::ClusterStore;
use crate::store::StoreError;
use crate::store::cluster_groups::by_slot;
use crate::store::error::unexpected;
use crate::store::redirect::{Redirect, follow_reads};
use crate::store::redis::get_pipeline;

impl ClusterStore {
    /// One pipeline per slot. A slot half-moved by a resharding (`ASK`:
    /// some of its keys are on the node importing it) is read key by key,
    /// and a key refused with a redirect is read once more on the node it
    /// names ([`follow_reads`]), so each key is read where it is.
    pub async fn get(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let (conn, generation) = self.conn().await?;
        let groups = by_slot(keys.iter());
        let replies = join_all(groups.iter().map(|(&slot, indices)| {
            let pipe = get_pipeline(indices.iter().map(|&i| &keys[i]), false);
            let conn = &conn;
            async move {
                match self.query_on_slot(conn, generation, slot, &pipe).await {
                    Ok(values) => Ok(values.into_iter().map(count).collect()),
                    Err(err) if Redirect::first_in(&err).is_some_and(|to| to.ask) => {
                        Ok(self.read_each(conn, generation, slot, indices.iter().map(|&i| &keys[i])).await)
                    }
                    Err(err) => Err(err),
                }
            }
        }))
        .await;
        let mut result = vec![0; keys.len()];
        let mut redirected: BTreeMap<Redirect, Vec<usize>> = BTreeMap::new();
        for (indices, group) in groups.values().zip(replies) {
            let group = group.map_err(|e| StoreError::from_redis(&e));
            self.check(&conn, generation, [group.as_ref().err()]);
            let group = group?;
            if group.len() != indices.len() {
                return Err(StoreError::Unknown(format!("{} replies to {} reads", group.len(), indices.len())));
            }
            for (&i, reply) in indices.iter().zip(group) {
                match reply {
                    Ok(value) => result[i] = value.unwrap_or(0),
                    Err(err) => match Redirect::first_in(&err) {
                        Some(to) => redirected.entry(to).or_default().push(i),
                        None => {
                            let err = StoreError::from_redis(&err);
                            self.check(&conn, generation, [Some(&err)]);
                            return Err(err);
                        }
                    },
                }
            }
        }
        if redirected.keys().any(|to| !to.ask) {
            self.nodes.refresh(&conn);
            self.reconnect(generation);
        }
        for (i, value) in follow_reads(&self.nodes, keys, redirected).await? {
            result[i] = value;
        }
        Ok(result)
    }

    /// Reads `keys` (of one slot) one pipeline each, concurrently: each
    /// key's reply, or its refusal, on its own.
    async fn read_each<'k>(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        slot: u16,
        keys: impl Iterator<Item = &'k CounterKey>,
    ) -> Vec<RedisResult<Option<i64>>> {
        join_all(keys.map(|key| async move {
            let pipe = get_pipeline(std::iter::once(key), false);
            let values = self.query_on_slot(conn, generation, slot, &pipe).await;
            let value = values?.into_iter().next().map(count);
            value.unwrap_or_else(|| Err(unexpected("no reply to a read")))
        }))
        .await
    }
}

/// A read's reply: the counter, `None` where it was never written.
fn count(reply: RedisResult<Value>) -> RedisResult<Option<i64>> {
    reply.and_then(|value| Ok(redis::from_redis_value(value)?))
}
