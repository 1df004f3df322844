//! Group-commit planning: pure functions, no I/O.
//!
//! Concurrent increments collected during one store round trip are summed per
//! counter into a single `HINCRBY`. Each caller must still see the value right
//! after *its own* increment, as if the increments had run one by one: the
//! summed command returns the value after the whole group, and [`values_after`]
//! hands out the intermediate values of a serial order of the group.

use std::collections::HashMap;
use std::ops::Range;

use tally_proto::CounterKey;

/// The summed commands of one flush, and the operations each stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// One per command, counters in first-arrival order.
    pub groups: Vec<Group<'a>>,
    /// `(index of the operation in the submitted order, its delta)` of every
    /// operation, group after group, each group's in arrival order: one
    /// buffer for the whole flush, not one per counter (with distinct
    /// counters, a buffer per group was an allocation per operation).
    members: Vec<(usize, i64)>,
}

/// One summed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub key: &'a CounterKey,
    pub total: i64,
    /// Where its members are in [`Plan::members`].
    members: Range<usize>,
}

impl<'a> Plan<'a> {
    /// The operations `group` stands for, in arrival order.
    pub fn members(&self, group: &Group<'a>) -> &[(usize, i64)] {
        &self.members[group.members.clone()]
    }
}

/// Sums operations per counter, keeping first-arrival order of counters.
///
/// A counter gets a second group when its running sum would overflow i64;
/// groups of the same counter stay in arrival order, and stores apply
/// commands on one counter in order, so the serial semantics hold.
pub fn plan<'a>(ops: &[(&'a CounterKey, i64)]) -> Plan<'a> {
    let mut groups: Vec<Group<'a>> = Vec::with_capacity(ops.len());
    // foldhash, not SipHash: this map lives for one flush and holds at most
    // one flush's operations, so a fresh random seed each time is DoS
    // resistance enough, and hashing was the flush's largest cost.
    let mut open: HashMap<&'a CounterKey, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(ops.len(), foldhash::fast::RandomState::default());
    // First pass: each operation's group; a group's range holds its size.
    let mut group_of: Vec<usize> = Vec::with_capacity(ops.len());
    for &(key, delta) in ops {
        // The counter's open group and its sum with this delta, if that fits.
        let summed = open.get(key).and_then(|&g| Some((g, groups[g].total.checked_add(delta)?)));
        let g = match summed {
            Some((g, total)) => {
                groups[g].total = total;
                g
            }
            None => {
                open.insert(key, groups.len());
                groups.push(Group { key, total: delta, members: 0..0 });
                groups.len() - 1
            }
        };
        groups[g].members.end += 1;
        group_of.push(g);
    }
    // Second pass: each group its slice of one buffer, filled in arrival order.
    let mut start = 0;
    for group in &mut groups {
        let len = group.members.end;
        group.members = start..start;
        start += len;
    }
    let mut members = vec![(0, 0); ops.len()];
    for (index, (&g, &(_, delta))) in group_of.iter().zip(ops).enumerate() {
        let range = &mut groups[g].members;
        members[range.end] = (index, delta);
        range.end += 1;
    }
    Plan { groups, members }
}

/// Hands `each` the value each member observes, given the counter's value
/// `before` the group was applied: `(operation index, value right after it)`.
///
/// Arrival order is used when every intermediate value fits in an i64.
/// Otherwise (a counter near the i64 limits with mixed-sign deltas) an order
/// that alternates signs is used: while both signs remain, a step from a
/// non-negative value is negative and a step from a negative value is
/// positive, so no step leaves the range; once one sign remains, the values
/// move monotonically towards the final value, which fits. Concurrent
/// requests have no defined order, so either is a valid serial history.
pub fn values_after(before: i64, members: &[(usize, i64)], mut each: impl FnMut(usize, i64)) {
    if members.iter().try_fold(before, |value, &(_, delta)| value.checked_add(delta)).is_some() {
        serial_values(before, members.iter().copied(), &mut each);
        return;
    }
    let (mut neg, mut pos): (Vec<_>, Vec<_>) = members.iter().copied().partition(|&(_, d)| d < 0);
    neg.reverse();
    pos.reverse();
    let mut order = Vec::with_capacity(members.len());
    let mut value = before;
    while let Some(next) = if (value >= 0 && !neg.is_empty()) || pos.is_empty() { neg.pop() } else { pos.pop() } {
        value = value.saturating_add(next.1); // never saturates, see above
        order.push(next);
    }
    serial_values(before, order.into_iter(), &mut each);
}

/// The running values of `members` from `before`, which the caller has
/// made sure stay in range (saturating only to stay total).
fn serial_values(before: i64, members: impl Iterator<Item = (usize, i64)>, each: &mut impl FnMut(usize, i64)) {
    let mut value = before;
    for (index, delta) in members {
        value = value.saturating_add(delta);
        each(index, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> CounterKey {
        CounterKey::new(r, "likes").unwrap()
    }

    /// `(key, total, members)` of one group.
    type Summary<'a> = (&'a CounterKey, i64, Vec<(usize, i64)>);

    /// Each group, in order.
    fn groups<'a>(plan: &Plan<'a>) -> Vec<Summary<'a>> {
        plan.groups.iter().map(|g| (g.key, g.total, plan.members(g).to_vec())).collect()
    }

    fn values(before: i64, members: &[(usize, i64)]) -> Vec<(usize, i64)> {
        let mut values = Vec::new();
        values_after(before, members, |index, value| values.push((index, value)));
        values
    }

    #[test]
    fn sums_per_counter_in_first_arrival_order() {
        let (a, b) = (key("a"), key("b"));
        let plan = plan(&[(&a, 1), (&b, 5), (&a, 2), (&a, -1)]);
        assert_eq!(groups(&plan), vec![(&a, 2, vec![(0, 1), (2, 2), (3, -1)]), (&b, 5, vec![(1, 5)])]);
    }

    #[test]
    fn splits_a_counter_whose_sum_would_overflow() {
        let a = key("a");
        let plan = plan(&[(&a, i64::MAX), (&a, 1), (&a, 2)]);
        assert_eq!(groups(&plan), vec![(&a, i64::MAX, vec![(0, i64::MAX)]), (&a, 3, vec![(1, 1), (2, 2)])]);
    }

    #[test]
    fn interleaved_counters_each_get_their_members_in_arrival_order() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let plan = plan(&[(&a, i64::MAX), (&b, 1), (&a, 1), (&c, 7), (&b, 2), (&a, 2)]);
        assert_eq!(
            groups(&plan),
            vec![
                (&a, i64::MAX, vec![(0, i64::MAX)]),
                (&b, 3, vec![(1, 1), (4, 2)]),
                (&a, 3, vec![(2, 1), (5, 2)]),
                (&c, 7, vec![(3, 7)]),
            ]
        );
    }

    #[test]
    fn each_member_sees_the_prefix_sum_of_its_group() {
        assert_eq!(values(10, &[(4, 1), (7, 2), (9, -5)]), vec![(4, 11), (7, 13), (9, 8)]);
    }

    #[test]
    fn reorders_when_arrival_order_would_leave_the_range() {
        // Arrival order would pass through MAX+4; the final value MAX-6 fits.
        let before = i64::MAX - 1;
        let values = values(before, &[(0, 5), (1, -10)]);
        assert_eq!(values, vec![(1, i64::MAX - 11), (0, i64::MAX - 6)]);
    }

    #[test]
    fn reordering_handles_extreme_mixed_deltas() {
        let members = [(0, i64::MIN), (1, i64::MAX), (2, i64::MIN), (3, i64::MAX), (4, 2)];
        let total: i64 = 0;
        let values = values(total, &members);
        assert_eq!(values.len(), 5);
        assert_eq!(values.last().map(|v| v.1), Some(0));
        let mut seen: Vec<usize> = values.iter().map(|v| v.0).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }
}
