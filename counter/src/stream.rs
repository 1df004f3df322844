//! `StreamIncrements`: one stream's requests read in runs, each run applied
//! as one committer submission, the answers sent back in request order.

use std::time::Instant;

use futures_util::FutureExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tally_proto::v1::{IncrementRequest, IncrementResponse};
use tally_proto::{CounterKey, validate};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use crate::commit::{GroupCommitter, Op};
use crate::metrics::RpcMetrics;
use crate::status;
use crate::status::outcome;
use crate::store::Change;

/// A streamed request's answers, in request order; `Err` ends the stream.
pub(crate) type Answers = Vec<Result<IncrementResponse, Status>>;

/// Drives one `StreamIncrements` call: up to `window` requests are applied
/// at once, and the answers go back in request order. Requests that have
/// already arrived when one is read are submitted together with it, as one
/// queue entry: under load a stream costs the committer one hand-off per
/// run of messages rather than per message, and when idle a lone message is
/// still applied at once. A failed request gets an answer with `error` set;
/// the stream ends when the client closes its side, when the client goes
/// away, or on shutdown (after answering what it read).
pub(crate) async fn pump_stream(
    mut inbound: Streaming<IncrementRequest>,
    tx: mpsc::Sender<Answers>,
    committer: GroupCommitter,
    window: usize,
    mut shutdown: watch::Receiver<bool>,
    metrics: RpcMetrics,
) {
    let window = window.max(1);
    let mut in_flight = FuturesOrdered::new();
    let mut applying = 0; // requests in `in_flight`
    let mut reading = true;
    let mut failure: Option<Status> = None;
    loop {
        tokio::select! {
            Some(answers) = in_flight.next(), if !in_flight.is_empty() => {
                let answers: Answers = answers;
                applying -= answers.len();
                if tx.send(answers).await.is_err() {
                    return; // client went away
                }
            }
            message = inbound.message(), if reading && applying < window => {
                let mut run = Vec::new();
                let mut next = Some(message);
                // `message()` keeps its state in `inbound`, so polling it once
                // and dropping it unfinished loses nothing.
                while let Some(message) = next.take() {
                    match message {
                        Ok(Some(request)) => run.push(request),
                        Ok(None) => reading = false,
                        Err(status) => {
                            // Answer what was read, then end with the transport error.
                            failure = Some(status);
                            reading = false;
                        }
                    }
                    if reading && applying + run.len() < window {
                        next = inbound.message().now_or_never();
                    }
                }
                if !run.is_empty() {
                    applying += run.len();
                    in_flight.push_back(apply_run(committer.clone(), run, metrics.clone()));
                }
            }
            _ = shutdown.changed(), if reading => reading = false,
            else => break,
        }
    }
    if let Some(status) = failure {
        let _ = tx.send(vec![Err(status)]).await;
    }
}

/// Applies a run of streamed requests as one submission and answers each,
/// in order; an invalid request is answered on its own and does not hold up
/// the others.
async fn apply_run(committer: GroupCommitter, requests: Vec<IncrementRequest>, metrics: RpcMetrics) -> Answers {
    let started = Instant::now();
    let mut answers: Vec<Option<IncrementResponse>> = Vec::with_capacity(requests.len());
    let mut ops = Vec::with_capacity(requests.len());
    for request in requests {
        match parse_streamed(request) {
            Ok(op) => {
                ops.push(op);
                answers.push(None);
            }
            Err(refused) => {
                metrics.observe(started, tonic::Code::InvalidArgument);
                answers.push(Some(refused));
            }
        }
    }
    let mut applied: Vec<IncrementResponse> = Vec::with_capacity(ops.len());
    if !ops.is_empty() {
        match committer.submit(ops).await {
            Ok((ops, results)) => {
                for (op, result) in ops.into_iter().zip(results) {
                    applied.push(match outcome(&op, result) {
                        Ok((current_value, replayed)) => {
                            metrics.observe(started, tonic::Code::Ok);
                            let (resource_id, counter_type) = op.key.into_parts();
                            IncrementResponse { resource_id, counter_type, current_value, replayed, error: None }
                        }
                        Err(status) => {
                            metrics.observe(started, status.code());
                            refused(op.key.resource_id(), op.key.counter_type(), &status)
                        }
                    });
                }
            }
            Err(err) => {
                // Nothing was queued: every valid request gets the same refusal
                // (without its names, which went with the refused submission;
                // answers are in request order).
                let status = status::not_submitted(err);
                let waiting = answers.iter().filter(|a| a.is_none()).count();
                metrics.observe_many(started, status.code(), waiting as u64);
                applied.extend(std::iter::repeat_n(refused("", "", &status), waiting));
            }
        }
    }
    let mut applied = applied.into_iter();
    answers
        .into_iter()
        .map(|answer| {
            let answer = answer.or_else(|| applied.next());
            Ok(answer.unwrap_or_else(|| refused("", "", &Status::unavailable("the committer returned no result"))))
        })
        .collect()
}

/// Parses one streamed request; an invalid one is answered at once.
fn parse_streamed(request: IncrementRequest) -> Result<Op, IncrementResponse> {
    let IncrementRequest { resource_id, counter_type, delta, idempotency_key } = request;
    // Checked by reference first, so a refusal can echo what was sent.
    if let Err(err) = CounterKey::check(&resource_id, &counter_type) {
        return Err(refused(&resource_id, &counter_type, &status::invalid(err)));
    }
    let echo = |err| refused(&resource_id, &counter_type, &status::invalid(err));
    let delta = validate::delta_or_default(delta).map_err(echo)?;
    let idempotency_key = validate::idempotency_key(&idempotency_key).map_err(echo)?.map(str::to_string);
    let key = CounterKey::new(resource_id, counter_type).map_err(|err| refused("", "", &status::invalid(err)))?;
    Ok(Op { key, change: Change::Add(delta), idempotency_key })
}

/// The answer to a streamed request that was not applied. Its fields are
/// echoed only when within the limits: an invalid 500 KB id is neither
/// repeated nor kept.
fn refused(resource_id: &str, counter_type: &str, status: &Status) -> IncrementResponse {
    IncrementResponse {
        resource_id: within(resource_id, tally_proto::limits::MAX_RESOURCE_ID_LEN),
        counter_type: within(counter_type, tally_proto::limits::MAX_COUNTER_TYPE_LEN),
        current_value: 0,
        replayed: false,
        error: Some(status::to_operation_error(status)),
    }
}

/// `field` when it is at most `max` bytes long, else empty.
fn within(field: &str, max: usize) -> String {
    if field.len() <= max { field.to_string() } else { String::new() }
}
