//! Redis Cluster. A batch is split by slot into single-slot pipelines that run
//! concurrently; redis-rs routes each to the slot's master and follows
//! topology changes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Value};
use tally_proto::CounterKey;
use tokio::sync::OnceCell;

use super::batch::{self, BatchOutcome};
use super::ordered::{each_outcomes, each_pipeline};
use super::redis::{get_pipeline, incr_pipeline, outcomes};
use super::slot::slot_of_resource;
use super::{Cmd, IdempotentOutcome, IncrOutcome, KeyedCmd, Listing, StoreError, StoreOptions};

pub struct ClusterStore {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl ClusterStore {
    /// `seeds` is `[:password@]h1:p1,h2:p2,…` (the part after
    /// `redis+cluster://`). With `tls`, every node (the seeds and those the
    /// cluster names) is reached over TLS, verified against the system's
    /// roots or `TALLY_STORE_TLS_CA_FILE`, with the client certificate if set.
    pub fn new(seeds: &str, tls: bool, options: &StoreOptions) -> Result<ClusterStore, StoreError> {
        let nodes = seed_urls(seeds, tls)?;
        // No library-level retries: a resend after a broken connection could
        // apply an increment twice. Failures are classified and surfaced instead.
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(options.timeouts.connect)
            .response_timeout(options.timeouts.response)
            .retries(0);
        if tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if !options.tls.is_empty() {
                builder = builder.certs(options.tls.certificates());
            }
        }
        let client = builder.build().map_err(|e| StoreError::config(format!("TALLY_STORE (Redis Cluster): {e}")))?;
        Ok(ClusterStore { client, conn: OnceCell::new() })
    }

    /// The shared connection, created on first use so the counter can start
    /// before the cluster is reachable.
    async fn conn(&self) -> Result<ClusterConnection, StoreError> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
            .map_err(|e| StoreError::NotApplied(format!("connecting to the cluster: {e}")))
    }

    pub async fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<IncrOutcome> {
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![IncrOutcome::Failed(err); cmds.len()],
        };
        let groups = by_slot(cmds.iter().map(|(key, _)| *key));
        let groups: Vec<&[usize]> = groups.values().map(Vec::as_slice).collect();
        let missing = IncrOutcome::Failed(StoreError::Unknown("no reply".into()));
        scatter(&groups, cmds.len(), missing, |_, indices| {
            let mut conn = conn.clone();
            let pipe = incr_pipeline(indices.iter().map(|&i| &cmds[i]));
            async move {
                match pipe.query_async::<Vec<RedisResult<i64>>>(&mut conn).await {
                    Ok(replies) => outcomes(replies, indices.len()),
                    Err(err) => vec![IncrOutcome::Failed(StoreError::from_redis(&err)); indices.len()],
                }
            }
        })
        .await
    }

    pub async fn incr_batch_once(&self, batch_id: &str, cmds: &[Cmd<'_>], marker_ttl: Duration) -> Vec<BatchOutcome> {
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![BatchOutcome::Failed(err); cmds.len()],
        };
        let groups = by_slot(cmds.iter().map(|(key, _)| *key));
        let chunks: Vec<&[usize]> = groups.values().flat_map(|indices| batch::chunks(indices)).collect();
        let missing = BatchOutcome::Failed(StoreError::Unknown("no reply".into()));
        // Chunk numbers follow the deterministic slot/chunk order, so a resend
        // of the same commands claims the same markers.
        scatter(&chunks, cmds.len(), missing, |chunk_no, chunk| {
            let mut conn = conn.clone();
            let chunk_cmds: Vec<&Cmd<'_>> = chunk.iter().map(|&i| &cmds[i]).collect();
            async move { batch::apply_chunk(&mut conn, batch_id, chunk_no, &chunk_cmds, marker_ttl).await }
        })
        .await
    }

    pub async fn apply_ordered(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<IdempotentOutcome> {
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![IdempotentOutcome::Failed(err); cmds.len()],
        };
        let groups = by_slot(cmds.iter().map(|(key, _, _)| *key));
        let groups: Vec<&[usize]> = groups.values().map(Vec::as_slice).collect();
        let missing = IdempotentOutcome::Failed(StoreError::Unknown("no reply".into()));
        scatter(&groups, cmds.len(), missing, |_, indices| {
            let mut conn = conn.clone();
            let pipe = each_pipeline(indices.iter().map(|&i| &cmds[i]), retention);
            async move {
                match pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await {
                    Ok(replies) => each_outcomes(indices.iter().map(|&i| &cmds[i]), replies, indices.len()),
                    Err(err) => vec![IdempotentOutcome::Failed(StoreError::from_redis(&err)); indices.len()],
                }
            }
        })
        .await
    }

    /// One script on the resource's slot (redis-rs routes it by its key).
    pub async fn get_resource(&self, resource_id: &str) -> Result<Listing, StoreError> {
        let mut conn = self.conn().await?;
        super::resource::list(&mut conn, resource_id).await
    }

    pub async fn get(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn().await?;
        let groups = by_slot(keys.iter());
        let replies = join_all(groups.values().map(|indices| {
            let mut conn = conn.clone();
            let pipe = get_pipeline(indices.iter().map(|&i| &keys[i]));
            async move { pipe.query_async::<Vec<Option<i64>>>(&mut conn).await }
        }))
        .await;
        let mut result = vec![0; keys.len()];
        for (indices, group) in groups.values().zip(replies) {
            let group = group.map_err(|e| StoreError::from_redis(&e))?;
            for (&i, value) in indices.iter().zip(group) {
                result[i] = value.unwrap_or(0);
            }
        }
        Ok(result)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| StoreError::from_redis(&e))
    }
}

/// Runs `run(group number, command indices)` for every group concurrently
/// and puts each group's per-command results back in command order
/// (`missing` for any a group failed to report).
async fn scatter<'g, T, F, Fut>(groups: &[&'g [usize]], len: usize, missing: T, run: F) -> Vec<T>
where
    T: Clone,
    F: Fn(usize, &'g [usize]) -> Fut,
    Fut: std::future::Future<Output = Vec<T>>,
{
    let replies = join_all(groups.iter().enumerate().map(|(n, &group)| run(n, group))).await;
    let mut result = vec![missing; len];
    for (group, outcomes) in groups.iter().zip(replies) {
        for (&i, outcome) in group.iter().zip(outcomes) {
            result[i] = outcome;
        }
    }
    result
}

/// Indices of `keys` grouped by cluster slot, order kept within each slot
/// (so commands on one key still apply in order).
fn by_slot<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> BTreeMap<u16, Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys.enumerate() {
        groups.entry(slot_of_resource(key.resource_id())).or_default().push(i);
    }
    groups
}

/// `[:password@]h1:p1,h2:p2` → one `redis://` URL per seed node.
fn seed_urls(seeds: &str, tls: bool) -> Result<Vec<String>, StoreError> {
    let scheme = if tls { "rediss" } else { "redis" };
    let (auth, hosts) = match seeds.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), seeds),
    };
    let nodes: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{auth}{h}")).collect();
    if nodes.is_empty() {
        return Err(StoreError::Config("redis+cluster:// needs at least one host:port".into()));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_list_with_and_without_password() {
        assert_eq!(seed_urls("a:1, b:2", false).unwrap(), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(seed_urls(":s3cret@a:1,b:2", false).unwrap(), vec!["redis://:s3cret@a:1", "redis://:s3cret@b:2"]);
        assert_eq!(seed_urls("a:1", true).unwrap(), vec!["rediss://a:1"]);
        assert!(seed_urls(" , ", false).is_err());
    }

    #[test]
    fn grouping_keeps_order_within_a_slot() {
        let k = |r: &str| CounterKey::new(r, "likes").unwrap();
        let keys = [k("foo"), k("bar"), k("foo"), k("foo")];
        let groups = by_slot(keys.iter());
        assert_eq!(groups[&12182], vec![0, 2, 3]);
        assert_eq!(groups[&5061], vec![1]);
    }
}
