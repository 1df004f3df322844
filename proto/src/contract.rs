//! What the gateway and the counter agree on beyond the protobuf messages,
//! defined once: the gRPC service name, the trailer telling whether a
//! failed write may have been applied, and how gRPC status codes are
//! spelled in metric labels.

use tonic::{Code, Status};

/// The counter API's gRPC service name (tonic's generated constant).
pub const SERVICE_NAME: &str = crate::v1::counter_service_server::SERVICE_NAME;

/// Trailer (gRPC metadata) on a failed write saying whether it may have
/// been applied, so a client knows whether resending is safe.
pub const WRITE_OUTCOME_HEADER: &str = "tally-write-outcome";

/// The values of [`WRITE_OUTCOME_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Provably not applied: safe to resend.
    NotApplied,
    /// May have been applied (the store did not answer): resend only with
    /// an idempotency key.
    Unknown,
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::NotApplied => "not-applied",
            WriteOutcome::Unknown => "unknown",
        }
    }

    /// Marks `status` with this outcome.
    pub fn mark(self, status: &mut Status) {
        status.metadata_mut().insert(WRITE_OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static(self.as_str()));
    }

    /// The outcome `status` carries, if any.
    pub fn of(status: &Status) -> Option<WriteOutcome> {
        match status.metadata().get(WRITE_OUTCOME_HEADER).and_then(|v| v.to_str().ok()) {
            Some("not-applied") => Some(WriteOutcome::NotApplied),
            Some("unknown") => Some(WriteOutcome::Unknown),
            _ => None,
        }
    }
}

/// The `code` label of request metrics, spelled as grpc-go and
/// grpc-prometheus spell it (`OK`, `Canceled`), so dashboards made for
/// other gRPC services work on both of tally's.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_status_reads_back_its_outcome() {
        for outcome in [WriteOutcome::NotApplied, WriteOutcome::Unknown] {
            let mut status = Status::unavailable("store down");
            outcome.mark(&mut status);
            assert_eq!(WriteOutcome::of(&status), Some(outcome));
        }
        assert_eq!(WriteOutcome::of(&Status::unavailable("plain")), None);
    }

    #[test]
    fn codes_are_spelled_as_grpc_go_does() {
        assert_eq!((code_label(Code::Ok), code_label(Code::Cancelled)), ("OK", "Canceled"));
        assert!(crate::health::ASYNC_WRITES.starts_with(SERVICE_NAME));
        assert_eq!(crate::health::COUNTER_SERVICE, SERVICE_NAME);
    }
}
