//! When a failed call to a counter may be sent again, as pure
//! decisions, plus the retry budget that bounds how much extra load retries
//! may add.
//!
//! The rule that keeps counts exact: a write is resent only when it provably
//! never reached the counter's store, or when it carries an idempotency key
//! (then the store applies it at most once). Reads are resent freely.
//!
//! [`RetryPolicy`] puts them to work as tower's retry `Policy` in the call
//! stack ([`super::attempt`]).

use std::sync::Arc;
use std::time::Duration;
use tally_proto::contract::WriteOutcome;

use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

use super::attempt::{AttemptError, Call};

/// What a failure says about whether the request took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Provably not applied: the transport shows it never reached the
    /// counter (no connection, never sent, turned away by HTTP/2:
    /// [`never_reached_the_counter`]), or the counter says so
    /// (`tally-write-outcome: not-applied`).
    NotSent,
    /// The counter refused it for what it is (bad input, overflow, full
    /// buffer): resending changes nothing.
    Refused,
    /// It may or may not have been applied (timeout, reset after sending).
    Unknown,
}

impl Failure {
    /// The `reason` label of `tally_gateway_retries_total`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::NotSent => "not_sent",
            Failure::Refused => "refused",
            Failure::Unknown => "unknown",
        }
    }
}

/// What kind of call is being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Read,
    /// A write; `idempotent` when every operation carries an idempotency key.
    Write {
        idempotent: bool,
    },
}

pub fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted | Code::FailedPrecondition => {
            return Failure::Refused;
        }
        _ => {}
    }
    if WriteOutcome::of(status) == Some(WriteOutcome::NotApplied) || never_reached_the_counter(status) {
        Failure::NotSent
    } else {
        Failure::Unknown
    }
}

/// True when the transport's error chain proves the call never reached the
/// counter's handler, so resending it cannot count it twice:
/// - no connection: the TCP connect or TLS handshake failed (tonic's
///   `ConnectError`, or a refused connection however it is wrapped);
/// - never handed to the connection: hyper cancels a request it still
///   held when the connection closed or was not ready;
/// - refused by HTTP/2 (RFC 9113 §8.7): the stream was above the last
///   stream id of the counter's GOAWAY (h2 reports those, and any stream
///   opened after it, as the remote GOAWAY), or was reset with
///   REFUSED_STREAM. A stream the counter did take that is cut later
///   fails with a broken pipe instead: unknown.
pub fn never_reached_the_counter(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && refused_by_http2(h2)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The gRPC code a failed call is reported with: one that never reached
/// the counter failed for want of a counter, UNAVAILABLE, whatever its
/// transport error maps to (tonic makes a GOAWAY's NO_ERROR INTERNAL).
pub fn reported_code(status: &Status) -> Code {
    if never_reached_the_counter(status) { Code::Unavailable } else { status.code() }
}

/// The counter's HTTP/2 layer turned the stream away unprocessed.
fn refused_by_http2(err: &h2::Error) -> bool {
    err.is_remote() && (err.is_go_away() || (err.is_reset() && err.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// Whether attempt number `attempt` (1-based) that failed with `failure` may
/// be followed by another, ignoring the budget.
pub fn may_retry(kind: CallKind, failure: Failure, attempt: u32, max_attempts: u32) -> bool {
    if attempt >= max_attempts {
        return false;
    }
    match (failure, kind) {
        (Failure::Refused, _) => false,
        (Failure::NotSent, _) => true,
        (Failure::Unknown, CallKind::Read) => true,
        (Failure::Unknown, CallKind::Write { idempotent }) => idempotent,
    }
}

/// What the last failed attempt of a call says of the whole call: an
/// attempt that applied nothing leaves the call of unknown outcome when an
/// earlier attempt (of a keyed write, resent) may have applied it.
pub fn call_failure(last: Failure, earlier_unknown: bool) -> Failure {
    if earlier_unknown && last == Failure::NotSent { Failure::Unknown } else { last }
}

/// Retries allowed on top of the traffic: each call deposits, each retry
/// withdraws (tower's TPS budget: `percent` of recent calls, plus a floor of
/// `min_per_second`).
pub struct RetryBudget {
    budget: TpsBudget,
}

impl RetryBudget {
    pub fn new(percent: f32, min_per_second: u32) -> RetryBudget {
        RetryBudget { budget: TpsBudget::new(Duration::from_secs(10), min_per_second, percent / 100.0) }
    }

    pub fn deposit(&self) {
        self.budget.deposit();
    }

    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// tower's retry `Policy` for calls to the counters: an attempt that failed
/// is followed by another when [`classify`] and [`may_retry`] allow it and
/// the budget has room (every call deposits once, on its first attempt);
/// the next attempt avoids the endpoint this one failed on. The last
/// attempt's failure is reported as the call's ([`call_failure`]).
#[derive(Clone)]
pub struct RetryPolicy {
    tuning: Arc<super::tuning::Tuning>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl RetryPolicy {
    pub fn new(tuning: Arc<super::tuning::Tuning>, metrics: Arc<crate::metrics::Metrics>) -> RetryPolicy {
        RetryPolicy { tuning, metrics }
    }
}

impl<R: Clone, T> tower::retry::Policy<Call<R>, T, AttemptError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, call: &mut Call<R>, result: &mut Result<T, AttemptError>) -> Option<Self::Future> {
        let Err(AttemptError::Status { backend, failure: last, .. }) = result else { return None };
        let failure = *last;
        let mut retried = may_retry(call.kind, failure, call.attempt, self.tuning.max_attempts());
        if retried && !self.tuning.budget().withdraw() {
            self.metrics.retries_refused.inc();
            retried = false;
        }
        if !retried {
            *last = call_failure(failure, call.earlier_unknown);
            return None;
        }
        self.metrics.retry(call.method, failure.label());
        call.attempt += 1;
        call.avoid = Some(backend.clone());
        // Only a write can have been applied; a read resent after a timeout
        // leaves nothing behind.
        call.earlier_unknown |= failure == Failure::Unknown && matches!(call.kind, CallKind::Write { .. });
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, call: &Call<R>) -> Option<Call<R>> {
        if call.attempt == 1 {
            self.tuning.budget().deposit();
        }
        Some(call.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_outcome(code: Code, outcome: WriteOutcome) -> Status {
        let mut status = Status::new(code, "x");
        outcome.mark(&mut status);
        status
    }

    #[test]
    fn classification() {
        assert_eq!(classify(&Status::invalid_argument("bad")), Failure::Refused);
        assert_eq!(classify(&Status::out_of_range("overflow")), Failure::Refused);
        assert_eq!(classify(&with_outcome(Code::Unavailable, WriteOutcome::NotApplied)), Failure::NotSent);
        assert_eq!(classify(&with_outcome(Code::Unavailable, WriteOutcome::Unknown)), Failure::Unknown);
        assert_eq!(classify(&Status::deadline_exceeded("timeout")), Failure::Unknown);
        let refused = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert_eq!(classify(&refused), Failure::NotSent);
    }

    /// What a counter's HTTP/2 layer does to a call, played by a bare h2
    /// server on loopback (one connection).
    #[derive(Clone, Copy)]
    enum Peer {
        /// GOAWAY with last stream id 0 at once: no stream is processed.
        GoesAway,
        /// RST_STREAM(REFUSED_STREAM) on the call.
        RefusesTheStream,
        /// Takes the call, then closes the connection without answering.
        CutsAfterTaking,
    }

    async fn h2_peer(peer: Peer) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(socket).await.expect("handshake");
            match peer {
                Peer::GoesAway => conn.abrupt_shutdown(h2::Reason::NO_ERROR),
                Peer::RefusesTheStream => {
                    if let Some(Ok((_, mut respond))) = conn.accept().await {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                }
                Peer::CutsAfterTaking => {
                    let _taken = conn.accept().await;
                    return; // drops the connection with the call taken
                }
            }
            while conn.accept().await.is_some() {}
        });
        addr
    }

    /// A real tonic call to `peer`, as the gateway makes them.
    async fn call_failure_against(peer: Peer) -> Failure {
        let addr = h2_peer(peer).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
        let mut client = tally_proto::v1::counter_service_client::CounterServiceClient::new(channel);
        let status = client.get(tally_proto::v1::GetRequest::default()).await.expect_err("the peer never answers");
        if classify(&status) == Failure::NotSent {
            assert_eq!(reported_code(&status), Code::Unavailable, "{status:?}");
        }
        classify(&status)
    }

    #[tokio::test]
    async fn calls_an_http2_peer_turned_away_are_not_sent_and_one_it_took_is_unknown() {
        assert_eq!(call_failure_against(Peer::GoesAway).await, Failure::NotSent, "above the GOAWAY's last stream id");
        assert_eq!(call_failure_against(Peer::RefusesTheStream).await, Failure::NotSent, "REFUSED_STREAM");
        assert_eq!(call_failure_against(Peer::CutsAfterTaking).await, Failure::Unknown, "taken, then cut");
    }

    #[test]
    fn only_the_peers_own_refusals_prove_nothing_was_processed() {
        assert!(!refused_by_http2(&h2::Error::from(h2::Reason::REFUSED_STREAM)), "not from the peer");
        let unreachable = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert_eq!(classify(&unreachable), Failure::Unknown);
    }

    #[test]
    fn writes_with_unknown_outcome_are_retried_only_with_a_key() {
        let plain = CallKind::Write { idempotent: false };
        let keyed = CallKind::Write { idempotent: true };
        assert!(!may_retry(plain, Failure::Unknown, 1, 3));
        assert!(may_retry(keyed, Failure::Unknown, 1, 3));
        assert!(may_retry(plain, Failure::NotSent, 1, 3));
        assert!(may_retry(CallKind::Read, Failure::Unknown, 2, 3));
        assert!(!may_retry(CallKind::Read, Failure::Unknown, 3, 3), "attempts are capped");
        assert!(!may_retry(keyed, Failure::Refused, 1, 3));
    }

    #[test]
    fn a_refusal_after_an_attempt_of_unknown_outcome_is_unknown() {
        assert_eq!(call_failure(Failure::NotSent, true), Failure::Unknown);
        assert_eq!(call_failure(Failure::NotSent, false), Failure::NotSent, "every attempt refused: not applied");
        assert_eq!(call_failure(Failure::Unknown, false), Failure::Unknown);
        assert_eq!(call_failure(Failure::Refused, true), Failure::Refused, "bad input stays bad input");
    }

    #[test]
    fn the_budget_runs_out() {
        // No deposits: only the floor, 1 a second over the 10 s window.
        let budget = RetryBudget::new(0.0, 1);
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn the_budget_grows_with_the_calls() {
        // No floor: 20 % of 100 calls.
        let budget = RetryBudget::new(20.0, 0);
        (0..100).for_each(|_| budget.deposit());
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 20);
    }
}
