//! How a flush on a Redis Cluster is split for redis-rs's cluster
//! connection: by slot, by resource, each group of several commands as one
//! transaction; and how the groups' answers are put back in order.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use tally_proto::CounterKey;

use super::slot::slot_of_resource;

/// Runs `run(group number, command indices)` for every group concurrently
/// and puts each group's per-command results back in command order
/// (`missing` for any a group failed to report).
pub(super) async fn scatter<'g, T, F, Fut>(groups: &[&'g [usize]], len: usize, missing: T, run: F) -> Vec<T>
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
pub(super) fn by_slot<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> BTreeMap<u16, Vec<usize>> {
    grouped(keys, |key| slot_of_resource(key.resource_id()))
}

/// Indices of `keys` grouped by resource, that is by Redis key (one hash per
/// resource), order kept within each.
///
/// Why increments and resets through the cluster connection go one pipeline
/// per key and not per slot (plain increments go per master when the slot
/// map is known, [`super::node_pipelines`], exact per command): while a
/// slot is being migrated its keys move one at a time, so a pipeline over
/// two keys of one slot can be applied for the key still on the node and
/// redirected (`ASK`) for the one already moved. redis-rs answers a
/// redirect anywhere in a pipeline as the error of the whole pipeline, which
/// would report the applied increment as not applied, and its resend would
/// count it twice. A key moves whole; [`all_or_nothing`] covers the rest.
/// (The batch scripts of `incr_batch_once` keep one pipeline per slot: a
/// script runs whole or not at all, and its markers make a resend apply
/// once.)
pub(super) fn by_resource<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> BTreeMap<&'a str, Vec<usize>> {
    grouped(keys, CounterKey::resource_id)
}

/// Makes a pipeline of more than one command a transaction (`MULTI` …
/// `EXEC`), so it runs whole or not at all, and a failure of the pipeline
/// is exact for each command in it.
///
/// Without it, one resource's pipeline could still be applied in part. An
/// idempotency marker is a key of its own (it shares the hash's slot), and
/// during a migration a script over the hash and a marker that is not on
/// the node is refused (`TRYAGAIN`) after the commands before it ran. And
/// Redis reads a long pipeline in parts: a `MIGRATE` can run between them
/// and move the hash after the first commands ran. Either way redis-rs
/// reports the redirect as the error of the whole pipeline. A transaction
/// has no such gap: a redirect while it is queued aborts it
/// (`EXECABORT`), and `EXEC` itself is redirected, and the transaction
/// discarded, unless every key it touches is on the node.
pub(super) fn all_or_nothing(pipe: &mut redis::Pipeline) {
    if pipe.cmd_iter().nth(1).is_some() {
        pipe.atomic();
    }
}

fn grouped<'a, K: Ord>(
    keys: impl Iterator<Item = &'a CounterKey>,
    group_of: impl Fn(&'a CounterKey) -> K,
) -> BTreeMap<K, Vec<usize>> {
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys.enumerate() {
        groups.entry(group_of(key)).or_default().push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::super::redis::incr_pipeline;
    use super::*;

    #[test]
    fn pipelines_of_several_commands_become_transactions() {
        let key = CounterKey::new("r", "likes").expect("valid");
        let one = [(&key, 1)];
        let mut pipe = incr_pipeline(one.iter(), false);
        all_or_nothing(&mut pipe);
        assert!(!pipe.is_transaction(), "one command runs whole by itself");
        let two = [(&key, 1), (&key, 2)];
        let mut pipe = incr_pipeline(two.iter(), false);
        all_or_nothing(&mut pipe);
        assert!(pipe.is_transaction());
    }

    #[test]
    fn grouping_keeps_order_within_a_slot() {
        let k = |r: &str| CounterKey::new(r, "likes").unwrap();
        let keys = [k("foo"), k("bar"), k("foo"), k("foo")];
        let groups = by_slot(keys.iter());
        assert_eq!(groups[&12182], vec![0, 2, 3]);
        assert_eq!(groups[&5061], vec![1]);
    }

    #[test]
    fn plain_increments_group_by_resource_even_within_one_slot() {
        let k = |r: &str| CounterKey::new(r, "likes").unwrap();
        let same_slot = (0..)
            .map(|i| format!("r{i}"))
            .find(|r| r != "foo" && slot_of_resource(r) == slot_of_resource("foo"))
            .expect("another resource in foo's slot");
        let keys = [k("foo"), k(&same_slot), k("foo")];
        assert_eq!(by_slot(keys.iter()).len(), 1, "one slot");
        let groups = by_resource(keys.iter());
        assert_eq!(groups["foo"], vec![0, 2]);
        assert_eq!(groups[same_slot.as_str()], vec![1]);
    }
}
