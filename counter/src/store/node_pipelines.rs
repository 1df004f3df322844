//! Plain increments on a Redis Cluster as one pipeline per master, on a
//! connection of its own to each ([`RedisStore`], as to a standalone Redis),
//! instead of one pipeline per resource through redis-rs's cluster
//! connection.
//!
//! Why: redis-rs refuses a pipeline that spans slots, and sends each one as
//! a message of its own to the cluster connection's task, routed, written
//! and answered alone. With 100k resources a flush of 33 increments became
//! 33 pipelines, and the counter spent 3.5 times its standalone CPU per
//! increment (docs/bench/performance-log.md). Redis itself takes commands
//! on any of its slots in one pipeline and answers each on its own.
//!
//! Exact per command: a command refused with a redirect (`MOVED`, `ASK`:
//! its slot moved or is moving) did not run, and is sent once more to the
//! node the redirect names ([`super::redirect`]); one refused with
//! `CLUSTERDOWN` or `TRYAGAIN`, or redirected twice, is reported not
//! applied, while its neighbours stand as applied — where a redirect
//! through the cluster connection fails the whole pipeline. A pipeline that
//! fails as a whole (connection lost, timeout) is classified as for a
//! standalone Redis.
//!
//! The slot map comes from `CLUSTER SLOTS`, asked through the cluster
//! connection when first needed, and again (in the background, at most one
//! at a time and one a second) after a `MOVED`, followed or not, and after
//! any command failed for a reason other than its own refusal: a slot
//! moved, a master failed over, a node went away. A slot no master serves
//! in the map takes the cluster connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::join_all;
use redis::Value;
use redis::cluster_async::ClusterConnection;

use super::redirect::Redirect;
use super::redis::{RedisStore, outcome};
use super::replication;
use super::slot::slot_of_resource;
use super::{Cmd, Outcome, StoreError, StoreOptions};

const SLOTS: usize = 16384;

/// Which master serves each slot, and a connection to each master.
pub struct SlotMap {
    /// Index into `masters` per slot; `None` where no master serves it.
    owner: Vec<Option<u16>>,
    masters: Vec<Arc<RedisStore>>,
}

/// The masters' connections and the slot map, shared by the calls of one
/// cluster store.
pub struct NodePipelines {
    /// `redis://` or `rediss://`, with the seeds' `user:password@` if any.
    url_prefix: String,
    options: StoreOptions,
    map: ArcSwapOption<SlotMap>,
    /// Connections to the current masters by `host:port`, kept across map
    /// refreshes ([`build_map`]).
    connections: Mutex<HashMap<String, Arc<RedisStore>>>,
    refreshing: Arc<AtomicBool>,
}

/// A fetch of the slot map under way: held while it runs, and released
/// when dropped, also if the call that fetches is cancelled.
struct Fetching(Arc<AtomicBool>);

impl Fetching {
    /// `None` when another fetch is under way.
    fn start(flag: &Arc<AtomicBool>) -> Option<Fetching> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| Fetching(flag.clone()))
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Where each command of a flush goes: per master, the command indices.
pub struct Routed {
    pub by_master: Vec<(Arc<RedisStore>, Vec<usize>)>,
    /// Commands on slots no master serves in the map.
    pub unmapped: Vec<usize>,
}

impl NodePipelines {
    pub fn new(url_prefix: String, options: StoreOptions) -> NodePipelines {
        NodePipelines {
            url_prefix,
            options,
            map: ArcSwapOption::empty(),
            connections: Mutex::default(),
            refreshing: Arc::default(),
        }
    }

    /// The slot map; fetched now through `conn` if there is none yet and no
    /// fetch is under way (`None` while it cannot be had: the caller takes
    /// the cluster connection).
    pub async fn map(&self, conn: &ClusterConnection) -> Option<Arc<SlotMap>> {
        if let Some(map) = self.map.load_full() {
            return Some(map);
        }
        let _fetching = Fetching::start(&self.refreshing)?;
        match self.fetch(conn).await {
            Ok(map) => {
                self.map.store(Some(map.clone()));
                Some(map)
            }
            Err(err) => {
                tracing::warn!(%err, "fetching the Redis Cluster's slot map failed; increments take the cluster connection");
                None
            }
        }
    }

    /// Fetches the slot map again in the background (at most one fetch at a
    /// time, and one a second); calls go on with the current one meanwhile.
    pub fn refresh(self: &Arc<Self>, conn: &ClusterConnection) {
        let Some(fetching) = Fetching::start(&self.refreshing) else { return };
        let (this, conn) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            match this.fetch(&conn).await {
                Ok(map) => this.map.store(Some(map)),
                Err(err) => tracing::warn!(%err, "fetching the Redis Cluster's slot map failed; the current one stays"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(fetching);
        });
    }

    async fn fetch(&self, conn: &ClusterConnection) -> Result<Arc<SlotMap>, StoreError> {
        let mut conn = conn.clone();
        let reply: Value =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await.map_err(|e| StoreError::from_redis(&e))?;
        let ranges = parse_slots(&reply)
            .ok_or_else(|| StoreError::Unknown("CLUSTER SLOTS answered in an unexpected shape".into()))?;
        let mut connections = self.connections();
        build_map(&ranges, &mut connections, |addr| self.connect(addr)).map(Arc::new)
    }

    /// Plain increments on `master` as one pipeline; the commands it
    /// redirects are sent once more, to the node each redirect names,
    /// grouped by node ([`super::redirect`]). Sets `moved` when a slot has
    /// another master: the map is stale.
    pub async fn incr_on(&self, master: &RedisStore, cmds: &[Cmd<'_>], moved: &AtomicBool) -> Vec<Outcome> {
        let (replies, wait) = match master.incr_replies(cmds, false).await {
            Ok(replies) if replies.each.len() == cmds.len() => (replies.each, replies.wait),
            Ok(replies) => return replies.outcomes(cmds.len()),
            Err(err) => return Outcome::all_failed(&err, cmds.len()),
        };
        let mut redirected: BTreeMap<Redirect, Vec<usize>> = BTreeMap::new();
        let mut result = Vec::with_capacity(cmds.len());
        for (i, reply) in replies.into_iter().enumerate() {
            if let Err(err) = &reply
                && let Some(to) = Redirect::of(err)
            {
                if !to.ask {
                    moved.store(true, Ordering::Relaxed);
                }
                redirected.entry(to).or_default().push(i);
            }
            result.push(outcome(reply));
        }
        // Redirected commands hold a refusal here: only what ran on the
        // master is confirmed or not by its replicas.
        replication::settle(wait, &mut result);
        // Concurrently: one unreachable node does not hold up the others.
        let follows = redirected.into_iter().filter_map(|(to, indices)| {
            // A node that cannot be dialled: its commands stay not applied.
            let node = self.node(&to.addr).ok()?;
            Some(async move {
                let group: Vec<Cmd<'_>> = indices.iter().map(|&i| cmds[i]).collect();
                let followed = match node.incr_replies(&group, to.ask).await {
                    Ok(replies) => replies.outcomes(group.len()),
                    Err(err) => Outcome::all_failed(&err, group.len()),
                };
                (indices, followed)
            })
        });
        for (indices, followed) in join_all(follows).await {
            for (i, outcome) in indices.into_iter().zip(followed) {
                result[i] = outcome;
            }
        }
        result
    }

    /// The connection to the node at `addr`: a master's, or a new one
    /// (dropped again at the next map fetch unless it is then a master).
    pub fn node(&self, addr: &str) -> Result<Arc<RedisStore>, StoreError> {
        let mut connections = self.connections();
        if let Some(store) = connections.get(addr) {
            return Ok(store.clone());
        }
        let store = self.connect(addr)?;
        connections.insert(addr.to_string(), store.clone());
        Ok(store)
    }

    /// Replaces the slot map with one of `ranges`, as a fetch would: for
    /// tests that need a map the cluster would not give.
    #[cfg(test)]
    pub(super) fn set_map(&self, ranges: &[(u16, u16, String)]) -> Result<(), StoreError> {
        let mut connections = self.connections();
        let map = build_map(ranges, &mut connections, |addr| self.connect(addr))?;
        self.map.store(Some(Arc::new(map)));
        Ok(())
    }

    /// Whether a slot map is known (for tests).
    #[cfg(test)]
    pub(super) fn has_map(&self) -> bool {
        self.map.load().is_some()
    }

    /// A new (lazy) connection to the node at `addr`.
    fn connect(&self, addr: &str) -> Result<Arc<RedisStore>, StoreError> {
        RedisStore::new(&format!("{}{addr}", self.url_prefix), &self.options).map(Arc::new)
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RedisStore>>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The slot map of `ranges` (`CLUSTER SLOTS`: first slot, last slot, master
/// address). A master already in `connections` keeps its connection;
/// `connect` opens one to a new master; a connection to a node that is no
/// longer a master is dropped from `connections` (closed once the calls
/// still routed by an older map are done with it), so a cluster that
/// loses or replaces nodes does not leave idle connections behind.
fn build_map(
    ranges: &[(u16, u16, String)],
    connections: &mut HashMap<String, Arc<RedisStore>>,
    mut connect: impl FnMut(&str) -> Result<Arc<RedisStore>, StoreError>,
) -> Result<SlotMap, StoreError> {
    let mut masters: Vec<Arc<RedisStore>> = Vec::new();
    let mut index: HashMap<&str, u16> = HashMap::new();
    let mut owner = vec![None; SLOTS];
    for (from, to, addr) in ranges {
        let at = match index.get(addr.as_str()) {
            Some(&at) => at,
            None => {
                let store = match connections.get(addr) {
                    Some(store) => store.clone(),
                    None => {
                        let store = connect(addr)?;
                        connections.insert(addr.clone(), store.clone());
                        store
                    }
                };
                let at = u16::try_from(masters.len()).map_err(|_| StoreError::Unknown("too many masters".into()))?;
                masters.push(store);
                index.insert(addr, at);
                at
            }
        };
        for slot in owner.iter_mut().take(usize::from(*to) + 1).skip(usize::from(*from)) {
            *slot = Some(at);
        }
    }
    connections.retain(|addr, _| index.contains_key(addr.as_str()));
    Ok(SlotMap { owner, masters })
}

impl SlotMap {
    /// The connection to `slot`'s master, if the map names one.
    pub fn master_of(&self, slot: u16) -> Option<Arc<RedisStore>> {
        let at = (*self.owner.get(usize::from(slot))?)?;
        self.masters.get(usize::from(at)).cloned()
    }

    /// Splits `cmds` by the master of each one's slot, order kept per master.
    pub fn route(&self, cmds: &[Cmd<'_>]) -> Routed {
        let mut per_master: Vec<Vec<usize>> = vec![Vec::new(); self.masters.len()];
        let mut unmapped = Vec::new();
        for (i, (key, _)) in cmds.iter().enumerate() {
            match self.owner[usize::from(slot_of_resource(key.resource_id()))] {
                Some(at) => per_master[usize::from(at)].push(i),
                None => unmapped.push(i),
            }
        }
        let by_master = self
            .masters
            .iter()
            .zip(per_master)
            .filter(|(_, indices)| !indices.is_empty())
            .map(|(store, indices)| (store.clone(), indices))
            .collect();
        Routed { by_master, unmapped }
    }
}

/// Whether `outcomes` say the map may be stale: a command failed for a
/// reason other than its own refusal or its replicas' silence (a redirect,
/// a cluster down, a lost connection).
pub fn map_may_be_stale(outcomes: &[Outcome]) -> bool {
    outcomes.iter().any(
        |o| matches!(o, Outcome::Failed(err) if !matches!(err, StoreError::Rejected(_) | StoreError::Unconfirmed(_))),
    )
}

/// A node's `host:port` as the map names it (an IPv6 host in brackets), or
/// `None` for a host Redis does not know (`?`, or empty: "the node you
/// asked" when the cluster announces no endpoint).
pub(super) fn node_addr(host: &str, port: u16) -> Option<String> {
    if host.is_empty() || host == "?" {
        return None;
    }
    let bare_v6 = host.contains(':') && !host.starts_with('[');
    Some(if bare_v6 { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// `CLUSTER SLOTS` → (first slot, last slot, master `host:port`) per range:
/// each entry is `[first, last, [host, port, id, …], replicas…]`. Entries
/// whose master has no known address (`?` or empty) are left out.
fn parse_slots(reply: &Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(entries) = reply else { return None };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else { return None };
        let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok()?,
            Some(Value::SimpleString(text)) => text.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else { return None };
        let port = u16::try_from(*port).ok()?;
        let (from, to) = (u16::try_from(*from).ok()?, u16::try_from(*to).ok()?);
        if from > to || usize::from(to) >= SLOTS {
            return None;
        }
        // A master with no known address is left out.
        let Some(addr) = node_addr(&host, port) else { continue };
        ranges.push((from, to, addr));
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(from: i64, to: i64, host: &str, port: i64) -> Value {
        let master = Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let replica = Value::Array(vec![bulk("10.0.0.9"), Value::Int(7000), bulk("rid")]);
        Value::Array(vec![Value::Int(from), Value::Int(to), master, replica])
    }

    #[test]
    fn cluster_slots_replies_parse_to_master_ranges() {
        let reply = Value::Array(vec![
            entry(0, 5460, "127.0.0.1", 7001),
            entry(5461, 10922, "?", 7002),
            entry(10923, 16383, "::1", 7003),
        ]);
        let ranges = parse_slots(&reply).expect("parsed");
        assert_eq!(ranges, vec![(0, 5460, "127.0.0.1:7001".into()), (10923, 16383, "[::1]:7003".into())]);
        assert!(parse_slots(&Value::Array(vec![entry(5, 3, "h", 1)])).is_none(), "a range backwards");
        assert!(parse_slots(&Value::Array(vec![entry(0, 16384, "h", 1)])).is_none(), "a slot past the last");
        assert!(parse_slots(&Value::Array(vec![entry(0, 1, "h", 70000)])).is_none(), "a port past 65535");
        assert!(parse_slots(&Value::Int(1)).is_none());
    }

    #[test]
    fn only_failures_other_than_refusals_call_for_a_new_map() {
        let refused = Outcome::Failed(StoreError::Rejected("WRONGTYPE".into()));
        let unconfirmed = Outcome::Failed(StoreError::Unconfirmed("0 of 1 replicas".into()));
        assert!(!map_may_be_stale(&[Outcome::Applied(1), Outcome::Overflow, refused, unconfirmed]));
        assert!(map_may_be_stale(&[Outcome::Applied(1), Outcome::Failed(StoreError::NotApplied("MOVED".into()))]));
        assert!(map_may_be_stale(&[Outcome::Failed(StoreError::Unknown("timed out".into()))]));
    }

    #[tokio::test]
    async fn a_refreshed_map_keeps_known_masters_and_drops_departed_ones() {
        let timeouts =
            super::super::StoreTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(1) };
        let options = StoreOptions { timeouts, tls: Default::default(), wait: None };
        let mut connections = HashMap::new();
        let mut opened = Vec::new();
        // Lazy connections: nothing is dialled by this test.
        let mut connect = |addr: &str| {
            opened.push(addr.to_string());
            RedisStore::new(&format!("redis://{addr}"), &options).map(Arc::new)
        };
        let ranges = [(0, 8191, "a:1".to_string()), (8192, 16383, "b:1".to_string())];
        let first = build_map(&ranges, &mut connections, &mut connect).expect("map");
        assert_eq!(first.masters.len(), 2);
        assert_eq!(first.owner[8191], Some(0));
        assert_eq!(first.owner[8192], Some(1));
        let kept = connections["b:1"].clone();

        // a:1 left the cluster; its slots went to b:1 and a new master c:1.
        let ranges = [(0, 99, "c:1".to_string()), (100, 16383, "b:1".to_string())];
        let second = build_map(&ranges, &mut connections, &mut connect).expect("map");
        assert_eq!(opened, ["a:1", "b:1", "c:1"], "b:1 was not dialled again");
        let mut known: Vec<&str> = connections.keys().map(String::as_str).collect();
        known.sort_unstable();
        assert_eq!(known, ["b:1", "c:1"], "the departed master's connection is dropped");
        assert!(Arc::ptr_eq(&connections["b:1"], &kept));
        assert_eq!(second.owner[0], Some(0));
        assert!(Arc::ptr_eq(&second.masters[1], &kept));
        assert_eq!(second.owner[16383], Some(1));
    }
}
