//! Waiting for replicas (`TALLY_STORE_WAIT_REPLICAS`): a write is
//! acknowledged once the master applied it *and* the replicas confirmed it.
//!
//! Redis replicates asynchronously: a master that applied an increment and
//! answered may die before its replica received it, and the replica promoted
//! in its place (a Redis Cluster failover, or an operator's) then never
//! had it. An acknowledged write is lost. `WAIT n timeout`, sent on the
//! connection that wrote, returns once `n` replicas hold everything that
//! connection wrote, or after `timeout` with how many do; a write confirmed
//! by `n` replicas survives the loss of its master when one of them takes
//! over (with one replica per master, the one Redis Cluster promotes).
//!
//! A write the master applied but too few replicas confirmed is reported
//! [`StoreError::Unconfirmed`] (to the caller, an unknown outcome): it is in the master now and may be gone after a
//! failover, so it is neither acknowledged nor safe to resend blindly (a
//! resend with the same idempotency key, or of the same write-behind batch,
//! is: the master remembers the first application).
//!
//! `WAIT` blocks the connection's later commands on the server until it
//! returns, so every flush on a connection waits for the replicas of the one
//! before it: the cost of the guarantee is a master–replica round trip per
//! flush, and a replica that is down makes every flush wait the timeout.

use std::time::Duration;

use redis::RedisResult;

use super::{Outcome, StoreError};

/// How many replicas must confirm each write, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// At least 1 (0 means "do not wait": no [`ReplicaWait`] at all).
    pub replicas: u32,
    /// Redis's own limit on the wait; at least 1 ms (`WAIT … 0` would block
    /// for ever).
    pub timeout: Duration,
}

impl ReplicaWait {
    /// The wait `replicas` and `timeout_ms` configure: `None` for 0
    /// replicas. Refused when the wait is more than half a store round trip
    /// (`response`): a flush's `WAIT` may queue behind the one before it on
    /// the connection, and the connection would be reported hung first.
    pub fn from_settings(
        replicas: u32,
        timeout_ms: u64,
        response: Duration,
    ) -> Result<Option<ReplicaWait>, StoreError> {
        if replicas == 0 {
            return Ok(None);
        }
        let timeout = Duration::from_millis(timeout_ms.max(1));
        if timeout * 2 > response {
            return Err(StoreError::config(format!(
                "TALLY_STORE_WAIT_TIMEOUT_MS ({timeout_ms}) must be at most half of TALLY_STORE_TIMEOUT_MS ({} ms): \
                 a write waits for its replicas within one store round trip, possibly behind another write's wait",
                response.as_millis()
            )));
        }
        Ok(Some(ReplicaWait { replicas, timeout }))
    }

    /// `WAIT <replicas> <timeout ms>`.
    pub fn command(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.replicas).arg(self.timeout.as_millis().max(1) as u64);
        cmd
    }

    /// Marks the writes among `outcomes` unconfirmed unless `reply` (`WAIT`'s)
    /// confirms them ([`ReplicaWait::verdict`]).
    pub fn settle(&self, outcomes: &mut [Outcome], reply: RedisResult<i64>) {
        mark_unconfirmed(outcomes, self.verdict(reply));
    }

    /// What `WAIT`'s reply means for the writes before it: confirmed, or
    /// applied on the master only (as far as anyone knows).
    pub fn verdict(&self, reply: RedisResult<i64>) -> Result<(), StoreError> {
        match reply {
            Ok(acked) if acked >= i64::from(self.replicas) => Ok(()),
            Ok(acked) => Err(StoreError::Unconfirmed(format!(
                "applied on the master, but only {acked} of the {} replicas waited for confirmed it within {} ms; \
                 it may be lost if the master fails",
                self.replicas,
                self.timeout.as_millis()
            ))),
            Err(err) => Err(StoreError::Unconfirmed(format!(
                "applied on the master, but waiting for its replicas failed: {}",
                StoreError::from_redis(&err)
            ))),
        }
    }
}

/// The replicas a write waited for and `WAIT`'s reply; `None` when it did
/// not wait.
pub type Waited = Option<(ReplicaWait, RedisResult<i64>)>;

/// Marks the writes among `outcomes` unconfirmed unless the `WAIT` they
/// waited for confirms them ([`ReplicaWait::settle`]); nothing when they
/// did not wait.
pub fn settle(waited: Waited, outcomes: &mut [Outcome]) {
    if let Some((wait, reply)) = waited {
        wait.settle(outcomes, reply);
    }
}

/// A write the master applied, now or before (a replay).
fn is_write(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Applied(_) | Outcome::Replayed(_))
}

/// True when some outcome is a write, so its replicas are worth waiting for.
pub fn has_writes(outcomes: &[Outcome]) -> bool {
    outcomes.iter().any(is_write)
}

/// Marks every write among `outcomes` with the failed verdict; outcomes
/// that applied nothing keep their own report.
fn mark_unconfirmed(outcomes: &mut [Outcome], verdict: Result<(), StoreError>) {
    let Err(err) = verdict else { return };
    for outcome in outcomes.iter_mut().filter(|o| is_write(o)) {
        *outcome = Outcome::Failed(err.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn wait() -> ReplicaWait {
        ReplicaWait { replicas: 2, timeout: Duration::from_millis(100) }
    }

    #[test]
    fn no_replicas_means_no_wait_and_the_wait_fits_in_a_round_trip() {
        assert_eq!(ReplicaWait::from_settings(0, 100, SECOND), Ok(None));
        assert_eq!(ReplicaWait::from_settings(2, 100, SECOND), Ok(Some(wait())));
        assert!(ReplicaWait::from_settings(1, 500, SECOND).is_ok(), "half a round trip");
        let err = ReplicaWait::from_settings(1, 501, SECOND).expect_err("more than half a round trip");
        assert!(matches!(err, StoreError::Config(_)) && err.to_string().contains("TALLY_STORE_WAIT_TIMEOUT_MS"));
    }

    #[test]
    fn the_command_never_waits_for_ever() {
        let zero = ReplicaWait { replicas: 1, timeout: Duration::ZERO };
        assert_eq!(zero.command().get_packed_command(), b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n1\r\n".to_vec());
    }

    #[test]
    fn enough_confirmations_confirm_and_too_few_or_none_do_not() {
        assert_eq!(wait().verdict(Ok(2)), Ok(()));
        assert_eq!(wait().verdict(Ok(3)), Ok(()));
        let short = wait().verdict(Ok(1)).expect_err("one of two");
        assert!(matches!(&short, StoreError::Unconfirmed(m) if m.contains("1 of the 2")), "{short}");
        let failed =
            wait().verdict(Err(redis::RedisError::from(std::io::Error::other("reset")))).expect_err("no reply");
        assert!(matches!(failed, StoreError::Unconfirmed(_)), "{failed}");
    }

    #[test]
    fn only_writes_become_unknown() {
        let rejected = Outcome::Failed(StoreError::Rejected("not an integer".into()));
        let mut outcomes = vec![Outcome::Applied(3), Outcome::Replayed(2), Outcome::Overflow, rejected.clone()];
        assert!(has_writes(&outcomes));
        mark_unconfirmed(&mut outcomes, Ok(()));
        assert_eq!(outcomes[0], Outcome::Applied(3), "confirmed: unchanged");
        let short = StoreError::Unconfirmed("1 of 2".into());
        mark_unconfirmed(&mut outcomes, Err(short.clone()));
        assert_eq!(
            outcomes,
            vec![Outcome::Failed(short.clone()), Outcome::Failed(short), Outcome::Overflow, rejected.clone()]
        );
        assert!(!has_writes(&[Outcome::Overflow, rejected]));
    }
}
