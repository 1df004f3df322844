//! Group-commit planning: pure functions, no I/O.
//!
//! Concurrent increments collected during one store round trip are summed per
//! counter into a single `HINCRBY`. Each caller must still see the value right
//! after *its own* increment, as if the increments had run one by one: the
//! summed command returns the value after the whole group, and [`values_after`]
//! hands out the intermediate values of a serial order of the group.

use std::collections::HashMap;

use tally_proto::CounterKey;

/// One summed command and the submitted operations it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub key: &'a CounterKey,
    pub total: i64,
    /// `(index of the operation in the submitted order, its delta)`, in arrival order.
    pub members: Vec<(usize, i64)>,
}

/// Sums operations per counter, keeping first-arrival order of counters.
///
/// A counter gets a second group when its running sum would overflow i64;
/// groups of the same counter stay in arrival order, and stores apply
/// commands on one counter in order, so the serial semantics hold.
pub fn plan<'a>(ops: impl IntoIterator<Item = (&'a CounterKey, i64)>) -> Vec<Group<'a>> {
    let ops = ops.into_iter();
    let mut groups: Vec<Group<'a>> = Vec::with_capacity(ops.size_hint().0);
    // foldhash, not SipHash: this map lives for one flush and holds at most
    // one flush's operations, so a fresh random seed each time is DoS
    // resistance enough, and hashing was the flush's largest cost.
    let mut open: HashMap<&'a CounterKey, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(groups.capacity(), foldhash::fast::RandomState::default());
    for (index, (key, delta)) in ops.enumerate() {
        if let Some(&g) = open.get(key)
            && let Some(total) = groups[g].total.checked_add(delta)
        {
            groups[g].total = total;
            groups[g].members.push((index, delta));
            continue;
        }
        open.insert(key, groups.len());
        groups.push(Group { key, total: delta, members: vec![(index, delta)] });
    }
    groups
}

/// The value each member observes, given the counter's value `before` the
/// group was applied: `(operation index, value right after it)`.
///
/// Arrival order is used when every intermediate value fits in an i64.
/// Otherwise (a counter near the i64 limits with mixed-sign deltas) an order
/// that alternates signs is used: while both signs remain, a step from a
/// non-negative value is negative and a step from a negative value is
/// positive, so no step leaves the range; once one sign remains, the values
/// move monotonically towards the final value, which fits. Concurrent
/// requests have no defined order, so either is a valid serial history.
pub fn values_after(before: i64, members: &[(usize, i64)]) -> Vec<(usize, i64)> {
    if let Some(values) = serial_values(before, members.iter().copied()) {
        return values;
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
    serial_values(before, order.into_iter()).unwrap_or_default()
}

fn serial_values(before: i64, members: impl Iterator<Item = (usize, i64)>) -> Option<Vec<(usize, i64)>> {
    let mut value = before;
    members
        .map(|(index, delta)| {
            value = value.checked_add(delta)?;
            Some((index, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> CounterKey {
        CounterKey::new(r, "likes").unwrap()
    }

    #[test]
    fn sums_per_counter_in_first_arrival_order() {
        let (a, b) = (key("a"), key("b"));
        let groups = plan([(&a, 1), (&b, 5), (&a, 2), (&a, -1)]);
        assert_eq!(
            groups,
            vec![
                Group { key: &a, total: 2, members: vec![(0, 1), (2, 2), (3, -1)] },
                Group { key: &b, total: 5, members: vec![(1, 5)] },
            ]
        );
    }

    #[test]
    fn splits_a_counter_whose_sum_would_overflow() {
        let a = key("a");
        let groups = plan([(&a, i64::MAX), (&a, 1), (&a, 2)]);
        let totals: Vec<i64> = groups.iter().map(|g| g.total).collect();
        assert_eq!(totals, vec![i64::MAX, 3]);
        assert_eq!(groups[1].members, vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn each_member_sees_the_prefix_sum_of_its_group() {
        assert_eq!(values_after(10, &[(4, 1), (7, 2), (9, -5)]), vec![(4, 11), (7, 13), (9, 8)]);
    }

    #[test]
    fn reorders_when_arrival_order_would_leave_the_range() {
        // Arrival order would pass through MAX+4; the final value MAX-6 fits.
        let before = i64::MAX - 1;
        let values = values_after(before, &[(0, 5), (1, -10)]);
        assert_eq!(values, vec![(1, i64::MAX - 11), (0, i64::MAX - 6)]);
    }

    #[test]
    fn reordering_handles_extreme_mixed_deltas() {
        let members = [(0, i64::MIN), (1, i64::MAX), (2, i64::MIN), (3, i64::MAX), (4, 2)];
        let total: i64 = 0;
        let values = values_after(total, &members);
        assert_eq!(values.len(), 5);
        assert_eq!(values.last().map(|v| v.1), Some(0));
        let mut seen: Vec<usize> = values.iter().map(|v| v.0).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }
}
