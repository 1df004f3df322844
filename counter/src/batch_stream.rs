//! `StreamBatchIncrements` and `StreamBatchGet`: batches over one
//! long-lived stream, each handled as `BatchIncrement` (or `BatchGet`)
//! handles it and answered in request order.
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
use std::pin::Pin;

use futures_util::stream::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Answers queued for a client that reads slowly: with one batch applied
/// at a time, one is enough to keep the stream busy.
pub const QUEUED_ANSWERS: usize = 1;

/// The answers of one stream, as a handler returns them.
pub type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves one stream: [`pump`] on a task of its own, its answers returned.
/// The stream ends OK only when the pump ended normally, which promises
/// that every batch read was answered: a pump that failed (panicked) ends
/// the stream with an error instead.
pub fn serve<Req, Resp, A, Fut>(inbound: Streaming<Req>, apply: A, shutdown: watch::Receiver<bool>) -> Answers<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    A: Fn(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUED_ANSWERS);
    let pump = tokio::spawn(pump(inbound, tx, apply, shutdown));
    let failed = futures_util::stream::once(pump).filter_map(|joined| async move {
        joined.err().map(|_| {
            Err(Status::internal("the stream's task failed; a batch read and not answered may have been applied"))
        })
    });
    Box::pin(ReceiverStream::new(rx).chain(failed))
}

/// Drives one stream: reads a batch, applies it with `apply`, queues its
/// answer, reads the next. Ends when the client closes its side or goes
/// away, on shutdown (after answering the batch being applied), or after
/// a batch that failed as a whole, whose status is the stream's last item.
pub async fn pump<Req, Resp, A, Fut>(
    mut inbound: Streaming<Req>,
    tx: mpsc::Sender<Result<Resp, Status>>,
    apply: A,
    mut shutdown: watch::Receiver<bool>,
) where
    A: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
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
