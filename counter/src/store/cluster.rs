//! Redis Cluster. Plain increments, the hot path, go one pipeline per master
//! on connections of their own ([`super::node_pipelines`]). The rest is
//! split into pipelines that run concurrently, each on one slot (increments
//! and resets: on one resource, as one transaction, [`super::cluster_groups`]
//! says why), each on its slot's master over the same connections
//! ([`ClusterStore::on_slot`]), so that a `WAIT` after it reaches the node
//! that ran it. Only until the slot map is known, and for slots it names no
//! master for, do they go through redis-rs's cluster connection, which
//! routes them by its own map — and writes not at all when waiting for
//! replicas, since a `WAIT` could not go with them. With no library retries that connection
//! follows no redirect, so a `MOVED` is followed once here; and
//! [`ClusterStore::check`] fetches the map again and reconnects after
//! failures that may mean the topology changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;

use super::batch;
use super::cluster_groups::{all_or_nothing, by_resource, by_slot, scatter};
use super::confirmed::Replies;
use super::error::unexpected;
use super::node_pipelines::{NodePipelines, map_may_be_stale};
use super::ordered::{each_outcomes, each_pipeline};
use super::redis::{incr_pipeline, integer, outcomes};
use super::replication::ReplicaWait;
use super::{Cmd, KeyedCmd, Listing, Outcome, StoreError, StoreOptions, slot_of_resource};

mod on_slot;
mod reads;

pub struct ClusterStore {
    client: ClusterClient,
    /// The shared connection and its generation; `None` until first use.
    conn: Arc<Mutex<Option<(ClusterConnection, u64)>>>,
    /// Held while the first connection is made, so one caller makes it.
    connecting: tokio::sync::Mutex<()>,
    /// Set while a replacement connection is being made in the background.
    reconnecting: Arc<AtomicBool>,
    /// Limit on making a connection (the library's own can hang).
    connect_timeout: Duration,
    /// Plain increments, one pipeline per master.
    nodes: Arc<NodePipelines>,
    /// Replicas every write waits for ([`super::replication`]).
    wait: Option<ReplicaWait>,
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
            .tcp_settings(super::tcp_settings())
            .retries(0);
        if tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if !options.tls.is_empty() {
                builder = builder.certs(options.tls.certificates());
            }
        }
        let client = builder.build().map_err(|e| StoreError::config(format!("TALLY_STORE (Redis Cluster): {e}")))?;
        let (url_prefix, _) = split_seeds(seeds, tls);
        Ok(ClusterStore {
            client,
            nodes: Arc::new(NodePipelines::new(url_prefix, options.clone())),
            conn: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            reconnecting: Arc::default(),
            connect_timeout: options.timeouts.connect * 2,
            wait: options.wait,
        })
    }

    /// The shared connection and its generation, made on first use (so the
    /// counter can start before the cluster is reachable).
    async fn conn(&self) -> Result<(ClusterConnection, u64), StoreError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let conn = connect(&self.client, self.connect_timeout).await?;
        *lock(&self.conn) = Some((conn.clone(), 1));
        Ok((conn, 1))
    }

    /// After a call on connection `generation` failed short of an answer
    /// (timed out, connection lost, cluster down), makes a fresh connection
    /// in the background — at most one attempt a second — and swaps it in
    /// once it works; calls go on over the current one meanwhile, so a
    /// stalled node does not cost the healthy ones their connection. The
    /// library reconnects by itself in most cases, but a node killed and
    /// restarted on the same address was measured to leave its slots timing
    /// out for good; a fresh connection (with a fresh view of the slots)
    /// heals that. Refusals of a command keep the connection as it is, and
    /// so do writes its replicas did not confirm (the connection answered).
    /// The slot map is fetched again too: the master a call went to may be
    /// gone.
    fn check<'a>(
        &self,
        conn: &ClusterConnection,
        generation: u64,
        errors: impl IntoIterator<Item = Option<&'a StoreError>>,
    ) {
        let broken =
            errors.into_iter().flatten().any(|e| matches!(e, StoreError::Unknown(_) | StoreError::NotApplied(_)));
        if broken {
            self.nodes.refresh(conn);
            self.reconnect(generation);
        }
    }

    /// Replaces connection `generation` in the background (at most one
    /// attempt at a time, and one a second): [`ClusterStore::check`].
    fn reconnect(&self, generation: u64) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, slot, reconnecting, limit) =
            (self.client.clone(), self.conn.clone(), self.reconnecting.clone(), self.connect_timeout);
        tokio::spawn(async move {
            match connect(&client, limit).await {
                Ok(fresh) => {
                    let mut slot = lock(&slot);
                    if slot.as_ref().is_some_and(|(_, current)| *current == generation) {
                        tracing::info!(generation = generation + 1, "reconnected to the Redis Cluster");
                        *slot = Some((fresh, generation + 1));
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "reconnecting to the Redis Cluster failed; the current connection stays")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            reconnecting.store(false, Ordering::Release);
        });
    }

    fn current(&self) -> Option<(ClusterConnection, u64)> {
        lock(&self.conn).clone()
    }

    /// One pipeline per master ([`NodePipelines`]); through the cluster
    /// connection until the slot map is known, and for slots it has no
    /// master for (not when waiting for replicas: [`ClusterStore::on_slot`]).
    pub async fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<Outcome> {
        let (conn, generation) = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![Outcome::Failed(err); cmds.len()],
        };
        let Some(map) = self.nodes.map(&conn).await else {
            return self.incr_through(&conn, generation, cmds).await;
        };
        let routed = map.route(cmds);
        let groups: Vec<&[usize]> = routed.by_master.iter().map(|(_, indices)| indices.as_slice()).collect();
        let missing = Outcome::Failed(StoreError::Unknown("no reply".into()));
        let moved = AtomicBool::new(false);
        let mut outcomes = scatter(&groups, cmds.len(), missing, |n, indices| {
            let master = routed.by_master[n].0.clone();
            let group: Vec<Cmd<'_>> = indices.iter().map(|&i| cmds[i]).collect();
            let (nodes, moved) = (&self.nodes, &moved);
            async move { nodes.incr_on(&master, &group, moved).await }
        })
        .await;
        // Unmapped commands still hold the "no reply" placeholder here, so
        // they too ask for a new map: a slot without a master is news. So
        // does a `MOVED`, even when following it applied the command.
        if moved.load(Ordering::Relaxed) || map_may_be_stale(&outcomes) {
            self.nodes.refresh(&conn);
        }
        if !routed.unmapped.is_empty() {
            let unmapped: Vec<Cmd<'_>> = routed.unmapped.iter().map(|&i| cmds[i]).collect();
            let through = self.incr_through(&conn, generation, &unmapped).await;
            for (&i, outcome) in routed.unmapped.iter().zip(through) {
                outcomes[i] = outcome;
            }
        }
        outcomes
    }

    /// Plain increments through the cluster connection: one pipeline per
    /// resource ([`by_resource`]).
    async fn incr_through(&self, conn: &ClusterConnection, generation: u64, cmds: &[Cmd<'_>]) -> Vec<Outcome> {
        let groups = by_resource(cmds.iter().map(|(key, _)| *key));
        let groups: Vec<&[usize]> = groups.values().map(Vec::as_slice).collect();
        let missing = Outcome::Failed(StoreError::Unknown("no reply".into()));
        let outcomes = scatter(&groups, cmds.len(), missing, |_, indices| {
            let mut pipe = incr_pipeline(indices.iter().map(|&i| &cmds[i]), false);
            all_or_nothing(&mut pipe);
            let slot = slot_of_resource(cmds[indices[0]].0.resource_id());
            async move {
                let parse = |replies: Replies| {
                    outcomes(replies.into_iter().map(|r| r.and_then(integer)).collect(), indices.len())
                };
                self.write_on_slot(conn, generation, slot, &pipe, indices.len(), parse).await
            }
        })
        .await;
        self.check(conn, generation, failures(&outcomes));
        outcomes
    }

    pub async fn incr_batch_once(&self, batch_id: &str, cmds: &[Cmd<'_>], marker_ttl: Duration) -> Vec<Outcome> {
        let (conn, generation) = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![Outcome::Failed(err); cmds.len()],
        };
        let groups = by_slot(cmds.iter().map(|(key, _)| *key));
        let chunks: Vec<&[usize]> = groups.values().flat_map(|indices| batch::chunks(indices)).collect();
        let missing = Outcome::Failed(StoreError::Unknown("no reply".into()));
        // Chunk numbers follow the deterministic slot/chunk order, so a resend
        // of the same commands claims the same markers.
        let outcomes = scatter(&chunks, cmds.len(), missing, |chunk_no, chunk| {
            let chunk_cmds: Vec<&Cmd<'_>> = chunk.iter().map(|&i| &cmds[i]).collect();
            let mut pipe = redis::pipe();
            pipe.ignore_errors().add_command(batch::chunk_command(batch_id, chunk_no, &chunk_cmds, marker_ttl));
            let slot = slot_of_resource(cmds[chunk[0]].0.resource_id());
            let conn = &conn;
            async move {
                let parse = |replies: Replies| {
                    let reply = replies.into_iter().next().unwrap_or_else(|| Err(unexpected("no reply to a chunk")));
                    let applied = batch::chunk_outcomes(reply, chunk.len(), batch_id, chunk_no);
                    applied.unwrap_or_else(|err| Outcome::all_failed(&err, chunk.len()))
                };
                self.write_on_slot(conn, generation, slot, &pipe, chunk.len(), parse).await
            }
        })
        .await;
        self.check(&conn, generation, failures(&outcomes));
        outcomes
    }

    pub async fn apply_ordered(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<Outcome> {
        let (conn, generation) = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return vec![Outcome::Failed(err); cmds.len()],
        };
        let groups = by_resource(cmds.iter().map(|(key, _, _)| *key));
        let groups: Vec<&[usize]> = groups.values().map(Vec::as_slice).collect();
        let missing = Outcome::Failed(StoreError::Unknown("no reply".into()));
        let outcomes = scatter(&groups, cmds.len(), missing, |_, indices| {
            let group: Vec<&KeyedCmd<'_>> = indices.iter().map(|&i| &cmds[i]).collect();
            let mut pipe = each_pipeline(group.iter().copied(), retention);
            all_or_nothing(&mut pipe);
            let slot = slot_of_resource(cmds[indices[0]].0.resource_id());
            let conn = &conn;
            async move {
                let parse = |replies: Replies| each_outcomes(group.iter().copied(), replies, group.len());
                self.write_on_slot(conn, generation, slot, &pipe, group.len(), parse).await
            }
        })
        .await;
        self.check(&conn, generation, failures(&outcomes));
        outcomes
    }

    /// One script on the resource's slot (redis-rs routes it by its key).
    pub async fn get_resource(&self, resource_id: &str) -> Result<Listing, StoreError> {
        let (mut conn, generation) = self.conn().await?;
        let listing = super::resource::list(&mut conn, resource_id).await;
        self.check(&conn, generation, [listing.as_ref().err()]);
        listing
    }

    /// Also heals: a failed probe drops a broken connection (see
    /// [`ClusterStore::check`]), so the next probe or call reconnects.
    /// When waiting for replicas, also fetches the slot map if there is
    /// none yet, and fails until there is one: writes that wait are sent
    /// only to masters the map names ([`ClusterStore::on_slot`]), so the
    /// service is not ready before it has one.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (mut conn, generation) = self.conn().await?;
        let pong = redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| StoreError::from_redis(&e));
        self.check(&conn, generation, [pong.as_ref().err()]);
        pong?;
        if self.wait.is_some() && self.nodes.map(&conn).await.is_none() {
            return Err(StoreError::NotApplied("the Redis Cluster's slot map is not known yet".into()));
        }
        Ok(())
    }
}

/// The errors among `outcomes`, for [`ClusterStore::check`].
fn failures(outcomes: &[Outcome]) -> impl Iterator<Item = Option<&StoreError>> {
    outcomes.iter().map(|o| if let Outcome::Failed(e) = o { Some(e) } else { None })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new connection to the cluster, within `limit`.
async fn connect(client: &ClusterClient, limit: Duration) -> Result<ClusterConnection, StoreError> {
    tokio::time::timeout(limit, client.get_async_connection())
        .await
        .map_err(|_| StoreError::NotApplied("connecting to the cluster: timed out".into()))?
        // Masked: the library may repeat a node URL, password included, and
        // the reconnect task logs this.
        .map_err(|e| {
            StoreError::NotApplied(
                tally_runtime::redact::userinfo(&format!("connecting to the cluster: {e}")).into_owned(),
            )
        })
}

/// `[:password@]h1:p1,h2:p2` → the URL of any node without its address
/// (`redis://` or `rediss://`, and the credentials), and the hosts.
fn split_seeds(seeds: &str, tls: bool) -> (String, &str) {
    let scheme = if tls { "rediss" } else { "redis" };
    match seeds.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{scheme}://{auth}@"), hosts),
        None => (format!("{scheme}://"), seeds),
    }
}

/// `[:password@]h1:p1,h2:p2` → one `redis://` URL per seed node.
fn seed_urls(seeds: &str, tls: bool) -> Result<Vec<String>, StoreError> {
    let (prefix, hosts) = split_seeds(seeds, tls);
    let nodes: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("{prefix}{h}")).collect();
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
}
