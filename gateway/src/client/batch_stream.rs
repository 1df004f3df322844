//! The coalescer's batches over one long-lived `StreamBatchIncrements` call
//! per endpoint and worker, instead of one unary `BatchIncrement` each.
//!
//! Why: a unary call costs both ends an HTTP/2 stream, request headers,
//! response headers and trailers, and the call stack's setup per batch;
//! measured, that was most of what a coalesced batch cost beyond its
//! operations. On a stream a batch is one message each way. Each batch is
//! still one attempt of the call stack ([`super::attempt`]): picked, broken,
//! retried and counted like a unary call.
//!
//! What a batch's failure says (the counter answers every batch it read
//! before it ends a stream, in order): a stream that ends OK (the counter
//! shutting down) leaves its unanswered batches not applied, safe to send
//! again. Any other end fails the first unanswered batch with the stream's
//! status (a batch refused as a whole carries the counter's own verdict)
//! and the others as of unknown outcome. A batch that times out closes its
//! stream: its answer could no longer be told from the next batch's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tally_proto::contract::WriteOutcome;
use tally_proto::v1::counter_service_client::CounterServiceClient;
use tally_proto::v1::{BatchIncrementRequest, BatchIncrementResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tonic::Status;
use tonic::transport::Channel;

type Reply = oneshot::Sender<Result<BatchIncrementResponse, Status>>;

/// One endpoint's streams: one per worker, opened on first use and again
/// after one ends.
pub struct BatchStreams {
    per_worker: Vec<Mutex<Option<Arc<Open>>>>,
    timeout: Duration,
}

impl BatchStreams {
    /// Streams for `workers` workers (at least one); each batch waits at
    /// most `timeout` for its answer.
    pub fn new(workers: usize, timeout: Duration) -> BatchStreams {
        BatchStreams { per_worker: (0..workers.max(1)).map(|_| Mutex::new(None)).collect(), timeout }
    }

    /// Sends `request` on the calling worker's stream (opened on `channel`
    /// when it has none) and waits for its answer.
    pub async fn call(
        &self,
        channel: impl FnOnce() -> Channel,
        request: BatchIncrementRequest,
    ) -> Result<BatchIncrementResponse, Status> {
        let open = self.stream(channel);
        let answer = open.send(request)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Status::unavailable("the stream to the counter ended without an answer")),
            Err(_) => {
                open.close(End::Failed(Status::deadline_exceeded("an earlier batch on this stream timed out")));
                Err(Status::deadline_exceeded(format!("no answer from the counter within {:?}", self.timeout)))
            }
        }
    }

    /// The calling worker's open stream, or a new one.
    fn stream(&self, channel: impl FnOnce() -> Channel) -> Arc<Open> {
        let worker = tally_runtime::workers::current().unwrap_or(0) % self.per_worker.len();
        let mut slot = self.per_worker[worker].lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(open) if !open.closed.load(Ordering::Acquire) => open.clone(),
            _ => {
                let open = Open::start(CounterServiceClient::new(channel()));
                *slot = Some(open.clone());
                open
            }
        }
    }
}

impl Drop for BatchStreams {
    fn drop(&mut self) {
        for slot in &self.per_worker {
            if let Some(open) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                open.close(End::Failed(Status::unavailable("the endpoint was removed")));
            }
        }
    }
}

/// One open stream: batches sent and not yet answered, in order.
struct Open {
    outbound: mpsc::UnboundedSender<BatchIncrementRequest>,
    /// Bounded by the coalescer's call slots: one entry per batch in flight.
    waiting: Mutex<VecDeque<Reply>>,
    /// Set (under `waiting`) once nothing more is answered on it.
    closed: AtomicBool,
    driver: Mutex<Option<AbortHandle>>,
}

impl Open {
    fn start(mut client: CounterServiceClient<Channel>) -> Arc<Open> {
        let (outbound, mut rx) = mpsc::unbounded_channel();
        let open = Arc::new(Open {
            outbound,
            waiting: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            driver: Mutex::new(None),
        });
        let driven = open.clone();
        let task = tokio::spawn(async move {
            let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let end = match client.stream_batch_increments(requests).await {
                Ok(response) => driven.answer_all(response.into_inner()).await,
                Err(status) => End::Failed(status),
            };
            driven.close(end);
        });
        *open.driver.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        open
    }

    /// Queues `request`; its answer arrives on the receiver.
    fn send(
        &self,
        request: BatchIncrementRequest,
    ) -> Result<oneshot::Receiver<Result<BatchIncrementResponse, Status>>, Status> {
        let (reply, answer) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) || self.outbound.send(request).is_err() {
            return Err(not_applied("the stream to the counter had closed; the batch was not sent"));
        }
        waiting.push_back(reply);
        Ok(answer)
    }

    /// Hands each answer to the batch it answers, until the stream ends.
    async fn answer_all(&self, mut inbound: tonic::Streaming<BatchIncrementResponse>) -> End {
        loop {
            match inbound.message().await {
                Ok(Some(answer)) => {
                    let reply = self.waiting.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                    match reply {
                        Some(reply) => drop(reply.send(Ok(answer))),
                        None => return End::Failed(Status::internal("the counter answered a batch never sent")),
                    }
                }
                Ok(None) => return End::Clean,
                Err(status) => return End::Failed(status),
            }
        }
    }

    /// Ends the stream: nothing more is sent on it, and every batch still
    /// waiting is failed as [`unanswered`] says. Stops the driver (which
    /// resets the HTTP/2 stream) when it is still running.
    fn close(&self, first: End) {
        let waiting = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *waiting)
        };
        for (reply, status) in waiting.into_iter().zip(unanswered(first)) {
            let _ = reply.send(Err(status));
        }
        if let Some(driver) = self.driver.lock().unwrap_or_else(PoisonError::into_inner).take() {
            driver.abort();
        }
    }
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// OK: the counter answered every batch it read.
    Clean,
    Failed(Status),
}

/// The failures of the batches left unanswered when a stream ended, in
/// order. The first gets the stream's status (after a clean end: not
/// applied, it was never read). The others were not read either when the
/// counter ended the stream itself — cleanly, or with a status saying the
/// batch it failed was not applied, after which it reads nothing more —
/// and are of unknown outcome otherwise (the transport failed).
pub fn unanswered(end: End) -> impl Iterator<Item = Status> {
    let first = match end {
        End::Clean => not_applied("the counter closed the stream before reading the batch"),
        End::Failed(status) => status,
    };
    let unread = WriteOutcome::of(&first) == Some(WriteOutcome::NotApplied);
    let rest = move || {
        if unread {
            not_applied("the counter closed the stream before reading the batch")
        } else {
            Status::unavailable("the stream to the counter failed before this batch was answered")
        }
    };
    std::iter::once(first).chain(std::iter::repeat_with(rest))
}

fn not_applied(message: &str) -> Status {
    let mut status = Status::unavailable(message.to_string());
    WriteOutcome::NotApplied.mark(&mut status);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::retry::{Failure, classify};

    fn failures(end: End) -> Vec<Failure> {
        unanswered(end).take(3).map(|status| classify(&status)).collect()
    }

    #[test]
    fn after_a_clean_end_no_unanswered_batch_was_applied() {
        assert_eq!(failures(End::Clean), vec![Failure::NotSent; 3]);
    }

    #[test]
    fn a_batch_the_counter_failed_unapplied_leaves_the_rest_unread() {
        let mut status = Status::unavailable("store down");
        WriteOutcome::NotApplied.mark(&mut status);
        assert_eq!(failures(End::Failed(status)), vec![Failure::NotSent; 3]);
    }

    #[test]
    fn after_a_transport_failure_the_outcomes_are_unknown() {
        let reset = Status::unavailable("connection reset");
        assert_eq!(failures(End::Failed(reset)), vec![Failure::Unknown; 3]);
        let refused = Status::invalid_argument("operations[3]: bad counter_type");
        assert_eq!(failures(End::Failed(refused)), vec![Failure::Refused, Failure::Unknown, Failure::Unknown]);
    }
}
