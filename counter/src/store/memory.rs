//! The embedded store: a map behind a mutex. Used when no Redis is configured
//! (`make run` on a bare machine) and as the reference the Redis backends are
//! tested against. Values live only as long as the process.

use std::collections::HashMap;
use std::sync::Mutex;

use tally_proto::CounterKey;

use super::{Cmd, IncrOutcome};

#[derive(Default)]
pub struct MemoryStore {
    values: Mutex<HashMap<CounterKey, i64>>,
}

impl MemoryStore {
    pub fn incr(&self, cmds: &[Cmd<'_>]) -> Vec<IncrOutcome> {
        let mut values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cmds.iter()
            .map(|(key, delta)| {
                let current = values.get(*key).copied().unwrap_or(0);
                match current.checked_add(*delta) {
                    Some(next) => {
                        values.insert((*key).clone(), next);
                        IncrOutcome::Applied(next)
                    }
                    None => IncrOutcome::Overflow,
                }
            })
            .collect()
    }

    pub fn get(&self, keys: &[CounterKey]) -> Vec<i64> {
        let values = self.values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.iter().map(|key| values.get(key).copied().unwrap_or(0)).collect()
    }
}
