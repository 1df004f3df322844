//! Store failures, classified by what they mean for the caller's write.

use ::redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a store call failed. The distinction between [`StoreError::NotApplied`]
/// and [`StoreError::Unknown`] is what makes retries safe: only the first may
/// be retried without an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The command provably did not reach the store or was refused before
    /// running (connection refused, cluster down, redirection, loading).
    #[error("store unavailable, nothing applied: {0}")]
    NotApplied(String),
    /// The command may have been applied: the connection broke or timed out
    /// after it was sent.
    #[error("store did not answer, the write may or may not have been applied: {0}")]
    Unknown(String),
    /// Applied on the Redis master, but fewer replicas than waited for
    /// (`TALLY_STORE_WAIT_REPLICAS`) confirmed it: a failover may lose it.
    /// Reported as [`StoreError::Unknown`] is, but a sign of a lagging or
    /// missing replica, not of a broken connection.
    #[error("write not confirmed by the store's replicas: {0}")]
    Unconfirmed(String),
    /// The store answered with an error for this command (e.g. a hash field
    /// that is not an integer); nothing was applied.
    #[error("store rejected the command: {0}")]
    Rejected(String),
    /// The store URL or options are unusable.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// A configuration error; any URL user-info (a password) in `text` is masked.
    pub fn config(text: String) -> StoreError {
        StoreError::Config(tally_runtime::redact::userinfo(&text).into_owned())
    }

    /// Maps a redis-rs error onto the classification above (masking any
    /// URL user-info the library repeats in its message).
    pub fn from_redis(err: &RedisError) -> StoreError {
        let text = tally_runtime::redact::userinfo(&err.to_string()).into_owned();
        match err.kind() {
            ErrorKind::Server(kind) if refused_before_running(kind) => StoreError::NotApplied(text),
            // A transaction aborted because a command was refused as it was
            // queued: nothing ran. Not applied when the refusal was of the
            // kind above (a redirect during a resharding), so it may be
            // sent again; rejected otherwise.
            ErrorKind::Server(ServerErrorKind::ExecAbort)
                if err
                    .clone()
                    .into_server_errors()
                    .is_some_and(|errors| errors.iter().any(|(_, e)| refused_while_queued(e))) =>
            {
                StoreError::NotApplied(text)
            }
            ErrorKind::ClusterConnectionNotFound | ErrorKind::AuthenticationFailed => StoreError::NotApplied(text),
            // `min-replicas-to-write` on the server: refused before running
            // while too few replicas are connected.
            ErrorKind::Extension if err.code() == Some(NO_REPLICAS) => StoreError::NotApplied(text),
            ErrorKind::Server(_) | ErrorKind::Extension => StoreError::Rejected(text),
            ErrorKind::InvalidClientConfig => StoreError::Config(text),
            _ if err.is_connection_refusal() => StoreError::NotApplied(text),
            _ => StoreError::Unknown(text),
        }
    }

    /// Its class, also the `kind` label of `tally_counter_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotApplied(_) => "not_applied",
            StoreError::Unknown(_) => "unknown",
            StoreError::Unconfirmed(_) => "unconfirmed",
            StoreError::Rejected(_) => "rejected",
            StoreError::Config(_) => "config",
        }
    }

    /// True when the write provably did not happen, so retrying it is safe.
    pub fn is_not_applied(&self) -> bool {
        matches!(self, StoreError::NotApplied(_) | StoreError::Rejected(_) | StoreError::Config(_))
    }
}

/// The refusal of `min-replicas-to-write`: too few replicas are connected.
const NO_REPLICAS: &str = "NOREPLICAS";

/// A command of a transaction refused as it was queued, for a reason of
/// [`refused_before_running`] or for want of replicas.
fn refused_while_queued(err: &::redis::ServerError) -> bool {
    err.kind().is_some_and(refused_before_running) || err.code() == NO_REPLICAS
}

/// Server errors that refuse a command before it runs, for a reason that
/// passes (a redirect, a cluster or node not ready): nothing applied, and a
/// resend is safe.
fn refused_before_running(kind: ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly
    )
}

/// True when a Redis error reply means "increment would overflow": the only
/// per-command error tally expects, reported to the caller as OUT_OF_RANGE.
/// A reply missing or of an unexpected shape, as an error of the call
/// (classified unknown: the write may have been applied).
pub(super) fn unexpected(what: impl Into<String>) -> RedisError {
    RedisError::from(std::io::Error::other(what.into()))
}

pub fn is_overflow(err: &RedisError) -> bool {
    matches!(err.kind(), ErrorKind::Server(_)) && err.to_string().contains("would overflow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_refused_for_want_of_replicas_was_not_applied() {
        let refused =
            ::redis::make_extension_error(NO_REPLICAS.into(), Some("Not enough good replicas to write.".into()));
        assert!(matches!(StoreError::from_redis(&refused), StoreError::NotApplied(_)));
        let other = ::redis::make_extension_error("WRONGPASS".into(), None);
        assert!(matches!(StoreError::from_redis(&other), StoreError::Rejected(_)));
    }
}
