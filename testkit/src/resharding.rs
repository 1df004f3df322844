//! A Redis Cluster caught half-way through a resharding, as
//! `redis-cli --cluster reshard` leaves a slot between two `MIGRATE`s: the
//! slot marked migrating on its master and importing on another, some of
//! its keys already moved. The node that owns the slot then still serves
//! the keys it has and redirects (`ASK`) for the others.

use std::time::Duration;

use crate::cluster::RedisCluster;
use crate::procs::RedisServer;

/// Bound on the `MIGRATE` batches of one [`RedisCluster::reshard_slot`].
const MAX_MIGRATE_BATCHES: usize = 10_000;

/// One master as `CLUSTER NODES` lists it.
struct Master {
    id: String,
    port: u16,
    /// Slot ranges, inclusive.
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts moving `slot` from its master to another one and moves the
    /// given Redis keys of that slot there (with `MIGRATE`), leaving the
    /// slot half-migrated. Returns the slot's master and the node importing it.
    pub fn migrate_keys(&self, slot: u16, keys: &[&str]) -> (&RedisServer, &RedisServer) {
        let (source, importing) = self.begin_migration(slot).unwrap_or_else(|e| panic!("{e}"));
        for key in keys {
            let reply = source.cli(&["migrate", "127.0.0.1", &importing.port.to_string(), key, "0", "5000"]);
            assert_eq!(reply, "OK", "migrate {key}");
        }
        (source, importing)
    }

    /// Ends the migration of `slot` to `importing` (whose keys must all have
    /// been moved there): every node is told the slot is now its, as
    /// `redis-cli --cluster reshard` does last, the new master first.
    pub fn finish_migration(&self, slot: u16, importing: &RedisServer) {
        self.try_finish_migration(slot, importing).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Moves `slot` to another master while clients use it, as
    /// `redis-cli --cluster reshard` does: the slot marked importing and
    /// migrating, its keys moved in about `batches` batches
    /// (`MIGRATE … KEYS`) spread over about `over` (a slot of one key waits
    /// `over` after it moved), so clients meet it half-moved, then every
    /// node told its new master. Returns the ports of the old and the new
    /// master. A failed step is an error, not a panic (a soak logs it); a
    /// `MIGRATE` is tried three times first. After a failed `MIGRATE` the
    /// slot stays half-moved: its keys are on two nodes, and neither can
    /// be given the slot without losing the other's.
    pub fn reshard_slot(&self, slot: u16, batches: usize, over: Duration) -> Result<(u16, u16), String> {
        let (source, importing) = self.begin_migration(slot)?;
        let slot_arg = slot.to_string();
        let count = source.cli(&["cluster", "countkeysinslot", &slot_arg]);
        let count: usize = count.parse().map_err(|_| format!("COUNTKEYSINSLOT {slot}: {count:?}"))?;
        let batch = count.div_ceil(batches.max(1)).max(1);
        let pause = over / u32::try_from(count.div_ceil(batch).max(1)).unwrap_or(u32::MAX);
        let (batch_arg, port) = (batch.to_string(), importing.port.to_string());
        // Bounded: keys written into the slot while it moves join the
        // batches, but not without end.
        for _ in 0..MAX_MIGRATE_BATCHES {
            let listing = source.cli(&["cluster", "getkeysinslot", &slot_arg, &batch_arg]);
            let keys: Vec<&str> = listing.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                self.try_finish_migration(slot, importing)?;
                return Ok((source.port, importing.port));
            }
            let mut args = vec!["migrate", "127.0.0.1", port.as_str(), "", "0", "5000", "keys"];
            args.extend(&keys);
            let mut reply = String::new();
            for _ in 0..3 {
                reply = source.cli(&args);
                if reply == "OK" || reply == "NOKEY" {
                    break;
                }
            }
            if reply != "OK" && reply != "NOKEY" {
                return Err(format!(
                    "MIGRATE of {} keys of slot {slot}: {reply} (the slot is left half-moved)",
                    keys.len()
                ));
            }
            std::thread::sleep(pause);
        }
        Err(format!("slot {slot} still had keys after {MAX_MIGRATE_BATCHES} batches (the slot is left half-moved)"))
    }

    /// Marks `slot` importing on another master and migrating on its own;
    /// returns the slot's master and the node importing it.
    fn begin_migration(&self, slot: u16) -> Result<(&RedisServer, &RedisServer), String> {
        let masters = self.masters();
        let owner = serving(&masters, slot).ok_or_else(|| format!("no master serves slot {slot}"))?;
        let target = masters.iter().find(|m| m.id != owner.id).ok_or("no second master")?;
        let (source, importing) = (self.node(owner.port), self.node(target.port));
        let slot = slot.to_string();
        let reply = importing.cli(&["cluster", "setslot", &slot, "importing", &owner.id]);
        if reply != "OK" {
            return Err(format!("setslot {slot} importing: {reply}"));
        }
        let reply = source.cli(&["cluster", "setslot", &slot, "migrating", &target.id]);
        if reply != "OK" {
            return Err(format!("setslot {slot} migrating: {reply}"));
        }
        Ok((source, importing))
    }

    /// Tells every master (replicas refuse `SETSLOT`) that `slot` is now
    /// `importing`'s, that node first.
    fn try_finish_migration(&self, slot: u16, importing: &RedisServer) -> Result<(), String> {
        let id = importing.cli(&["cluster", "myid"]);
        let slot = slot.to_string();
        let masters = self.masters();
        let others = masters.iter().filter(|m| m.port != importing.port).map(|m| self.node(m.port));
        for node in std::iter::once(importing).chain(others) {
            let reply = node.cli(&["cluster", "setslot", &slot, "node", &id]);
            if reply != "OK" {
                return Err(format!("setslot {slot} node on {}: {reply}", node.port));
            }
        }
        Ok(())
    }

    /// The master serving `slot` now, by port.
    pub fn master_of(&self, slot: u16) -> Option<&RedisServer> {
        let port = serving(&self.masters(), slot)?.port;
        Some(self.node(port))
    }

    /// `HGET key field` on `importing` while it imports the key's slot:
    /// sent after `ASKING` on the same connection, as a client follows an
    /// `ASK` redirect (a plain read there is redirected back).
    pub fn hget_importing(importing: &RedisServer, key: &str, field: &str) -> String {
        let replies = importing.cli_session(&["ASKING", &format!("HGET {key} {field}")]);
        assert_eq!(replies.first().map(String::as_str), Some("OK"), "ASKING: {replies:?}");
        replies.get(1).cloned().unwrap_or_default()
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port == port).expect("a node of this cluster")
    }

    /// The live masters and their slots, from `CLUSTER NODES` of the first
    /// node that answers (lines of `id ip:port@bus flags master ping pong
    /// epoch state slot…`); a master flagged failed is left out.
    fn masters(&self) -> Vec<Master> {
        let listing =
            self.nodes.iter().map(|n| n.cli(&["cluster", "nodes"])).find(|l| !l.is_empty()).unwrap_or_default();
        listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                    return None;
                }
                let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|range| match range.split_once('-') {
                        Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                        None => range.parse().ok().map(|slot| (slot, slot)),
                    })
                    .collect();
                Some(Master { id: fields[0].to_string(), port, slots })
            })
            .collect()
    }
}

/// The master among `masters` that serves `slot`.
fn serving(masters: &[Master], slot: u16) -> Option<&Master> {
    masters.iter().find(|m| m.slots.iter().any(|&(from, to)| (from..=to).contains(&slot)))
}
