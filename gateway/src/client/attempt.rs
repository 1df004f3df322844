//! A call to the counters as a stack of tower services, outermost first:
//!
//! 1. tower's `Retry` with [`super::retry::RetryPolicy`]: sends the call
//!    again when the failure allows it (pure rules in [`super::retry`]) and
//!    the retry budget has room, telling the next attempt which endpoint to
//!    avoid;
//! 2. [`Pick`]: the endpoint, by the balancing policy, among those healthy
//!    for what the call needs and whose breaker admits it
//!    ([`Backends::pick_avoiding`]);
//! 3. [`Attempt`]: one gRPC call on that endpoint, counted in flight, in a
//!    span and in metrics, its outcome fed to the endpoint's breaker.
//!
//! Why the breaker and the balancer are not tower's own (`Balance`, a
//! breaker as each endpoint's `poll_ready`): tower's balancer is power of
//! two choices only, while the gateway offers round robin, weighted and
//! least-request and must avoid the endpoint a retry just failed on, which
//! readiness cannot express; so [`Pick`] asks each breaker when it
//! chooses (a half-open breaker hands out its probe slots there).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{Either, Ready, ready};
use tonic::Code;
use tower::Service;
use tracing::Instrument;

use super::CallError;
use super::backends::{Backend, Backends, Need};
use super::retry::{self, CallKind};
use crate::metrics::Metrics;
use crate::spans;

/// One call as it goes down the stack: what it is, and where its
/// attempts stand.
#[derive(Clone)]
pub struct Call<R> {
    /// The gRPC method, for spans and metrics.
    pub method: &'static str,
    pub kind: CallKind,
    pub need: Need,
    pub request: R,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The endpoint the previous attempt failed on.
    pub avoid: Option<Arc<Backend>>,
    /// An earlier attempt failed in a way that may have applied it (a keyed
    /// write is resent after such a failure): the call's end can then
    /// never be reported as not applied.
    pub earlier_unknown: bool,
}

impl<R> Call<R> {
    /// The first attempt of `request`.
    pub fn new(method: &'static str, kind: CallKind, need: Need, request: R) -> Call<R> {
        Call { method, kind, need, request, attempt: 1, avoid: None, earlier_unknown: false }
    }
}

/// Why an attempt failed.
pub enum AttemptError {
    /// No endpoint serves what the call needs (or every breaker is open):
    /// this attempt sent nothing. `not_applied` unless an earlier attempt
    /// may have applied the call.
    NoBackend { not_applied: bool },
    /// The endpoint answered with an error, or the call to it failed;
    /// `failure` is what that says ([`retry::classify`], made once).
    Status { status: tonic::Status, backend: Arc<Backend>, failure: retry::Failure },
}

impl AttemptError {
    /// The failed attempt on `backend`, classified.
    pub fn status(status: tonic::Status, backend: Arc<Backend>) -> AttemptError {
        let failure = retry::classify(&status);
        AttemptError::Status { status, backend, failure }
    }
}

impl std::fmt::Debug for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::NoBackend { .. } => f.write_str("NoBackend"),
            AttemptError::Status { status, backend, .. } => write!(f, "{status:?} from {}", backend.name),
        }
    }
}

impl From<AttemptError> for CallError {
    fn from(err: AttemptError) -> CallError {
        match err {
            AttemptError::NoBackend { not_applied } => CallError::NoBackend { not_applied },
            AttemptError::Status { status, failure, .. } => CallError::Status {
                code: retry::reported_code(&status),
                message: status.message().to_string(),
                not_applied: failure == retry::Failure::NotSent,
            },
        }
    }
}

/// Chooses the endpoint of each attempt, then hands both to `inner`.
#[derive(Clone)]
pub struct Pick<S> {
    backends: Arc<Backends>,
    inner: S,
}

impl<S> Pick<S> {
    pub fn new(backends: Arc<Backends>, inner: S) -> Pick<S> {
        Pick { backends, inner }
    }
}

impl<S, R> Service<Call<R>> for Pick<S>
where
    S: Service<(Arc<Backend>, Call<R>), Error = AttemptError>,
{
    type Response = S::Response;
    type Error = AttemptError;
    type Future = Either<Ready<Result<S::Response, AttemptError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        match self.backends.pick_avoiding(call.avoid.as_ref(), call.need) {
            Some(backend) => Either::Right(self.inner.call((backend, call))),
            None => Either::Left(ready(Err(AttemptError::NoBackend { not_applied: !call.earlier_unknown }))),
        }
    }
}

/// One gRPC call (`rpc`) on the endpoint [`Pick`] chose: a unary call on
/// its client, or a message on one of its streams.
#[derive(Clone)]
pub struct Attempt<F> {
    rpc: F,
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
}

impl<F> Attempt<F> {
    pub fn new(rpc: F, backends: Arc<Backends>, metrics: Arc<Metrics>) -> Attempt<F> {
        Attempt { rpc, backends, metrics }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, AttemptError>> + Send>>;

impl<F, Fut, R, T> Service<(Arc<Backend>, Call<R>)> for Attempt<F>
where
    F: Fn(&Arc<Backend>, tonic::Request<R>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    type Response = T;
    type Error = AttemptError;
    type Future = BoxFuture<T>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (backend, call): (Arc<Backend>, Call<R>)) -> BoxFuture<T> {
        let span = spans::rpc_client(call.method, backend.name.as_str(), call.attempt);
        let mut request = tonic::Request::new(call.request);
        spans::inject(&span, &mut request);
        let in_flight = backend.start_call();
        let started = Instant::now();
        let response = (self.rpc)(&backend, request);
        let (backends, metrics, method) = (self.backends.clone(), self.metrics.clone(), call.method);
        Box::pin(async move {
            let result = response.instrument(span.clone()).await;
            drop(in_flight);
            let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            spans::rpc_status(&span, code);
            metrics.observe_upstream(method, code, started.elapsed());
            match result {
                Ok(response) => {
                    backends.report(&backend, false, 0.0);
                    Ok(response.into_inner())
                }
                Err(status) => {
                    let err = AttemptError::status(status, backend);
                    if let AttemptError::Status { status, backend, failure } = &err {
                        // The whole error chain: what proves (or not) that nothing was applied.
                        tracing::debug!(endpoint = %backend.name, method, failure = failure.label(), ?status, "counter call failed");
                        // Refusals say nothing about the endpoint's health.
                        let jitter = f64::from(started.elapsed().subsec_nanos() % 1000) / 1000.0;
                        backends.report(backend, *failure != retry::Failure::Refused, jitter);
                    }
                    Err(err)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tally_proto::contract::WriteOutcome;
    use tower::retry::Retry;

    use super::*;
    use crate::client::ClientSettings;
    use crate::client::retry::RetryPolicy;
    use crate::client::tuning::Tuning;

    /// Stands in for [`Attempt`]: answers each attempt with the next of
    /// `answers` (then success) and records the endpoint it was sent to.
    #[derive(Clone)]
    struct Scripted {
        answers: Arc<Mutex<Vec<tonic::Status>>>,
        sent_to: Arc<Mutex<Vec<String>>>,
    }

    impl Service<(Arc<Backend>, Call<u32>)> for Scripted {
        type Response = u32;
        type Error = AttemptError;
        type Future = Ready<Result<u32, AttemptError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (backend, call): (Arc<Backend>, Call<u32>)) -> Self::Future {
            self.sent_to.lock().expect("lock").push(backend.uri.clone());
            let mut answers = self.answers.lock().expect("lock");
            if answers.is_empty() {
                return ready(Ok(call.request));
            }
            ready(Err(AttemptError::status(answers.remove(0), backend)))
        }
    }

    struct Fixture {
        backends: Arc<Backends>,
        metrics: Arc<Metrics>,
        scripted: Scripted,
    }

    fn fixture(settings: &ClientSettings, healthy: usize, answers: Vec<tonic::Status>) -> Fixture {
        let uris: Vec<String> = (1..=2).map(|port| format!("http://127.0.0.1:{port}")).collect();
        let backends = Arc::new(Backends::new(&uris, settings).expect("valid"));
        backends.all().iter().take(healthy).for_each(|b| b.mark_healthy());
        let scripted = Scripted { answers: Arc::new(Mutex::new(answers)), sent_to: Arc::default() };
        Fixture { backends, metrics: Arc::new(Metrics::new()), scripted }
    }

    async fn run(f: &Fixture, settings: &ClientSettings, kind: CallKind) -> Result<u32, AttemptError> {
        let policy = RetryPolicy::new(Arc::new(Tuning::new(settings)), f.metrics.clone());
        let mut stack = Retry::new(policy, Pick::new(f.backends.clone(), f.scripted.clone()));
        std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
        stack.call(Call::new("Get", kind, Need::Store, 7)).await
    }

    fn unknown() -> tonic::Status {
        tonic::Status::unavailable("reset after sending")
    }

    fn not_applied() -> tonic::Status {
        let mut status = tonic::Status::unavailable("store down");
        WriteOutcome::NotApplied.mark(&mut status);
        status
    }

    #[tokio::test]
    async fn a_failed_read_is_retried_on_the_other_endpoint() {
        let settings = crate::config::Config::defaults().client();
        let f = fixture(&settings, 2, vec![unknown()]);
        assert_eq!(run(&f, &settings, CallKind::Read).await.expect("the retry succeeds"), 7);
        let sent_to = f.scripted.sent_to.lock().expect("lock").clone();
        assert_eq!(sent_to.len(), 2);
        assert_ne!(sent_to[0], sent_to[1], "the retry avoids the endpoint that failed");
    }

    #[tokio::test]
    async fn a_write_of_unknown_outcome_is_not_resent_but_one_never_applied_is() {
        let settings = crate::config::Config::defaults().client();
        let plain = CallKind::Write { idempotent: false };
        let f = fixture(&settings, 2, vec![unknown()]);
        assert!(matches!(run(&f, &settings, plain).await, Err(AttemptError::Status { .. })));
        assert_eq!(f.scripted.sent_to.lock().expect("lock").len(), 1, "it may have been applied: once only");
        let f = fixture(&settings, 2, vec![not_applied()]);
        assert_eq!(run(&f, &settings, plain).await.expect("resent"), 7);
        let f = fixture(&settings, 2, vec![unknown()]);
        assert_eq!(run(&f, &settings, CallKind::Write { idempotent: true }).await.expect("keyed: resent"), 7);
    }

    #[tokio::test]
    async fn a_call_is_not_applied_only_when_no_attempt_may_have_been() {
        let settings = crate::config::Config::defaults().client();
        let not_applied_call = |result: Result<u32, AttemptError>| match result.map_err(CallError::from) {
            Err(CallError::Status { not_applied, .. }) => not_applied,
            other => panic!("expected a failed call, got {other:?}"),
        };
        let plain = CallKind::Write { idempotent: false };
        let f = fixture(&settings, 2, vec![not_applied(), not_applied(), not_applied()]);
        assert!(not_applied_call(run(&f, &settings, plain).await), "every attempt refused");
        let keyed = CallKind::Write { idempotent: true };
        let f = fixture(&settings, 2, vec![unknown(), not_applied(), not_applied()]);
        let last = not_applied_call(run(&f, &settings, keyed).await);
        assert_eq!(f.scripted.sent_to.lock().expect("lock").len(), 3, "keyed: resent after the unknown one");
        assert!(!last, "the first attempt may have been applied");
        let f = fixture(&settings, 2, vec![unknown(), not_applied(), not_applied()]);
        assert!(not_applied_call(run(&f, &settings, CallKind::Read).await), "a read leaves nothing behind");
    }

    #[tokio::test]
    async fn attempts_stop_at_the_limit_and_when_the_budget_is_spent() {
        let settings = ClientSettings { retry_attempts: 2, ..crate::config::Config::defaults().client() };
        let f = fixture(&settings, 2, vec![unknown(), unknown(), unknown()]);
        assert!(run(&f, &settings, CallKind::Read).await.is_err());
        assert_eq!(f.scripted.sent_to.lock().expect("lock").len(), 2, "two attempts in all");

        let broke = ClientSettings { retry_budget_percent: 0.0, retry_min_per_second: 0, ..settings };
        let f = fixture(&broke, 2, vec![unknown()]);
        assert!(run(&f, &broke, CallKind::Read).await.is_err());
        assert_eq!(f.scripted.sent_to.lock().expect("lock").len(), 1, "no budget, no retry");
        assert_eq!(f.metrics.retries_refused.get(), 1);
    }

    #[tokio::test]
    async fn with_no_usable_endpoint_the_call_fails_at_once() {
        let settings = crate::config::Config::defaults().client();
        let f = fixture(&settings, 0, vec![]);
        let result = run(&f, &settings, CallKind::Read).await;
        assert!(matches!(result, Err(AttemptError::NoBackend { not_applied: true })), "{result:?}");
        assert!(f.scripted.sent_to.lock().expect("lock").is_empty());
    }
}
