//! Where counters live. Three backends behind one small interface:
//! in-memory (the embedded default), standalone Redis, and Redis Cluster.
//!
//! The interface is deliberately batch-shaped: the group committer hands a
//! store every increment collected during one round trip, and the store sends
//! them in as few round trips as its topology allows.
//!
//! Redis layout (docs/architecture.md, "Redis layout"): one hash per resource,
//! `tally:{<resource_id>}`, with one field per counter type. The braces are a
//! Redis Cluster hash tag, so every counter of a resource lives in one slot
//! and a batch touching one resource is a single-slot pipeline.

pub mod batch;
mod cluster;
mod cluster_groups;
mod confirmed;
mod error;
mod memory;
mod node_pipelines;
mod ordered;
mod redirect;
mod redis;
mod replication;
mod resource;
mod slot;

use std::sync::Arc;
use std::time::Duration;

use tally_proto::CounterKey;

pub use error::StoreError;
pub use replication::ReplicaWait;
pub use slot::slot_of_resource;

/// One increment command for a store: add the delta to the counter.
pub type Cmd<'a> = (&'a CounterKey, i64);

/// What happened to one write: the outcome of a store command, and of an
/// operation submitted to the committer. One type for every path, so a
/// result moves from the store to the caller without translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now; the counter's value right after it (right before it
    /// for a [`Change::Reset`]; 0 for a write-behind chunk, whose script
    /// returns no values).
    Applied(i64),
    /// Its idempotency key was applied before, within the retention
    /// window: nothing applied now; the value the first application returned.
    Replayed(i64),
    /// Not applied: the counter would leave the i64 range.
    Overflow,
    /// Not applied, or not known to be (see [`StoreError`]); a command the
    /// store refused (a hash field that is not an integer) is
    /// [`StoreError::Rejected`].
    Failed(StoreError),
}

impl Outcome {
    /// `len` outcomes of a pipeline or script that failed as a whole with `err`.
    pub fn all_failed(err: &::redis::RedisError, len: usize) -> Vec<Outcome> {
        vec![Outcome::Failed(StoreError::from_redis(err)); len]
    }
}

/// What one command of the ordered path does to its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add the delta; the outcome carries the value right after.
    Add(i64),
    /// Set to 0 (the field is deleted: a counter never written reads 0);
    /// the outcome carries the value right before.
    Reset,
}

/// One command of an ordered batch: (counter, change, idempotency key).
pub type KeyedCmd<'a> = (&'a CounterKey, Change, Option<&'a str>);

/// The Redis key remembering an idempotency key of one counter; it shares
/// the resource's hash tag, so it lives in the counter's cluster slot.
/// Resets remember their keys apart from increments (a client reusing one
/// key for both gets each applied once, not one replayed as the other).
pub fn idempotency_marker(key: &CounterKey, change: Change, idempotency_key: &str) -> String {
    let kind = match change {
        Change::Add(_) => "idem",
        Change::Reset => "idem-reset",
    };
    format!("tally:{kind}:{{{}}}:{}:{idempotency_key}", key.resource_id(), key.counter_type())
}

/// Every counter of one resource, as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// `(counter type, value)`, sorted by counter type.
    Counters(Vec<(String, i64)>),
    /// The resource holds this many counters, more than
    /// [`tally_proto::validate::limits::MAX_RESOURCE_COUNTERS`]: none are returned.
    TooMany(usize),
}

/// Connection settings shared by the Redis backends.
#[derive(Debug, Clone, Copy)]
pub struct StoreTimeouts {
    /// Limit on establishing one connection.
    pub connect: Duration,
    /// Limit on waiting for one answer; a hung Redis fails requests after this.
    pub response: Duration,
}

/// How to reach the store: limits, and TLS material for `rediss://`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub timeouts: StoreTimeouts,
    pub tls: StoreTls,
    /// Replicas every write waits for (`TALLY_STORE_WAIT_REPLICAS`); `None`:
    /// acknowledged once the master applied it ([`ReplicaWait`]).
    pub wait: Option<ReplicaWait>,
}

/// The socket settings of every connection to Redis: `TCP_NODELAY` on.
/// redis-rs 1.x leaves Nagle's algorithm on unless told otherwise (Redis
/// turns it off on its side, as Jedis, Lettuce and go-redis do on theirs).
/// With it on, a pipeline written while an earlier one is unacknowledged (a
/// second flush on the connection, or the tail of one too large for a
/// single write) waits for that acknowledgement, which Redis may hold back
/// (delayed ACK, up to 40 ms on Linux) while it waits for the rest.
fn tcp_settings() -> ::redis::io::tcp::TcpSettings {
    ::redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// TLS material for `rediss://` beyond the system's root certificates, as
/// read from `TALLY_STORE_TLS_*` (PEM).
#[derive(Clone, Default)]
pub struct StoreTls {
    /// Certificate authority the server's certificate must chain to.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for StoreTls {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTls").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl StoreTls {
    pub(super) fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    pub(super) fn certificates(&self) -> ::redis::TlsCertificates {
        ::redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| ::redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: self.ca.clone(),
        }
    }
}

/// A configured store. An enum rather than a trait object: the set is closed
/// and the hot path stays free of boxing.
pub enum Store {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
    // Boxed: the cluster client is large and the enum is built once.
    Cluster(Box<cluster::ClusterStore>),
}

/// The Redis key of the hash holding every counter of `resource_id`:
/// `tally:{resource_id}` (the braces make it the Cluster hash tag).
pub fn hash_key(resource_id: &str) -> HashKey<'_> {
    HashKey(resource_id)
}

/// A hash key, written straight into the command being built instead of
/// being formatted into a string of its own first (one allocation less per
/// command).
#[derive(Debug, Clone, Copy)]
pub struct HashKey<'a>(&'a str);

impl std::fmt::Display for HashKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tally:{{{}}}", self.0)
    }
}

impl ::redis::ToRedisArgs for HashKey<'_> {
    fn write_redis_args<W: ?Sized + ::redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = arg
            .write_all(b"tally:{")
            .and_then(|()| arg.write_all(self.0.as_bytes()))
            .and_then(|()| arg.write_all(b"}"));
    }
}

impl Store {
    /// The store a worker thread uses: its own connections to the same
    /// Redis (so its requests never hop to another thread's connection
    /// task), or this very store when it is the in-memory one, whose counters
    /// live in this process and must be shared.
    pub fn for_worker(self: &Arc<Self>, url: &str, options: &StoreOptions) -> Result<Arc<Store>, StoreError> {
        match **self {
            Store::Memory(_) => Ok(self.clone()),
            Store::Redis(_) | Store::Cluster(_) => Store::from_url(url, options).map(Arc::new),
        }
    }

    /// Builds the store named by `TALLY_STORE`: `memory`, `redis://…`,
    /// `rediss://…` (TLS), `redis+cluster://h1:p1,h2:p2,…` or
    /// `rediss+cluster://…` (a Cluster over TLS). Connections
    /// are made lazily, so the counter starts (and reports not-ready) while
    /// Redis is still down.
    pub fn from_url(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let tls_url = url.starts_with("rediss://") || url.starts_with("rediss+cluster://");
        if !options.tls.is_empty() && !tls_url {
            return Err(StoreError::config(
                "TALLY_STORE_TLS_CA_FILE / TALLY_STORE_TLS_CERT_FILE are set, but TALLY_STORE is not a rediss:// \
                 or rediss+cluster:// URL"
                    .to_string(),
            ));
        }
        if url == "memory" {
            if options.wait.is_some() {
                return Err(StoreError::config(
                    "TALLY_STORE_WAIT_REPLICAS is set, but the in-memory store has no replicas".to_string(),
                ));
            }
            Ok(Store::Memory(memory::MemoryStore::default()))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(Store::Redis(redis::RedisStore::new(url, options)?))
        } else if let Some(seeds) = url.strip_prefix("redis+cluster://") {
            Ok(Store::Cluster(Box::new(cluster::ClusterStore::new(seeds, false, options)?)))
        } else if let Some(seeds) = url.strip_prefix("rediss+cluster://") {
            Ok(Store::Cluster(Box::new(cluster::ClusterStore::new(seeds, true, options)?)))
        } else {
            Err(StoreError::config(format!(
                "unsupported store {url:?}: use `memory`, `redis://host:port[/db]`, `rediss://host:port[/db]`, \
                 `redis+cluster://h1:p1,h2:p2` or `rediss+cluster://h1:p1,h2:p2`"
            )))
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
            Store::Cluster(_) => "redis-cluster",
        }
    }

    /// Applies `cmds` (key, delta) and returns one outcome per command, in
    /// order. Commands on the same key are applied in the given order.
    pub async fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<Outcome> {
        match self {
            Store::Memory(s) => s.incr(cmds),
            Store::Redis(s) => s.incr(cmds).await,
            Store::Cluster(s) => s.incr(cmds).await,
        }
    }

    /// Applies `cmds` at most once for `batch_id`, however often it is called
    /// with the same id and commands within `marker_ttl` (see [`batch`]).
    /// One outcome per command.
    pub async fn incr_batch_once(&self, batch_id: &str, cmds: &[Cmd<'_>], marker_ttl: Duration) -> Vec<Outcome> {
        match self {
            // The in-memory store cannot fail ambiguously: no markers needed.
            // Chunks report no values, whatever the store (see `Outcome`).
            Store::Memory(s) => s
                .incr(cmds)
                .into_iter()
                .map(|o| if let Outcome::Applied(_) = o { Outcome::Applied(0) } else { o })
                .collect(),
            Store::Redis(s) => s.incr_batch_once(batch_id, cmds, marker_ttl).await,
            Store::Cluster(s) => s.incr_batch_once(batch_id, cmds, marker_ttl).await,
        }
    }

    /// Applies each command (increment or reset) on its own, in order (no
    /// summing). A command with an idempotency key is skipped when that key was applied to the
    /// same counter within `retention`; check and apply are one atomic step
    /// in the store, so concurrent duplicates (from any number of gateways)
    /// count once. One outcome per command, in order.
    pub async fn apply_ordered(&self, cmds: &[KeyedCmd<'_>], retention: Duration) -> Vec<Outcome> {
        match self {
            Store::Memory(s) => s.apply_ordered(cmds, retention),
            Store::Redis(s) => s.apply_ordered(cmds, retention).await,
            Store::Cluster(s) => s.apply_ordered(cmds, retention).await,
        }
    }

    /// Every counter of `resource_id` (one read of its hash), or how many
    /// it holds when that is more than the listing limit.
    pub async fn get_resource(&self, resource_id: &str) -> Result<Listing, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.get_resource(resource_id)),
            Store::Redis(s) => s.get_resource(resource_id).await,
            Store::Cluster(s) => s.get_resource(resource_id).await,
        }
    }

    /// Reads `keys`; a counter never written reads 0.
    pub async fn get(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.get(keys)),
            Store::Redis(s) => s.get(keys).await,
            Store::Cluster(s) => s.get(keys).await,
        }
    }

    /// Checks that the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(s) => s.ping().await,
            Store::Cluster(s) => s.ping().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use ::redis::ToRedisArgs;

    use super::hash_key;

    #[test]
    fn a_hash_key_is_one_argument_with_the_resource_as_hash_tag() {
        let key = hash_key("post:42");
        assert_eq!(key.to_redis_args(), vec![b"tally:{post:42}".to_vec()]);
        assert_eq!(key.to_string(), "tally:{post:42}");
    }
}
