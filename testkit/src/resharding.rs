//! A Redis Cluster caught half-way through a resharding, as
//! `redis-cli --cluster reshard` leaves a slot between two `MIGRATE`s: the
//! slot marked migrating on its master and importing on another, some of
//! its keys already moved. The node that owns the slot then still serves
//! the keys it has and redirects (`ASK`) for the others.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::procs::{RedisCluster, RedisServer};

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
        let masters = self.masters();
        let owner = masters
            .iter()
            .find(|m| m.slots.iter().any(|&(from, to)| (from..=to).contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        let target = masters.iter().find(|m| m.id != owner.id).expect("a second master");
        let (source, importing) = (self.node(owner.port), self.node(target.port));
        let slot = slot.to_string();
        let reply = importing.cli(&["cluster", "setslot", &slot, "importing", &owner.id]);
        assert_eq!(reply, "OK", "setslot importing");
        let reply = source.cli(&["cluster", "setslot", &slot, "migrating", &target.id]);
        assert_eq!(reply, "OK", "setslot migrating");
        for key in keys {
            let reply = source.cli(&["migrate", "127.0.0.1", &target.port.to_string(), key, "0", "5000"]);
            assert_eq!(reply, "OK", "migrate {key}");
        }
        (source, importing)
    }

    /// Ends the migration of `slot` to `importing` (whose keys must all have
    /// been moved there): every node is told the slot is now its, as
    /// `redis-cli --cluster reshard` does last, the new master first.
    pub fn finish_migration(&self, slot: u16, importing: &RedisServer) {
        let id = importing.cli(&["cluster", "myid"]);
        let slot = slot.to_string();
        let others = self.nodes.iter().filter(|n| n.port != importing.port);
        for node in std::iter::once(importing).chain(others) {
            assert_eq!(node.cli(&["cluster", "setslot", &slot, "node", &id]), "OK", "setslot node");
        }
    }

    /// `HGET key field` on `importing` while it imports the key's slot:
    /// sent after `ASKING` on the same connection, as a client follows an
    /// `ASK` redirect (a plain read there is redirected back).
    pub fn hget_importing(importing: &RedisServer, key: &str, field: &str) -> String {
        let mut cli = Command::new("redis-cli")
            .args(["-p", &importing.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let mut stdin = cli.stdin.take().expect("redis-cli stdin");
        stdin.write_all(format!("ASKING\nHGET {key} {field}\n").as_bytes()).expect("write to redis-cli");
        drop(stdin);
        let out = cli.wait_with_output().expect("redis-cli output");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("OK"), "ASKING: {text}");
        lines.next().unwrap_or_default().to_string()
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port == port).expect("a node of this cluster")
    }

    /// The masters and their slots, from `CLUSTER NODES` (lines of `id
    /// ip:port@bus flags master ping pong epoch state slot…`).
    fn masters(&self) -> Vec<Master> {
        let listing = self.nodes[0].cli(&["cluster", "nodes"]);
        listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") {
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
