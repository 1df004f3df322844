//! How internal outcomes become gRPC statuses: one place, so every RPC reports
//! the same failure the same way (docs/api.md, the gRPC API's errors).

use tally_proto::InvalidInput;
use tally_proto::contract::WriteOutcome;
use tally_proto::v1::OperationError;
use tonic::Status;

use crate::commit::Op;
use crate::store::Outcome;
use crate::store::StoreError;

pub fn invalid(err: InvalidInput) -> Status {
    Status::invalid_argument(err.to_string())
}

pub fn store(err: &StoreError) -> Status {
    let mut status = match err {
        StoreError::Rejected(_) => Status::failed_precondition(err.to_string()),
        _ => Status::unavailable(err.to_string()),
    };
    let outcome = if err.is_not_applied() { WriteOutcome::NotApplied } else { WriteOutcome::Unknown };
    outcome.mark(&mut status);
    status
}

/// The one status for a batch whose every operation failed in the store, or
/// `None` when at least one did not (then each operation reports its own).
///
/// The batch may be reported `not-applied` (and so resent by a gateway) only
/// when *every* failure is provably not applied: with one shard refusing and
/// another hung, the hung shard may still apply its part, so the batch as a
/// whole is `unknown` and is reported with that failure's status.
pub fn all_failed(results: &[Outcome]) -> Option<Status> {
    let mut errors = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Outcome::Failed(err) => errors.push(err),
            _ => return None,
        }
    }
    let least_certain = errors.iter().find(|err| !err.is_not_applied()).or(errors.first())?;
    Some(store(least_certain))
}

/// An operation that was never queued for the store: provably not applied,
/// so a gateway may send it to another counter.
pub fn not_submitted(err: crate::commit::SubmitError) -> Status {
    let mut status = Status::unavailable(err.to_string());
    WriteOutcome::NotApplied.mark(&mut status);
    status
}

/// A resource too large to list whole: refused, never answered in part.
pub fn too_many_counters(resource_id: &str, count: usize) -> Status {
    Status::failed_precondition(format!(
        "resource {resource_id} holds {count} counters, more than the {} one listing returns; read them by name",
        tally_proto::validate::limits::MAX_RESOURCE_COUNTERS
    ))
}

pub fn overflow(what: &dyn std::fmt::Display, delta: i64) -> Status {
    Status::out_of_range(format!("adding {delta} to {what} would overflow a 64-bit counter; nothing was applied"))
}

/// The status for an operation that did not succeed.
pub fn op_status(result: &Outcome, what: &dyn std::fmt::Display, delta: i64) -> Option<Status> {
    match result {
        Outcome::Applied(_) | Outcome::Replayed(_) => None,
        Outcome::Overflow => Some(overflow(what, delta)),
        Outcome::Failed(err) => Some(store(err)),
    }
}

pub fn to_operation_error(status: &Status) -> OperationError {
    OperationError { code: status.code() as i32, message: status.message().to_string() }
}

/// The value after `op` and whether it was a replay, or why it failed.
pub fn outcome(op: &Op, result: Outcome) -> Result<(i64, bool), Status> {
    match result {
        Outcome::Applied(value) => Ok((value, false)),
        Outcome::Replayed(value) => Ok((value, true)),
        Outcome::Overflow => Err(overflow(&op.key, op.delta())),
        Outcome::Failed(err) => Err(store(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn outcome(status: &Status) -> &str {
        WriteOutcome::of(status).map_or("", WriteOutcome::as_str)
    }

    #[test]
    fn a_batch_is_not_applied_only_when_every_failure_is() {
        let refused = Outcome::Failed(StoreError::NotApplied("CLUSTERDOWN".into()));
        let hung = Outcome::Failed(StoreError::Unknown("timed out".into()));
        let status = all_failed(&[refused.clone(), refused.clone()]).expect("all failed");
        assert_eq!(outcome(&status), "not-applied");
        for mixed in [[refused.clone(), hung.clone()], [hung.clone(), refused.clone()]] {
            let status = all_failed(&mixed).expect("all failed");
            assert_eq!(outcome(&status), "unknown", "{mixed:?}");
            assert_eq!(status.code(), Code::Unavailable);
        }
        let rejected = Outcome::Failed(StoreError::Rejected("WRONGTYPE".into()));
        assert_eq!(outcome(&all_failed(&[rejected, hung.clone()]).expect("all failed")), "unknown");
    }

    #[test]
    fn a_batch_with_any_success_reports_per_operation() {
        let hung = Outcome::Failed(StoreError::Unknown("timed out".into()));
        assert!(all_failed(&[hung.clone(), Outcome::Applied(1)]).is_none());
        assert!(all_failed(&[hung, Outcome::Overflow]).is_none());
        assert!(all_failed(&[]).is_none());
    }
}
