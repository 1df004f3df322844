//! How internal outcomes become gRPC statuses: one place, so every RPC reports
//! the same failure the same way (BRIEF §4).

use tally_proto::InvalidInput;
use tally_proto::v1::OperationError;
use tonic::{Code, Status};

use crate::commit::OpResult;
use crate::store::StoreError;

/// Trailer telling a client whether a failed write may have been applied:
/// `not-applied` (safe to retry) or `unknown` (retry only with an idempotency key).
pub const WRITE_OUTCOME_HEADER: &str = "tally-write-outcome";

pub fn invalid(err: InvalidInput) -> Status {
    Status::invalid_argument(err.to_string())
}

pub fn store(err: &StoreError) -> Status {
    let mut status = match err {
        StoreError::Rejected(_) => Status::failed_precondition(err.to_string()),
        _ => Status::unavailable(err.to_string()),
    };
    let outcome = if err.is_not_applied() { "not-applied" } else { "unknown" };
    status.metadata_mut().insert(WRITE_OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static(outcome));
    status
}

pub fn overflow(what: &dyn std::fmt::Display, delta: i64) -> Status {
    Status::out_of_range(format!("adding {delta} to {what} would overflow a 64-bit counter; nothing was applied"))
}

/// The status for an operation that did not succeed.
pub fn op_status(result: &OpResult, what: &dyn std::fmt::Display, delta: i64) -> Option<Status> {
    match result {
        OpResult::Applied(_) | OpResult::Replayed(_) => None,
        OpResult::Overflow => Some(overflow(what, delta)),
        OpResult::Failed(err) => Some(store(err)),
    }
}

pub fn to_operation_error(status: &Status) -> OperationError {
    OperationError { code: status.code() as i32, message: status.message().to_string() }
}

/// The `code` label of request metrics, as grpc-go and grpc-prometheus spell it.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}
