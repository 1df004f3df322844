//! `StreamBatchIncrements`: batches over one long-lived stream, each applied
//! as `BatchIncrement` applies it and answered in request order.
//!
//! Why a stream: a client that sends batch after batch (the gateway's
//! coalescer) pays no HTTP/2 stream, headers or trailers per batch on
//! either side; measured, those were most of what a coalesced batch cost
//! beyond its store work.
//!
//! One batch is applied at a time: the next is read only after the answer
//! to the last is queued. So every batch read is answered before the stream
//! ends, and a client can tell that the batches left unanswered by an
//! OK end (shutdown) were never applied.

use std::future::Future;

use tally_proto::v1::{BatchIncrementRequest, BatchIncrementResponse};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

/// Answers queued for a client that reads slowly: with one batch applied
/// at a time, one is enough to keep the stream busy.
pub const QUEUED_ANSWERS: usize = 1;

/// Drives one stream: reads a batch, applies it with `apply`, queues its
/// answer, reads the next. Ends when the client closes its side or goes
/// away, on shutdown (after answering the batch being applied), or after
/// a batch that failed as a whole, whose status is the stream's last item.
pub async fn pump<A, Fut>(
    mut inbound: Streaming<BatchIncrementRequest>,
    tx: mpsc::Sender<Result<BatchIncrementResponse, Status>>,
    apply: A,
    mut shutdown: watch::Receiver<bool>,
) where
    A: Fn(BatchIncrementRequest) -> Fut,
    Fut: Future<Output = Result<BatchIncrementResponse, Status>>,
{
    loop {
        let request = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            message = inbound.message() => message,
        };
        let answer = match request {
            Ok(Some(request)) => apply(request).await,
            Ok(None) => return,
            // The transport failed: nothing more can be read or answered.
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let failed = answer.is_err();
        if tx.send(answer).await.is_err() || failed {
            return;
        }
    }
}
