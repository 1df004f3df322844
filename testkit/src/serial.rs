//! Whether the values a counter returned to concurrent callers fit one
//! serial order of their operations — the check behind "per-caller values
//! stay consistent" under concurrent increments and resets.

use std::collections::BTreeMap;

/// Checks that some serial order of increments of +1 (each returning the
/// value right after it) and resets (each returning the value right before
/// it, leaving 0) explains every returned value and `final_value`, starting
/// from 0.
///
/// In any serial order the resets cut the increments into runs; a run of
/// `k` increments returns exactly 1, 2, …, k and ends with a reset returning
/// `k` (the last run ends with the final read instead). So a value `v`
/// must be returned by exactly as many increments as there are run ends of
/// at least `v`, and that condition is also enough to build the order.
pub fn explains(increments: &[i64], resets: &[i64], final_value: i64) -> Result<(), String> {
    let mut returned: BTreeMap<i64, usize> = BTreeMap::new();
    for &value in increments {
        if value < 1 {
            return Err(format!("an increment of +1 from a counter reset to 0 returned {value}"));
        }
        *returned.entry(value).or_default() += 1;
    }
    let ends: Vec<i64> = resets.iter().copied().chain([final_value]).collect();
    if let Some(bad) = ends.iter().find(|&&end| end < 0) {
        return Err(format!("a run of increments of +1 ended at {bad}"));
    }
    let top = ends.iter().copied().max().unwrap_or(0).max(returned.keys().last().copied().unwrap_or(0));
    for value in 1..=top {
        let wanted = ends.iter().filter(|&&end| end >= value).count();
        let got = returned.get(&value).copied().unwrap_or(0);
        if got != wanted {
            return Err(format!(
                "{got} increments returned {value}, but the resets' values and the final value {final_value} \
                 need exactly {wanted}"
            ));
        }
    }
    Ok(())
}

/// Every value the tasks saw, in no particular order.
pub async fn joined(tasks: Vec<tokio::task::JoinHandle<Vec<i64>>>) -> Vec<i64> {
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.expect("a racing task panicked"));
    }
    seen
}

/// Checks a finished race of `sent` increments of +1 and some resets on
/// one counter: every increment answered, some reset ran between them,
/// each increment cleared by one reset or still counted, and one serial
/// order explains every value ([`explains`]).
pub fn check_race(increments: &[i64], resets: &[i64], final_value: i64, sent: usize) {
    assert_eq!(increments.len(), sent, "every increment answered");
    assert!(resets.iter().any(|&v| v > 0), "some reset ran between increments: {resets:?}");
    let cleared: i64 = resets.iter().sum();
    assert_eq!(cleared + final_value, sent as i64, "each increment cleared by one reset or still there");
    explains(increments, resets, final_value).unwrap_or_else(|why| panic!("{why}"));
}

#[cfg(test)]
mod tests {
    use super::explains;

    #[test]
    fn a_serial_history_is_explained() {
        // 1 2 3 reset(3) 1 2 reset(2) reset(0) 1 → final 1
        assert_eq!(explains(&[1, 2, 3, 1, 2, 1], &[3, 2, 0], 1), Ok(()));
        assert_eq!(explains(&[], &[0, 0], 0), Ok(()));
        assert_eq!(explains(&[2, 1], &[], 2), Ok(()));
    }

    #[test]
    fn a_lost_or_doubled_value_is_not() {
        assert!(explains(&[1, 2, 3], &[2], 1).is_err(), "the reset missed an increment");
        assert!(explains(&[1, 1], &[], 2).is_err(), "two increments saw the same value");
        assert!(explains(&[1, 2], &[], 3).is_err(), "a value appeared from nowhere");
        assert!(explains(&[0], &[], 1).is_err());
    }
}
