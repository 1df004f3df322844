//! Unary gRPC requests sent as one HTTP/2 DATA frame that ends the stream.
//!
//! tonic's request body yields the encoded message first and only says it
//! has ended when polled again, so hyper sends the message, then an empty
//! DATA frame with END_STREAM. h2 does not copy a payload of 256 bytes or
//! more into its frame buffer but writes it straight from the message, and
//! must write it before it can buffer the next frame: the empty frame took
//! one more `writev` in the gateway and one more wake-up and read in the
//! counter, for every coalesced batch (seen with `strace` on the counter:
//! three reads per request, the last one nine bytes).
//!
//! [`WholeBody`] reads the body before handing the request on. A unary
//! message is encoded when the body is first polled, so it is always
//! there: it goes on as a body of known length, whose last (only) DATA
//! frame carries END_STREAM itself. A body that is not complete at once
//! (a stream) goes on unchanged, with whatever was read put back first.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::Full;
use tonic::Status;
use tonic::body::Body;
use tower::Service;

/// Wraps a gRPC transport (tonic's `Channel`).
#[derive(Debug, Clone)]
pub struct WholeBody<S>(pub S);

impl<S> Service<http::Request<Body>> for WholeBody<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.call(request.map(whole))
    }
}

/// `body` as one frame of known length when it is one data frame that is
/// there now; else the same frames as `body`. Polls it at most twice, so a
/// stream is never read ahead.
fn whole(mut body: Body) -> Body {
    let mut cx = Context::from_waker(Waker::noop());
    let first = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => return Body::new(Full::new(Bytes::new())),
        Poll::Pending => return body,
        Poll::Ready(Some(first)) => first,
    };
    let data = match first {
        Ok(frame) if frame.is_data() => frame.into_data().unwrap_or_default(),
        other => return Body::new(Prefixed::new([other], body)),
    };
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => Body::new(Full::new(data)),
        Poll::Ready(Some(second)) => Body::new(Prefixed::new([Ok(Frame::data(data)), second], body)),
        Poll::Pending => Body::new(Prefixed::new([Ok(Frame::data(data))], body)),
    }
}

/// The frames already read, then the rest of the body (if any).
struct Prefixed {
    taken: VecDeque<Result<Frame<Bytes>, Status>>,
    rest: Option<Body>,
}

impl Prefixed {
    /// `taken`, then what is left of `body`: nothing after an error (the
    /// body failed, and polling it again may repeat the error for ever).
    fn new<const N: usize>(taken: [Result<Frame<Bytes>, Status>; N], body: Body) -> Prefixed {
        let failed = taken.last().is_some_and(Result::is_err);
        Prefixed { taken: VecDeque::from(taken), rest: (!failed).then_some(body) }
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.taken.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    async fn frames(mut body: Body) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(match frame {
                Ok(frame) if frame.is_data() => {
                    format!("data {}", String::from_utf8_lossy(&frame.into_data().unwrap_or_default()))
                }
                Ok(_) => "trailers".to_string(),
                Err(status) => format!("error {}", status.message()),
            });
        }
        seen
    }

    fn body<const N: usize>(frames: [Result<Frame<Bytes>, Status>; N]) -> Body {
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn data(text: &'static str) -> Result<Frame<Bytes>, Status> {
        Ok(Frame::data(Bytes::from(text)))
    }

    #[tokio::test]
    async fn one_data_frame_there_now_becomes_a_body_of_known_length() {
        let sent = whole(body([data("abcd")]));
        assert_eq!(sent.size_hint().exact(), Some(4), "its length is known, so its DATA frame ends the stream");
        assert_eq!(frames(sent).await, ["data abcd"]);
        assert_eq!(whole(Body::empty()).size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn anything_else_keeps_its_frames_in_order() {
        let sent = whole(body([data("ab"), data("cd"), data("ef")]));
        assert_eq!(sent.size_hint().exact(), None, "more than one frame: handed on as it is");
        assert_eq!(frames(sent).await, ["data ab", "data cd", "data ef"]);
        let sent = whole(body([data("ab"), Ok(Frame::trailers(http::HeaderMap::new()))]));
        assert_eq!(frames(sent).await, ["data ab", "trailers"]);
        let sent = whole(body([Ok(Frame::trailers(http::HeaderMap::new())), data("late")]));
        assert_eq!(frames(sent).await, ["trailers", "data late"]);
    }

    #[tokio::test]
    async fn a_body_not_complete_at_once_is_read_no_further_than_it_goes() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, Status>>();
        tx.send(data("ab")).expect("send");
        let sent = whole(Body::new(StreamBody::new(receiver_stream(rx))));
        assert_eq!(sent.size_hint().exact(), None, "not complete: handed on as a stream");
        tx.send(data("cd")).expect("send");
        tx.send(Err(Status::internal("gone"))).expect("send");
        drop(tx);
        assert_eq!(frames(sent).await, ["data ab", "data cd", "error gone"]);
    }

    #[tokio::test]
    async fn a_body_is_not_polled_after_its_error() {
        // A body whose error repeats for ever (tonic's after cancellation).
        let failing = Body::new(StreamBody::new(futures_util::stream::repeat_with(|| {
            Err::<Frame<Bytes>, _>(Status::cancelled("cancelled"))
        })));
        assert_eq!(frames(whole(failing)).await, ["error cancelled"]);
        let sent = whole(body([data("ab"), Err(Status::internal("too large")), data("leftover")]));
        assert_eq!(frames(sent).await, ["data ab", "error too large"]);
    }

    fn receiver_stream<T>(mut rx: tokio::sync::mpsc::UnboundedReceiver<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
